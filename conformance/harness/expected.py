"""Expected failures: requirement IDs a port knowingly fails, each with a reason (docs/porting.md).

File format (plain text, one entry a line, ``#`` starts a comment)::

    # my-port: known deviations
    NM-2: we read N in N:M as the number pruned, as the original SparseGPT code does
    TIE-1: torch.topk breaks ties in an unspecified order

Sources, merged (the command line wins on a repeated ID):

- ``CAPABILITIES["expected_failures"]``: a path relative to the port's module, or a
  dict ``{ID: reason}``;
- ``--expected-failures FILE`` on the command line.

An expected failure excuses every failing test of that requirement (reported
"xfail" with the reason); a listed requirement whose tests all pass is reported
"XPASS" and fails the run, so stale entries are noticed. Hypothesis tests of a
listed requirement run derandomised (the same fixed cases every run), so an
excuse never flips at random between xfail and XPASS.
"""

from __future__ import annotations

import re
from pathlib import Path

ID = re.compile(r"^[A-Z][A-Z0-9]*-\d+$")


class ExpectedFailuresError(ValueError):
    """A malformed expected-failures file or dict (names the file and line)."""


def parse_text(text: str, source: str = "<text>") -> dict:
    """``ID: reason`` lines -> {ID: reason}; ValueError naming ``source`` and the line on anything else."""
    out: dict = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        rid, sep, reason = (part.strip() for part in line.partition(":"))
        if not sep or not ID.match(rid):
            raise ExpectedFailuresError(
                f"{source}, line {number}: expected 'ID: reason' (e.g. 'NM-2: why'), got {raw.strip()!r}"
            )
        if not reason:
            raise ExpectedFailuresError(f"{source}, line {number}: {rid} needs a reason after the colon")
        if rid in out:
            raise ExpectedFailuresError(f"{source}, line {number}: {rid} is listed twice")
        out[rid] = reason
    return out


def read_file(path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExpectedFailuresError(
            f"expected-failures file {str(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None
    return parse_text(text, str(path))


def from_capabilities(declared, base_dir: Path | None, port_spec: str) -> dict:
    """CAPABILITIES["expected_failures"]: None, a dict {ID: reason}, or a path relative to the port's module."""
    if declared is None:
        return {}
    where = f"--port {port_spec!r}: CAPABILITIES['expected_failures']"
    if isinstance(declared, dict):
        out = {}
        for rid, reason in declared.items():
            if not isinstance(rid, str) or not ID.match(rid):
                raise ExpectedFailuresError(f"{where}: key {rid!r} is not a requirement ID like 'NM-2'")
            if not isinstance(reason, str) or not reason.strip():
                raise ExpectedFailuresError(f"{where}: {rid} needs a non-empty reason string")
            out[rid] = reason.strip()
        return out
    if isinstance(declared, (str, Path)):
        path = Path(declared)
        if not path.is_absolute():
            if base_dir is None:
                raise ExpectedFailuresError(
                    f"{where}: relative path {str(declared)!r} but the port's module has no file"
                )
            path = base_dir / path
        return read_file(path)
    raise ExpectedFailuresError(f"{where}: must be a path or a dict {{ID: reason}}, got {type(declared).__name__}")


def check_known(expected: dict, known_ids, source: str) -> None:
    """Every listed ID must be a requirement of the spec (a typo would excuse nothing and go unseen)."""
    if not known_ids:
        return
    unknown = sorted(set(expected) - set(known_ids))
    if unknown:
        raise ExpectedFailuresError(f"{source}: unknown requirement ID(s) {unknown} (not in docs/spec.md)")
