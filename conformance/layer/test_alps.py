"""ALPS-*: ADMM with a rising penalty, then CG on the final support."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from rac.conformance.checking.helpers import needs, needs_options, req
from rac.conformance.checking.checks import assert_counts, groups
from rac.conformance.harness.measure import measure
from rac.conformance.checking.strategies import layers, nm_patterns, sparsities
from rac.conformance.checking.oracles import residual
from rac.conformance.checking.tolerances import objective_rtol, scaled_condition
from rac.reference import objective, prune_layer, refit
from rac.reference.sparsegpt import damped_hessian

EPS64 = float(torch.finfo(torch.float64).eps)


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
    post-processing solves. A rule about the CG options: not applicable to a port without them."""
    needs(port, "alps")
    needs_options(port, "alps", ("cg_iters", "cg_rtol"), "ALPS-3 runs CG to convergence (ALPS-2 checks the defaults)")
    weight, mask, _ = port.prune(layer.W, layer.H, method="alps", sparsity=sparsity, cg_iters=2000, cg_rtol=0.0)
    H_ridge = damped_hessian(layer.H, 0.01)
    best = refit(layer.W, mask, H_ridge)
    got, want = objective(layer.W, weight, H_ridge), objective(layer.W, best, H_ridge)
    # At the optimum the objective is flat: weights off by a relative delta raise it by at most
    # delta^2 lambda_max ||best||^2 (second order). delta is the port's attainable accuracy on this
    # H, as in replay_rtol: 10 eps sqrt(n) kappa_s. Both objectives are sums of n^2 products per row
    # computed here in float64: objective_rtol(eps64) of the sum of their absolute terms.
    n = layer.W.shape[1]
    delta = 10 * port.eps * n**0.5 * scaled_condition(layer.H, 0.01)
    lam_max = float(torch.linalg.eigvalsh(H_ridge).max())
    abs_terms = sum(float(((D.abs() @ H_ridge.abs()) * D.abs()).sum()) for D in (layer.W - weight, layer.W - best))
    bound = delta**2 * lam_max * float((best**2).sum()) + objective_rtol(EPS64, n) * abs_terms
    energy = float(((layer.W @ H_ridge) * layer.W).sum())
    measure("ALPS-3", max(0.0, got - want) / energy, bound / energy,
            "(objective - ridge optimum on the support) / tr(W H_ridge W^T)")
    assert got <= want + bound, f"ALPS-3: objective {got!r} above the refit on its support {want!r} ({layer})"
