"""ALPS-*: ADMM with a rising penalty, then CG on the final support."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from rac.conformance.checking.helpers import needs, req
from rac.conformance.checking.checks import assert_counts, groups
from rac.conformance.harness.measure import measure
from rac.conformance.checking.strategies import layers, nm_patterns, sparsities
from rac.conformance.checking.oracles import residual
from rac.conformance.checking.tolerances import objective_rtol
from rac.reference import objective, prune_layer, refit
from rac.reference.sparsegpt import damped_hessian


@req("ALPS-1")
@given(layer=layers(), sparsity=sparsities)
def test_alps_1_whole_layer_count(port, layer, sparsity):
    """ALPS-1: unstructured ALPS prunes exactly floor(s * out * in) over the whole layer."""
    needs(port, "alps")
    _, mask, _ = port.prune(layer.W, layer.H, method="alps", sparsity=sparsity)
    assert_counts("ALPS-1", mask, groups("alps", mask.shape, {}), sparsity)


@req("ALPS-2")
@given(layer=layers(in_multiple=4, max_in=24, max_out=8), sparsity=sparsities, nm=st.booleans(), pattern=nm_patterns)
def test_alps_2_reaches_the_reference_objective(port, layer, sparsity, nm, pattern):
    """ALPS-2: same objective as the reference ALPS on the same input.

    ADMM is deterministic; a port computing in float64 follows the same
    iterates until a support decision is a near-tie, where both choices are
    equally good to first order. We accept a relative difference of 1e-6 of
    the dense output energy ||W X||^2 (ADMM's own stopping rule tolerates a
    support change of 3e-4 k, far above rounding).
    """
    needs(port, "alps", "nm" if nm else "unstructured")
    if nm and layer.W.shape[1] % int(pattern.split(":")[1]):
        pattern = "2:4"
    kwargs = dict(pattern=pattern) if nm else dict(sparsity=sparsity)
    weight, _, _ = port.prune(layer.W, layer.H, method="alps", **kwargs)
    ref = prune_layer(layer.W, layer.H, method="alps", **kwargs)
    got, want = residual(layer.W, weight, layer.X), residual(layer.W, ref.weight, layer.X)
    scale = float(((layer.W @ layer.X) ** 2).sum())
    measure("ALPS-2", abs(got - want) / scale if scale else abs(got - want), 1e-6, "|objective - reference| / ||WX||^2")
    assert abs(got - want) <= 1e-6 * scale, f"ALPS-2: objective {got!r} vs reference {want!r} ({layer})"


@req("ALPS-3")
@given(layer=layers(kinds=("gaussian", "outliers", "dead_inputs", "bf16_weights"), max_in=24), sparsity=sparsities)
def test_alps_3_final_weights_solve_the_ridge_problem_on_the_support(port, layer, sparsity):
    """ALPS-3: with CG run to convergence, the kept weights are the least-squares fit on ALPS's final
    support under the ridged H + lambda I (lambda = dampening * mean diag H), as the ALPS paper's
    post-processing solves."""
    needs(port, "alps", options=("cg_iters", "cg_rtol"))
    weight, mask, _ = port.prune(layer.W, layer.H, method="alps", sparsity=sparsity, cg_iters=2000, cg_rtol=0.0)
    H_ridge = damped_hessian(layer.H, 0.01)
    best = refit(layer.W, mask, H_ridge)
    got, want = objective(layer.W, weight, H_ridge), objective(layer.W, best, H_ridge)
    # CG in exact arithmetic converges in <= in steps; on H_ridge (cond <= in/0.01 + 1)
    # 2000 steps reach rounding level: objective_rtol of the port's dtype, times cond.
    scale = float(((layer.W @ layer.X) ** 2).sum()) + float(torch.trace(layer.W @ layer.W.T))
    cond = layer.W.shape[1] / 0.01 + 1
    measure("ALPS-3", max(0.0, got - want) / scale, objective_rtol(port.eps, layer.W.shape[1]) * cond,
            "(objective - ridge optimum on the support) / scale")
    assert got <= want + objective_rtol(port.eps, layer.W.shape[1]) * cond * scale, (
        f"ALPS-3: objective {got!r} above the refit on its support {want!r} ({layer})"
    )
