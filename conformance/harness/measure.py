"""The current test's record: numeric measurements, the methods it checks, ports that hung.

``measure(req_id, value, tolerance, what)``: tests of numeric requirements call it with the
quantity they assert on (an error, a gap, a relative difference; >= 0, smaller is better) and
the bound the assertion uses; the report shows, per requirement, the worst one (largest
value / tolerance) next to its tolerance. ``measure`` only records; the test still asserts.

``note_method(method)``: ``helpers.needs`` says which pruner a test checks, so the report can
give each method its coverage (PORT-8). ``hung(method)``: after the port ran past the time
limit on a method, later tests of that method are not run again (PORT-9).

Outside a conformance run (no current test) recording does nothing.
"""

from __future__ import annotations

from rac.conformance.harness.report import Measurement

_current: dict = {"test": None, "sink": None, "methods": None}
#: method (or "*" when the test named none) -> the test in which the port hung
HUNG: dict = {}


def measure(req_id: str, value: float, tolerance: float, what: str = "") -> float:
    """Record ``value`` against ``tolerance`` for requirement ``req_id``; returns ``value``."""
    sink = _current["sink"]
    if sink is not None:
        sink.append(Measurement(req=req_id, value=float(value), tolerance=float(tolerance), what=what,
                                test=_current["test"] or ""))
    return value


def note_method(method: str) -> None:
    """The current test checks ``method``."""
    methods = _current["methods"]
    if methods is not None and method not in methods:
        methods.append(method)


def current_methods() -> list:
    return list(_current["methods"] or [])


def hung(method: str) -> str | None:
    """The test in which the port hung on ``method`` (or on a test naming no method), if it did."""
    return HUNG.get(method) or HUNG.get("*")


def start(nodeid: str, sink: list, methods: list) -> None:
    _current.update(test=nodeid, sink=sink, methods=methods)


def stop() -> None:
    _current.update(test=None, sink=None, methods=None)
