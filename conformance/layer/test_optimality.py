"""OPT-1: brute-force optimum on layers small enough to enumerate; each method's gap is reported."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rac.conformance.checking.helpers import needs, req
from rac.conformance.harness.measure import measure
from rac.conformance.checking.oracles import brute_force_optimum, residual, resolvable
from rac.conformance.checking.strategies import layers
from rac.reference.contract import registry

#: every registered pruner (plug-ins included): these rules hold for all of them
METHODS = registry.names()


@req("OPT-1")
@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=layers(max_out=3, min_in=4, max_in=8), sparsity=st.sampled_from([0.25, 0.5, 0.75]))
def test_opt_1_never_below_the_brute_force_optimum(port, method, layer, sparsity, record_property):
    """OPT-1: no result beats the best of all masks with the same number pruned (exact enumeration).

    The optimality gap (objective / optimum - 1) is recorded in the report.
    """
    needs(port, method)
    weight, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=sparsity)
    assume(resolvable(layer.X, mask))
    got = residual(layer.W, weight, layer.X)
    best = brute_force_optimum(layer.W, layer.X, pruned_total=int((~mask).sum()))
    scale = float(((layer.W @ layer.X) ** 2).sum())
    # both sides are least-squares residuals computed in float64: 1e-9 of the problem's scale (REF-2's bound)
    measure("OPT-1", max(0.0, best - got) / scale if scale else 0.0, 1e-9, "(optimum - objective) / ||WX||^2")
    assert got >= best - 1e-9 * scale, (
        f"OPT-1: {method} objective {got!r} below the optimum {best!r}: impossible ({layer})"
    )
    record_property(f"gap_{method}", (got - best) / scale if scale else 0.0)
