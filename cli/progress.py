"""Progress bars of the commands: tqdm on stderr, with the rate and the time left (spec CLI-8).

``bar(title, unit)`` returns the ``progress(done, total, detail="")`` callback that Phase I, Phase II and the
evaluation call; a new total starts a new bar, reaching it closes the bar. ``--quiet`` passes no callback.
"""

from __future__ import annotations

import sys


def bar(title: str, unit: str, file=None, mininterval: float = 0.5):
    """A progress callback drawing a tqdm bar: ``title``, done/total ``unit``, rate, elapsed and left; redrawn at
    most every ``mininterval`` seconds."""
    from tqdm import tqdm

    state: dict = {}

    def progress(done: int, total: int, detail: str = "") -> None:
        current = state.get("bar")
        if current is None or current.total != total:
            if current is not None:
                current.close()
            current = state["bar"] = tqdm(total=total, desc=title, unit=f" {unit}", file=file or sys.stderr,
                                          dynamic_ncols=True, mininterval=mininterval)
        if detail:
            current.set_postfix_str(detail, refresh=False)
        current.update(done - current.n)
        if done >= total:
            current.close()
            state.pop("bar")

    return progress


__all__ = ["bar"]
