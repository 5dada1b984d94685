"""Numeric measurements for the report: ``measure(req_id, value, tolerance, what)``.

Tests of numeric requirements call ``measure`` with the quantity they assert on
(an error, a gap, a relative difference; >= 0, smaller is better) and the bound
the assertion uses; the report shows, per requirement, the worst one (largest
value / tolerance) next to its tolerance. ``measure`` only records; the test
still asserts. Outside a conformance run (no current test) it does nothing.
"""

from __future__ import annotations

from rac.conformance.harness.report import Measurement

_current: dict = {"test": None, "sink": None}


def measure(req_id: str, value: float, tolerance: float, what: str = "") -> float:
    """Record ``value`` against ``tolerance`` for requirement ``req_id``; returns ``value``."""
    sink = _current["sink"]
    if sink is not None:
        sink.append(Measurement(req=req_id, value=float(value), tolerance=float(tolerance), what=what,
                                test=_current["test"] or ""))
    return value


def start(nodeid: str, sink: list) -> None:
    _current.update(test=nodeid, sink=sink)


def stop() -> None:
    _current.update(test=None, sink=None)
