"""SGPT-*: SparseGPT, checked by replaying the port's own mask choices through the reference OBS sweep.

Comparing masks directly would break at every near-tie; instead the suite
takes the port's mask, re-runs the reference updates with exactly those
choices, and checks (a) each choice pruned the lowest OBS scores at that point
of the sweep (up to rounding) and (b) the port's weights equal the replay's.

Every rule is checked at the port's defaults (PORT-7): a port that takes no ``blocksize`` or
``dampening`` is called without them and replayed at the spec's (128, 0.01); a port that
takes them is also checked at drawn values. Layers wider than one default block (160, 257 and
300 inputs) check that blocks hand their errors on at the default blocksize.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from rac.conformance.checking.checks import assert_counts, assert_nm, groups
from rac.conformance.checking.helpers import needs, needs_options, req
from rac.conformance.checking.oracles import ReplayViolation, sparsegpt_replay
from rac.conformance.checking.strategies import Layer, layers, make_layer, nm_patterns, sparsities
from rac.conformance.checking.tolerances import MAX_REPLAY_RTOL, replay_rtol, score_rtol
from rac.conformance.harness.measure import measure
from rac.reference import parse_pattern
from rac.reference.sparsegpt import CholeskyError, damped_hessian

blocksizes = st.sampled_from([1, 3, 4, 8, 16, 128])
dampenings = st.sampled_from([0.001, 0.01, 0.1, 1.0])


def _tolerance(port, layer, dampening, drawn: bool) -> float:
    """replay_rtol of the port's dtype on this layer; a drawn example whose bound would exceed
    MAX_REPLAY_RTOL (the port's precision cannot resolve 1 % of the weights there) is not used."""
    rtol = replay_rtol(port.eps, layer.H, dampening)
    if rtol > MAX_REPLAY_RTOL:
        if drawn:
            assume(False)
        pytest.skip(f"not checked: {layer} needs {rtol:.2g} > {MAX_REPLAY_RTOL:g} of |W_hat| in {port.dtype}")
    return rtol


def _check_against_replay(req_id, port, layer, weight, mask, pattern, sparsity, blocksize, dampening, drawn=True):
    rtol_w = _tolerance(port, layer, dampening, drawn)
    try:
        replay = sparsegpt_replay(
            layer.W, layer.H, mask, parse_pattern(pattern), sparsity or 0.0, blocksize, dampening,
            rtol=2 * rtol_w + score_rtol(port.eps),  # a score is w^2 / U_jj^2: twice w's error plus rounding
        )
    except ReplayViolation as exc:
        raise AssertionError(f"{req_id}: mask choice is not SparseGPT's: {exc} ({layer})") from None
    err = float((weight - replay).abs().max())
    scale = max(1.0, float(replay.abs().max()))
    measure(req_id, err / scale, rtol_w, "max |weight - OBS replay| / max(1, |W_hat|)")
    assert err <= rtol_w * scale, (
        f"{req_id}: weights differ from the OBS sweep with the same masks by {err:.3g} "
        f"(tolerance {rtol_w * scale:.3g}) for {layer}"
    )


@req("SGPT-1")
@req("SGPT-3")
@req("SGPT-4")
@example(layer=make_layer("mixed", 5, 20, 6, 1), sparsity=0.5, blocksize=8, dampening=0.01)
@example(layer=make_layer("bf16_weights", 6, 19, 40, 2), sparsity=0.29, blocksize=4, dampening=0.01)
@given(layer=layers(max_in=36), sparsity=sparsities, blocksize=blocksizes, dampening=dampenings)
def test_sgpt_unstructured_is_the_obs_sweep(port, layer, sparsity, blocksize, dampening):
    """SGPT-1/3/4: unstructured SparseGPT = per-block adaptive masks of the lowest w^2/U_jj^2 + OBS updates,
    at the drawn blocksize and dampening where the port takes them, else at its (the spec's) defaults."""
    needs(port, "sparsegpt")
    opts, eff = port.option_values("sparsegpt", blocksize=blocksize, dampening=dampening)
    weight, mask, _ = port.prune(layer.W, layer.H, method="sparsegpt", sparsity=sparsity, **opts)
    assert_counts("SGPT-4", mask, groups("sparsegpt", mask.shape, eff), sparsity)
    _check_against_replay("SGPT-1", port, layer, weight, mask, "unstructured", sparsity, eff["blocksize"],
                          eff["dampening"])


@req("SGPT-1")
@req("SGPT-4")
@req("SGPT-5")
@pytest.mark.parametrize("in_features", [160, 257, 300])
@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", None)])
@pytest.mark.parametrize("kind", ["gaussian", "dead_inputs"])
def test_sgpt_blocks_hand_their_errors_on_at_the_default_blocksize(port, in_features, pattern, sparsity, kind):
    """SGPT-1/4/5 on layers wider than one default block, called without options: the columns after
    the first 128 must receive the first block's errors (the lazy update of the original code) and
    get their mask from the updated weights, so the port must equal the replay at blocksize 128."""
    needs(port, "sparsegpt", pattern)
    if pattern != "unstructured" and in_features % int(pattern.split(":")[1]):
        pytest.skip(f"not applicable: {pattern} needs inputs divisible by its M, this layer has {in_features}")
    layer = make_layer(kind, 6, in_features, in_features + in_features // 2, seed=in_features)
    weight, mask, _ = port.prune(layer.W, layer.H, method="sparsegpt", sparsity=sparsity, pattern=pattern)
    _, eff = port.option_values("sparsegpt")
    if pattern == "unstructured":
        assert_counts("SGPT-4", mask, groups("sparsegpt", mask.shape, eff), sparsity)
    else:
        assert_nm("SGPT-5", mask, weight, 2, 4)
    _check_against_replay("SGPT-1", port, layer, weight, mask, pattern, sparsity, eff["blocksize"],
                          eff["dampening"], drawn=False)


@req("SGPT-2")
@given(layer=layers(kinds=("gaussian", "outliers", "rank_deficient")), dampening=dampenings)
def test_sgpt_2_dampening_is_relative(port, layer, dampening):
    """SGPT-2: lambda = dampening * mean(diag H); the replay uses that lambda, so an absolute or missing one fails
    (at the drawn dampening where the port takes one, else at its default 0.01; mean(diag H) is far from 1 here)."""
    needs(port, "sparsegpt")
    opts, eff = port.option_values("sparsegpt", dampening=dampening)
    weight, mask, _ = port.prune(layer.W, layer.H, method="sparsegpt", sparsity=0.5, **opts)
    _check_against_replay("SGPT-2", port, layer, weight, mask, "unstructured", 0.5, eff["blocksize"], eff["dampening"])


@req("SGPT-5")
@given(layer=layers(in_multiple=8, max_in=40), pattern=nm_patterns, dampening=dampenings)
def test_sgpt_5_nm_selected_each_group_from_updated_weights(port, layer, pattern, dampening):
    """SGPT-5: N:M chosen at each M-group from the weights updated so far, then OBS updates."""
    needs(port, "sparsegpt", "nm")
    opts, eff = port.option_values("sparsegpt", dampening=dampening)
    weight, mask, _ = port.prune(layer.W, layer.H, method="sparsegpt", pattern=pattern, **opts)
    n, m = map(int, pattern.split(":"))
    assert_nm("SGPT-5", mask, weight, n, m)
    _check_against_replay("SGPT-5", port, layer, weight, mask, pattern, None, eff["blocksize"], eff["dampening"])


@req("SGPT-7")
# a blocksize that is not a multiple of M: N:M groups must stay aligned at 0, M, 2M (llm-compressor, LC-9)
@example(layer=make_layer("gaussian", 4, 24, 30, 3), blocksize=6)
@given(layer=layers(in_multiple=4, max_in=32, kinds=("gaussian", "outliers")),
       blocksize=st.sampled_from([4, 6, 8, 10, 16]))
def test_sgpt_7_blocksize_only_batches_updates_for_nm(port, layer, blocksize):
    """SGPT-7: lazy batching is only a reordering: for N:M the result does not depend on blocksize."""
    needs(port, "sparsegpt", "nm")
    needs_options(port, "sparsegpt", ("blocksize",), "SGPT-7 says how the result may depend on the blocksize")
    a_w, a_m, _ = port.prune(layer.W, layer.H, method="sparsegpt", pattern="2:4", blocksize=blocksize)
    b_w, b_m, _ = port.prune(layer.W, layer.H, method="sparsegpt", pattern="2:4", blocksize=128)
    assert torch.equal(a_m, b_m), "SGPT-7: the N:M mask depends on blocksize"
    rtol = _tolerance(port, layer, 0.01, drawn=True)
    diff = float((a_w - b_w).abs().max()) / max(1.0, float(b_w.abs().max()))
    measure("SGPT-7", diff, rtol, "max |weights(blocksize) - weights(128)| / max(1, |W_hat|)")
    assert diff <= rtol, "SGPT-7: weights depend on blocksize"


def _indefinite_hessian(in_features: int, excess: float) -> torch.Tensor:
    """A symmetric H with a non-negative diagonal (it passes GEN-5) that is not PSD: a rank-deficient
    X X^T minus ``excess`` * mean(diag) * I, clipped so the diagonal stays >= 0. With relative dampening
    d, H_d is positive definite only for d > excess (up to the clipping, which only adds to the diagonal)."""
    layer = make_layer("rank_deficient", 1, in_features, in_features // 2, seed=81)
    H = layer.H - excess * float(torch.diagonal(layer.H).mean()) * torch.eye(in_features, dtype=torch.float64)
    H.diagonal().clamp_(min=0.0)
    return H


@req("SGPT-8")
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sgpt_8_failed_cholesky_never_degrades_silently(port, pattern):
    """SGPT-8: where H + lambda I cannot be factorised the port raises, or reports the larger dampening it
    used and its result is SparseGPT with that dampening; it never falls back to anything else.

    At the port's defaults (dampening 0.01): an H that is not PSD but passes GEN-5 (non-negative
    diagonal), indefinite until the dampening exceeds 0.03. Where the port takes ``dampening``: also
    dampening 0 on a singular H, whose Cholesky fails too."""
    needs(port, "sparsegpt", pattern)
    W = make_layer("gaussian", 6, 16, 20, seed=8).W
    cases = [(W, _indefinite_hessian(16, 0.03), "_indefinite_hessian(16, 0.03)", {})]
    if port.accepts("sparsegpt", "dampening"):
        cases.append((W, make_layer("rank_deficient", 6, 16, 4, seed=8).H, "make_layer('rank_deficient', 6, 16, 4, 8)",
                      {"dampening": 0.0}))
    sparsity = 0.5 if pattern == "unstructured" else None
    for W, H, made_by, opts in cases:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                weight, mask, info = port.prune(W, H, method="sparsegpt", sparsity=sparsity, pattern=pattern, **opts)
        except (ValueError, torch.linalg.LinAlgError):
            continue  # an error is a conforming answer
        used = info.get("dampening")
        assert used is not None and used > 0, (
            f"SGPT-8: a result on an H that cannot be factorised at dampening {opts.get('dampening', 0.01)} must "
            f"report the dampening it used (info={info})"
        )
        smallest = float(torch.linalg.eigvalsh(damped_hessian(H, used)).min())
        assert smallest > 0, (f"SGPT-8: the port reports dampening {used}, at which H + lambda I is not positive "
                              f"definite (smallest eigenvalue {smallest:.3g}): it used something else (a fall-back)")
        layer = Layer(W=W, X=torch.zeros(16, 0, dtype=torch.float64), H=H, kind="not PSD", repro=made_by)
        _check_against_replay("SGPT-8", port, layer, weight, mask, pattern, sparsity, 128, used, drawn=False)


@req("SGPT-8")
def test_sgpt_8_reference_recovery_and_raise_modes():
    """SGPT-8 (reference): recovery doubles dampening from 0.01, warns, reports; 'raise' mode raises CholeskyError."""
    from rac.reference import prune_layer

    layer = make_layer("rank_deficient", 6, 16, 4, seed=8)
    with pytest.warns(RuntimeWarning, match="SGPT-8"):
        result = prune_layer(layer.W, layer.H, method="sparsegpt", sparsity=0.5, dampening=0.0)
    assert result.info["dampening_raised"] and result.info["dampening"] == 0.01
    again = prune_layer(layer.W, layer.H, method="sparsegpt", sparsity=0.5, dampening=0.01)
    assert torch.equal(result.weight, again.weight) and torch.equal(result.mask, again.mask)
    with pytest.raises(CholeskyError, match="dampening"):
        prune_layer(layer.W, layer.H, method="sparsegpt", sparsity=0.5, dampening=0.0, on_cholesky_failure="raise")
    # eigenvalues 4 and -2: indefinite even with the largest recovery dampening (1 * mean diag = 1)
    indefinite = torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=torch.float64)
    with pytest.raises(CholeskyError):
        prune_layer(torch.ones(2, 2, dtype=torch.float64), indefinite, method="sparsegpt", sparsity=0.5)
    # the default-options case of the port test: recovered at dampening 0.04 (the first above 0.03)
    with pytest.warns(RuntimeWarning, match="SGPT-8"):
        result = prune_layer(layer.W, _indefinite_hessian(16, 0.03), method="sparsegpt", sparsity=0.5)
    assert result.info["dampening"] == 0.04


@req("SGPT-6")
@pytest.mark.parametrize("pattern, blocksize, cut, in_features", [
    ("unstructured", 8, 16, 24), ("unstructured", 5, 10, 24), ("2:4", 8, 12, 24), ("3:4", 128, 8, 24),
    ("unstructured", 128, 128, 160),  # the default blocksize: checked for every port
])
@pytest.mark.parametrize("kind", ["gaussian", "outliers"])
def test_sgpt_6_fixed_columns_do_not_depend_on_later_columns(port, pattern, blocksize, cut, in_features, kind):
    """SGPT-6: errors flow only to columns not yet fixed, so columns before a group boundary are final
    once their group is done: they cannot depend on W's later columns.

    The boundary ``cut`` ends a comparison group (a multiple of the blocksize for unstructured masks,
    of M for N:M). W's columns from ``cut`` on are redrawn; columns [0, cut) of the result must keep
    their mask and, up to rounding, their weights. A port that revisits fixed columns (a final refit
    of every kept weight, a backward update, a mask chosen from the whole row) fails.
    """
    is_nm = pattern != "unstructured"
    needs(port, "sparsegpt", "nm" if is_nm else "unstructured")
    opts, eff = port.option_values("sparsegpt", blocksize=blocksize)
    if not is_nm and cut % eff["blocksize"]:
        pytest.skip(f"not applicable: port {port.name} takes no blocksize (fixed at {eff['blocksize']}); "
                    f"the {eff['blocksize']}-column case checks SGPT-6 for it")
    layer = make_layer(kind, 6, in_features, max(40, in_features + in_features // 2), seed=11)
    other = layer.W.clone()
    other[:, cut:] = torch.randn(other[:, cut:].shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    sparsity = None if is_nm else 0.5
    a_w, a_m, _ = port.prune(layer.W, layer.H, method="sparsegpt", sparsity=sparsity, pattern=pattern, **opts)
    b_w, b_m, _ = port.prune(other, layer.H, method="sparsegpt", sparsity=sparsity, pattern=pattern, **opts)
    assert not torch.equal(a_m[:, cut:], b_m[:, cut:]) or not torch.equal(a_w[:, cut:], b_w[:, cut:])  # redraw mattered
    assert torch.equal(a_m[:, :cut], b_m[:, :cut]), f"SGPT-6: the mask of columns < {cut} depends on W's later columns"
    # The first `cut` columns see the same arithmetic in both calls; a port that batches the later
    # columns' updates in one GEMM may round them differently, which replay_rtol bounds.
    rtol = _tolerance(port, layer, eff["dampening"], drawn=False)
    diff = float((a_w[:, :cut] - b_w[:, :cut]).abs().max()) / max(1.0, float(a_w.abs().max()))
    measure("SGPT-6", diff, rtol, "max |weights[:, :cut] with W[:, cut:] redrawn - weights[:, :cut]| / max(1, |W_hat|)")
    assert diff <= rtol, f"SGPT-6: weights of columns < {cut} changed by {diff:.3g} when only W's later columns changed"
