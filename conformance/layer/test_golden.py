"""GOLD-4: the port under test reproduces the golden vectors (fixtures/golden/, the reference's outputs).

The same comparison a port in another language runs with conformance/checking/golden_check.py
(numpy only), here through the port protocol: every golden case the port supports.
Fixed inputs, so a port may list GOLD-4 as an expected failure without flakiness.
"""

from __future__ import annotations

from rac.conformance.checking import golden, golden_check
from rac.conformance.checking.helpers import req


@req("GOLD-4")
def test_gold_4_port_reproduces_the_golden_vectors(port):
    """GOLD-4: on every golden case the port supports, masks equal the reference's (no case is a near
    tie), weights and objectives are within the tolerances of the port's dtype, counts are exact."""
    results = golden_check.check(golden.run_port(port, golden.GOLDEN_DIR), golden.GOLDEN_DIR, port.dtype)
    checked = [name for name, r in results.items() if r["status"] != "missing"]
    failures = [f"{name}: {p}" for name, r in results.items() for p in r["problems"]]
    if not checked:
        import pytest

        pytest.skip(f"port {port.name} supports none of the golden cases")
    assert not failures, f"GOLD-4: {len(failures)} problem(s) on {len(checked)} cases; first: " + "; ".join(
        failures[:3]
    )
