"""Small helpers shared by the test modules.

Skips say why (PORT-8): ``not_applicable(reason)`` for what the port declares it does not do (a
method, a pattern, an option, a level); any other skip means "not checked" and counts against
the coverage of the report.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from rac.conformance.harness import measure as current

req = pytest.mark.req

#: the prefix of a skip reason that means "not applicable to this port" (report.py reads it)
NOT_APPLICABLE = "not applicable: "


def not_applicable(reason: str):
    """Skip the test as not applicable to this port, by its own declaration."""
    pytest.skip(NOT_APPLICABLE + reason)


def needs(port, method: str, pattern: str = "unstructured") -> None:
    """The test checks ``method`` (recorded for the report's per-method coverage); not applicable when
    the port does not declare the method or the pattern kind. Options never decide this (PORT-7):
    see ``Port.option_values``. A method on which the port hung earlier is not run again (PORT-9)."""
    current.note_method(method)
    if not port.supports(method, pattern):
        kind = "unstructured" if pattern == "unstructured" else "N:M"
        not_applicable(f"port {port.name} declares no {method} with {kind} patterns")
    where = current.hung(method)
    if where:
        pytest.skip(f"not checked: the port hung on {method} in {where} (stopped there)")


def needs_options(port, method: str, options, why: str) -> None:
    """For a rule that only exists when an option can be varied (it says how the result may or may
    not depend on it): not applicable when the port takes none of ``options``, its values being fixed
    at the spec's defaults (PORT-7)."""
    missing = [o for o in options if not port.accepts(method, o)]
    if missing:
        not_applicable(f"port {port.name} takes no {', '.join(missing)} for {method} (fixed at the spec's "
                       f"defaults): {why}")


def needs_level(port, level: str) -> None:
    """Not applicable when the port does not implement this level of the protocol."""
    if not port.supports_level(level):
        not_applicable(f"port {port.name} does not implement the {level!r} level")



def unchanged(port, got, W) -> bool:
    """``got`` is W left as it was: bitwise W, or W rounded once to the dtype the port declares (a
    float32 port that leaves a weight alone returns float32(W); rac.fast returns W's own dtype)."""
    import torch

    return torch.equal(got, W) or torch.equal(got, W.to(getattr(torch, port.dtype)).to(W.dtype))


@contextmanager
def one_thread():
    """Run the block with one torch CPU thread. Decoding a tiny model is latency-bound: one thread
    is as fast as two on an idle machine and several times faster on a busy one (measured: 1.3 s
    against 11.8 s for six toy problems)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_png(path):
    """The image at ``path`` (an array, via matplotlib), after checking the file is a PNG; skips
    when matplotlib is not installed (the 'test' extra installs it)."""
    pytest.importorskip("matplotlib", reason="reading a PNG needs matplotlib (the 'test' extra installs it)")
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return imread(path)
