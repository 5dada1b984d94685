"""SGPT-*: SparseGPT, checked by replaying the port's own mask choices through the reference OBS sweep.

Comparing masks directly would break at every near-tie; instead the suite
takes the port's mask, re-runs the reference updates with exactly those
choices, and checks (a) each choice pruned the lowest OBS scores at that point
of the sweep (up to rounding) and (b) the port's weights equal the replay's.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from rac.conformance.checking.helpers import needs, req
from rac.conformance.checking.checks import assert_counts, assert_nm, groups
from rac.conformance.harness.measure import measure
from rac.conformance.checking.oracles import ReplayViolation, sparsegpt_replay
from rac.conformance.checking.strategies import layers, make_layer, nm_patterns, sparsities
from rac.conformance.checking.tolerances import score_rtol, sweep_rtol
from rac.reference import parse_pattern
from rac.reference.sparsegpt import CholeskyError

blocksizes = st.sampled_from([1, 3, 4, 8, 16, 128])
dampenings = st.sampled_from([0.001, 0.01, 0.1, 1.0])


def _check_against_replay(req_id, port, layer, weight, mask, pattern, sparsity, blocksize, dampening):
    in_features = layer.W.shape[1]
    rtol_w = sweep_rtol(port.eps, in_features, dampening)
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
    """SGPT-1/3/4: unstructured SparseGPT = per-block adaptive masks of the lowest w^2/U_jj^2 + OBS updates."""
    needs(port, "sparsegpt", options=("blocksize", "dampening"))
    weight, mask, _ = port.prune(
        layer.W, layer.H, method="sparsegpt", sparsity=sparsity, blocksize=blocksize, dampening=dampening
    )
    assert_counts("SGPT-4", mask, groups("sparsegpt", mask.shape, {"blocksize": blocksize}), sparsity)
    _check_against_replay("SGPT-1", port, layer, weight, mask, "unstructured", sparsity, blocksize, dampening)


@req("SGPT-2")
@given(layer=layers(kinds=("gaussian", "outliers", "rank_deficient")), dampening=dampenings)
def test_sgpt_2_dampening_is_relative(port, layer, dampening):
    """SGPT-2: lambda = dampening * mean(diag H); the replay uses that lambda, so an absolute or missing one fails."""
    needs(port, "sparsegpt", options=("dampening",))
    weight, mask, _ = port.prune(layer.W, layer.H, method="sparsegpt", sparsity=0.5, dampening=dampening)
    _check_against_replay("SGPT-2", port, layer, weight, mask, "unstructured", 0.5, 128, dampening)


@req("SGPT-5")
@given(layer=layers(in_multiple=8, max_in=40), pattern=nm_patterns, dampening=dampenings)
def test_sgpt_5_nm_selected_each_group_from_updated_weights(port, layer, pattern, dampening):
    """SGPT-5: N:M chosen at each M-group from the weights updated so far, then OBS updates."""
    needs(port, "sparsegpt", "nm", options=("dampening",))
    weight, mask, _ = port.prune(layer.W, layer.H, method="sparsegpt", pattern=pattern, dampening=dampening)
    n, m = map(int, pattern.split(":"))
    assert_nm("SGPT-5", mask, weight, n, m)
    _check_against_replay("SGPT-5", port, layer, weight, mask, pattern, None, 128, dampening)


@req("SGPT-7")
# a blocksize that is not a multiple of M: N:M groups must stay aligned at 0, M, 2M (llm-compressor, LC-9)
@example(layer=make_layer("gaussian", 4, 24, 30, 3), blocksize=6)
@given(
    layer=layers(in_multiple=4, max_in=32, kinds=("gaussian", "outliers")), blocksize=st.sampled_from([4, 6, 8, 10, 16])
)
def test_sgpt_7_blocksize_only_batches_updates_for_nm(port, layer, blocksize):
    """SGPT-7: lazy batching is only a reordering: for N:M the result does not depend on blocksize."""
    needs(port, "sparsegpt", "nm", options=("blocksize",))
    a_w, a_m, _ = port.prune(layer.W, layer.H, method="sparsegpt", pattern="2:4", blocksize=blocksize)
    b_w, b_m, _ = port.prune(layer.W, layer.H, method="sparsegpt", pattern="2:4", blocksize=128)
    assert torch.equal(a_m, b_m), "SGPT-7: the N:M mask depends on blocksize"
    rtol = sweep_rtol(port.eps, layer.W.shape[1], 0.01)
    diff = float((a_w - b_w).abs().max()) / max(1.0, float(b_w.abs().max()))
    measure("SGPT-7", diff, rtol, "max |weights(blocksize) - weights(128)| / max(1, |W_hat|)")
    assert diff <= rtol, "SGPT-7: weights depend on blocksize"


@req("SGPT-8")
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sgpt_8_failed_cholesky_never_degrades_silently(port, pattern):
    """SGPT-8: with dampening 0 on a singular H the port raises, or reports the larger dampening it used
    and its result is SparseGPT with that dampening; it never falls back to anything else."""
    needs(port, "sparsegpt", "nm" if pattern != "unstructured" else pattern, options=("dampening",))
    layer = make_layer("rank_deficient", 6, 16, 4, seed=8)  # H has rank 4 of 16: Cholesky of H fails
    sparsity = 0.5 if pattern == "unstructured" else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            weight, mask, info = port.prune(
                layer.W, layer.H, method="sparsegpt", sparsity=sparsity, pattern=pattern, dampening=0.0
            )
    except (ValueError, torch.linalg.LinAlgError):
        return  # an error is a conforming answer
    used = info.get("dampening")
    assert used is not None and used > 0, (
        f"SGPT-8: a result on a singular H with dampening 0 must report the dampening it used (info={info})"
    )
    _check_against_replay("SGPT-8", port, layer, weight, mask, pattern, sparsity, 128, used)


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


@req("SGPT-6")
@pytest.mark.parametrize(
    "pattern, blocksize, cut", [("unstructured", 8, 16), ("unstructured", 5, 10), ("2:4", 8, 12), ("3:4", 128, 8)]
)
@pytest.mark.parametrize("kind", ["gaussian", "outliers"])
def test_sgpt_6_fixed_columns_do_not_depend_on_later_columns(port, pattern, blocksize, cut, kind):
    """SGPT-6: errors flow only to columns not yet fixed, so columns before a group boundary are final
    once their group is done: they cannot depend on W's later columns.

    The boundary ``cut`` ends a comparison group (a multiple of the blocksize for unstructured masks,
    of M for N:M). W's columns from ``cut`` on are redrawn; columns [0, cut) of the result must keep
    their mask and, up to rounding, their weights. A port that revisits fixed columns (a final refit
    of every kept weight, a backward update, a mask chosen from the whole row) fails.
    """
    is_nm = pattern != "unstructured"
    needs(port, "sparsegpt", "nm" if is_nm else "unstructured", options=("blocksize",))
    layer = make_layer(kind, 6, 24, 40, seed=11)
    other = layer.W.clone()
    other[:, cut:] = torch.randn(other[:, cut:].shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    sparsity = None if is_nm else 0.5
    a_w, a_m, _ = port.prune(
        layer.W, layer.H, method="sparsegpt", sparsity=sparsity, pattern=pattern, blocksize=blocksize
    )
    b_w, b_m, _ = port.prune(
        other, layer.H, method="sparsegpt", sparsity=sparsity, pattern=pattern, blocksize=blocksize
    )
    assert not torch.equal(a_m[:, cut:], b_m[:, cut:]) or not torch.equal(
        a_w[:, cut:], b_w[:, cut:]
    )  # the redraw mattered
    assert torch.equal(a_m[:, :cut], b_m[:, :cut]), f"SGPT-6: the mask of columns < {cut} depends on W's later columns"
    # The first `cut` columns see the same arithmetic in both calls; a port that batches the later
    # columns' updates in one GEMM may round them differently, which sweep_rtol bounds.
    rtol = sweep_rtol(port.eps, layer.W.shape[1], 0.01)
    diff = float((a_w[:, :cut] - b_w[:, :cut]).abs().max()) / max(1.0, float(a_w.abs().max()))
    measure("SGPT-6", diff, rtol, "max |weights[:, :cut] with W[:, cut:] redrawn - weights[:, :cut]| / max(1, |W_hat|)")
    assert diff <= rtol, f"SGPT-6: weights of columns < {cut} changed by {diff:.3g} when only W's later columns changed"
