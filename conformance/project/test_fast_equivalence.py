"""FAST-*: rac.fast computes what rac.reference defines (run with ``--port rac.fast``).

The layer-level suite already holds ``rac.fast`` to every rule as a float32
port. These tests compare it with the reference directly, with tolerances
derived from float32 and from the fast precision policy (docs/spec.md,
"Fast implementation and precision policy"), which are much tighter than a
generic float32 port's; and they check the fast-only pieces (stacked linears,
streamed H, the sweep's reorderings). Every test runs on the CPU, and the same
assertions again on CUDA where there is one (``@pytest.mark.gpu``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rac.conformance.checking.fast_checks import (  # noqa: F401  (fast_fixture: the ``fast`` fixture)
    DEVICES, EPS32, EPS64, FEW, assert_sparsegpt_equivalent, fast_fixture, fast_sweep_rtol, triton_vs_eager,
)
from rac.conformance.checking.helpers import req
from rac.conformance.checking.oracles import residual, sparsegpt_replay
from rac.conformance.checking.strategies import layers, make_layer, nm_patterns, sparsities
from rac.conformance.checking.tolerances import score_rtol
from rac.reference import hessian as ref_hessian
from rac.reference import parse_pattern
from rac.reference import prune_layer as ref_prune
from rac.reference.contract import registry


@req("FAST-1")
@pytest.mark.parametrize("device", DEVICES)
@FEW
@example(
    layer=make_layer("outliers", 8, 40, 60, 3), sparsity=0.5, nm=False, pattern="2:4", blocksize=16, dampening=0.001
)
@given(
    layer=layers(in_multiple=8, max_in=40),
    sparsity=sparsities,
    nm=st.booleans(),
    pattern=nm_patterns,
    blocksize=st.sampled_from([1, 3, 8, 16, 128]),
    dampening=st.sampled_from([0.001, 0.01, 0.1, 1.0]),
)
def test_fast_1_sparsegpt_matches_the_reference(
    fast, measure, device, layer, sparsity, nm, pattern, blocksize, dampening
):
    """FAST-1: fast SparseGPT = reference SparseGPT: same mask except at near-ties, weights within the
    float32 bound of the fast precision policy (float64 factor, float32 sweep)."""
    pattern = pattern if nm else "unstructured"
    kwargs = dict(pattern=pattern) if nm else dict(sparsity=sparsity)
    weight, mask = fast.prune_layer(
        layer.W.to(device), layer.H.to(device), method="sparsegpt", blocksize=blocksize, dampening=dampening, **kwargs
    )
    rtol_w = fast_sweep_rtol(EPS32, layer.W.shape[1], dampening)
    assert_sparsegpt_equivalent(
        "FAST-1",
        measure,
        layer,
        weight.cpu(),
        mask.cpu(),
        pattern,
        None if nm else sparsity,
        blocksize,
        dampening,
        rtol_w,
    )


@req("FAST-2")
@pytest.mark.parametrize("device", DEVICES)
@FEW
@given(
    layer=layers(in_multiple=4),
    sparsity=sparsities,
    pattern=st.sampled_from(["unstructured", "2:4", "1:4"]),
    group=st.sampled_from(["row", "layer"]),
)
def test_fast_2_magnitude_and_wanda_match_the_reference(fast, device, layer, sparsity, pattern, group):
    """FAST-2: magnitude is bitwise the reference (|W| is exact in any dtype); Wanda's mask differs only where
    the float64 scores are within float32 rounding of each other (8 eps32), and kept weights are untouched."""
    nm = pattern != "unstructured"
    kwargs = dict(pattern=pattern) if nm else dict(sparsity=sparsity, group=group)
    W, H = layer.W.to(device), layer.H.to(device)
    m_w, m_mask = fast.prune_layer(W, H, method="magnitude", **kwargs)
    r = ref_prune(layer.W, layer.H, method="magnitude", **kwargs)
    assert torch.equal(m_mask.cpu(), r.mask) and torch.equal(m_w.cpu(), r.weight), (
        "FAST-2: magnitude differs from the reference"
    )
    w_w, w_mask = fast.prune_layer(W, H, method="wanda", **kwargs)
    r = ref_prune(layer.W, layer.H, method="wanda", **kwargs)
    w_w, w_mask = w_w.cpu(), w_mask.cpu()
    assert torch.equal(w_w[w_mask], layer.W[w_mask]), "FAST-2: Wanda changed a kept weight"
    # Where the masks differ, fast swapped a pruned and a kept weight of one group whose float64
    # scores lie within float32 rounding of each other (a near-tie): a pruned score s_b <= the
    # reference's boundary <= a kept score s_a, so all swapped scores of a group lie within
    # score_rtol(eps32) of the largest.
    scores = layer.W.abs() * torch.diagonal(layer.H).sqrt()
    if nm:
        m = int(pattern.split(":")[1])
        groups = (scores.reshape(-1, m), w_mask.reshape(-1, m), r.mask.reshape(-1, m))
    elif group == "row":
        groups = (scores, w_mask, r.mask)
    else:
        groups = (scores.reshape(1, -1), w_mask.reshape(1, -1), r.mask.reshape(1, -1))
    g_s, g_fast, g_ref = groups
    for g in (g_fast != g_ref).any(dim=1).nonzero().flatten().tolist():
        swapped = g_s[g][g_fast[g] != g_ref[g]]
        spread = float(swapped.max() - swapped.min())
        assert spread <= score_rtol(EPS32) * float(swapped.max()), (
            f"FAST-2: Wanda's mask differs from the reference's beyond a near-tie in group {g} ({layer})"
        )


@req("FAST-3")
@FEW
@given(
    layer=layers(in_multiple=4, max_in=36),
    sparsity=sparsities,
    nm=st.booleans(),
    blocksize=st.sampled_from([1, 3, 4, 8, 128]),
    panel=st.sampled_from([1, 4, 5, 8, 128]),
    chunk=st.sampled_from([1, 2, 4, 7, 32]),
)
def test_fast_3_blocked_sweep_is_the_reference_sweep(fast, measure, layer, sparsity, nm, blocksize, panel, chunk):
    """FAST-3: the panel/chunk reordering (lazy batching, SGPT-7) is exact: run in float64 with the reference's
    own U, any panel and chunk size gives the reference sweep's mask and its weights to float64 rounding."""
    from rac.fast.sparsegpt import sparsegpt_sweep
    from rac.reference.sparsegpt import dead_inputs, factor_with_recovery
    from rac.reference.sparsegpt import sparsegpt_sweep as reference_sweep

    pattern = parse_pattern("2:4" if nm else "unstructured")
    U, _ = factor_with_recovery(layer.H, 0.01, "raise")
    dead = dead_inputs(layer.H)
    W_ref, mask_ref = reference_sweep(layer.W, U, dead, pattern, sparsity, blocksize)
    W_fast, mask_fast = sparsegpt_sweep(
        layer.W.clone(), U, dead, pattern, sparsity, blocksize, panel=panel, chunk=chunk
    )
    err, rtol = _sweep_error(layer, W_fast, mask_fast, W_ref, mask_ref, pattern, sparsity, blocksize)
    measure("FAST-3", err, rtol, "blocked vs per-column sweep, float64")
    assert err <= rtol, f"FAST-3: panel {panel} chunk {chunk} changes the weights by {err:.3g} > {rtol:.3g} ({layer})"


def _sweep_error(layer, W_fast, mask_fast, W_ref, mask_ref, pattern, sparsity, blocksize) -> tuple:
    """(max weight error relative to max(1, max|W_ref|), its tolerance) of a float64 fast sweep against the
    reference sweep; a mask that differs must be a near-tie at float64 rounding (the replay checks it)."""
    # same float64 U, same operations in another order: each weight's <= in updates round
    # differently, amplified at most by cond(U) <= sqrt(in / 0.01 + 1); 10x for constants
    rtol = fast_sweep_rtol(EPS64, layer.W.shape[1], 0.01)
    if not torch.equal(mask_fast, mask_ref):
        # only a near-tie at float64 rounding may differ: the replay validates each choice
        sparsegpt_replay(
            layer.W, layer.H, mask_fast, pattern, sparsity, blocksize, 0.01, rtol=2 * rtol + score_rtol(EPS64)
        )
        W_ref = sparsegpt_replay(layer.W, layer.H, mask_fast, pattern, sparsity, blocksize, 0.01, rtol=1.0)
    return float((W_fast - W_ref).abs().max()) / max(1.0, float(W_ref.abs().max())), rtol


@req("FAST-3")
@FEW
@given(layer=layers(in_multiple=4, max_in=36), sparsity=sparsities, nm=st.booleans(),
       blocksize=st.sampled_from([1, 3, 4, 8, 128]), panel=st.sampled_from([1, 4, 5, 8, 128]),
       outer=st.sampled_from([1, 8, 12, 512]), cholesky_block=st.sampled_from([1, 5, 8, 256]))
def test_fast_3_left_looking_sweep_is_the_reference_sweep(fast, measure, layer, sparsity, nm, blocksize, panel,
                                                          outer, cholesky_block):
    """FAST-3: the sweep the pruner runs (left-looking: each panel owed its updates through F = R[:A, A:B] U_AB,
    no whole U) is the reference sweep: in float64, F from the same damped H, any panel width and any grouping
    of panels into outer blocks gives the reference's mask and its weights to float64 rounding. Small Cholesky
    blocks (the pruner's is 256) put the blocked Cholesky's panel solves and trailing updates into these layers
    of at most 36 inputs."""
    from rac.fast.factor import left_panel_factor
    from rac.fast.sparsegpt import left_panels, sparsegpt_sweep_left
    from rac.reference.sparsegpt import dead_inputs, factor_with_recovery
    from rac.reference.sparsegpt import sparsegpt_sweep as reference_sweep

    pattern = parse_pattern("2:4" if nm else "unstructured")
    U, _ = factor_with_recovery(layer.H, 0.01, "raise")
    dead = dead_inputs(layer.H)
    W_ref, mask_ref = reference_sweep(layer.W, U, dead, pattern, sparsity, blocksize)
    bounds = left_panels(layer.W.shape[1], pattern, blocksize, panel)
    F, used = left_panel_factor(layer.H, 0.01, "raise", bounds, out_dtype=torch.float64,
                                cholesky_block=cholesky_block)
    assert used == 0.01
    W_fast, mask_fast = sparsegpt_sweep_left(layer.W, F, bounds, dead, pattern, sparsity, blocksize, outer=outer)
    assert W_fast.dtype == torch.float64
    # F's blocks are U's (and R U_AB) computed another way: float64 rounding amplified by cond(U) as above
    err, rtol = _sweep_error(layer, W_fast, mask_fast, W_ref, mask_ref, pattern, sparsity, blocksize)
    measure("FAST-3", err, rtol, "left-looking vs per-column sweep, float64")
    assert err <= rtol, f"FAST-3: left-looking panel {panel} changes the weights by {err:.3g} > {rtol:.3g} ({layer})"


@req("FAST-4")
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(layer=make_layer("outliers", 7, 40, 41, 1955754634), sparsity=0.5, nm=True)
@given(layer=layers(in_multiple=4, max_in=24, max_out=8), sparsity=sparsities, nm=st.booleans())
def test_fast_4_alps_matches_the_reference(fast, measure, device, layer, sparsity, nm):
    """FAST-4: fast ALPS (float64 ADMM on the device, O(n) projection) reaches the reference's support and
    objective: the projections select the same sets, so only float64 rounding of the GEMMs differs."""
    kwargs = dict(pattern="2:4") if nm else dict(sparsity=sparsity)
    weight, mask = fast.prune_layer(layer.W.to(device), layer.H.to(device), method="alps", **kwargs)
    ref = ref_prune(layer.W, layer.H, method="alps", **kwargs)
    got, want = residual(layer.W, weight.cpu(), layer.X), residual(layer.W, ref.weight, layer.X)
    energy = float(((layer.W @ layer.X) ** 2).sum())
    # float64 GEMMs in another order: <= in eps64 relative per product, amplified through ADMM's
    # solves by cond(H_n + rho I) <= cond(H_ridge) <= in / 0.01 + 1; 10x for constants
    rtol = 10 * EPS64 * layer.W.shape[1] * (layer.W.shape[1] / 0.01 + 1)
    measure("FAST-4", abs(got - want) / max(energy, 1e-300), rtol, "|objective - reference| / ||WX||^2")
    assert torch.equal(mask.cpu(), ref.mask), f"FAST-4: ALPS support differs from the reference ({layer})"
    assert abs(got - want) <= rtol * energy, f"FAST-4: ALPS objective {got!r} vs reference {want!r} ({layer})"


@req("FAST-5")
@pytest.mark.parametrize("method", registry.with_implementation("fast"))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_fast_5_prune_shared_equals_prune_layer(fast, measure, method, pattern):
    """FAST-5: prune_shared (q/k/v sharing one H) gives each linear what prune_layer gives it alone.

    Where the linears are swept separately with the shared factorisation the results are
    bitwise equal; where rows are stacked into one sweep (N:M, per-row groups) the GEMM
    shapes differ, so the weights agree to rounding and the masks except at near-ties.
    """
    g = torch.Generator().manual_seed(11)
    X = torch.randn(48, 120, generator=g, dtype=torch.float64)
    X[:3] *= 30.0
    H = ref_hessian(X)
    weights = {
        name: torch.randn(rows, 48, generator=g, dtype=torch.float64) for name, rows in (("q", 16), ("k", 8), ("v", 8))
    }
    kwargs = dict(pattern=pattern) if pattern != "unstructured" else dict(sparsity=0.5)
    shared = fast.prune_shared(weights, H, method=method, **kwargs)
    assert list(shared) == list(weights)
    stacked = pattern != "unstructured" or method == "wanda"
    for name, W in weights.items():
        alone = fast.prune_layer(W, H, method=method, **kwargs)
        got = shared[name]
        if not stacked:
            assert torch.equal(got.mask, alone.mask) and torch.equal(got.weight, alone.weight), (
                f"FAST-5: {name} differs"
            )
            continue
        if method == "sparsegpt":
            layer = SimpleNamespace(W=W, H=H, X=X)
            assert_sparsegpt_equivalent(
                "FAST-5",
                measure,
                layer,
                got.weight,
                got.mask,
                pattern,
                None,
                128,
                0.01,
                fast_sweep_rtol(EPS32, 48, 0.01),
            )
        else:  # per-row selection on identical scores: the stacking cannot change anything
            assert torch.equal(got.mask, alone.mask) and torch.equal(got.weight, alone.weight), (
                f"FAST-5: {name} differs"
            )
    assert shared["q"].info["method"] == method


@req("FAST-6")
@pytest.mark.parametrize("device", DEVICES)
@FEW
@given(
    seed=st.integers(0, 2**31 - 1),
    in_features=st.integers(1, 24),
    chunks=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    dtype=st.sampled_from(["float32", "bfloat16", "float64"]),
)
def test_fast_6_streamed_hessian_equals_one_shot(fast, device, seed, in_features, chunks, dtype):
    """FAST-6: HessianAccumulator over chunks (any float dtype, bool padding masks, float token weights)
    equals the reference H of all real tokens at once; integer activations make every sum exact,
    so equality is bitwise. ``merge`` of two halves equals one accumulator."""
    HessianAccumulator, hessian = fast.HessianAccumulator, fast.hessian
    g = torch.Generator().manual_seed(seed)
    acc, half = HessianAccumulator(in_features, device=device), HessianAccumulator(in_features, device=device)
    kept, weighted = [], []
    for i, n in enumerate(chunks):
        x = torch.randint(-8, 9, (n, in_features), generator=g).to(getattr(torch, dtype))
        pad = torch.rand(n, generator=g) < 0.7
        x_in = x.clone()
        if n:
            x_in[~pad] = 1e4  # padding may hold anything
        target = acc if i % 2 == 0 else half
        if i % 3 == 2:  # float weights: 0 (padding) or 2 (counted twice)
            w = pad.to(torch.float32) * 2
            target.add(x_in.to(device), token_weights=w.to(device))
            weighted.append(x[pad].to(torch.float64))
        else:
            target.add(x_in.reshape(1, n, in_features).to(device), token_weights=pad.reshape(1, n).to(device))
        kept.append(x[pad].to(torch.float64))
    acc.merge(half)
    X = torch.cat(kept + weighted).T  # a token of weight 2 = the token twice (HES-3)
    want = ref_hessian(X) if X.shape[1] else torch.zeros(in_features, in_features, dtype=torch.float64)
    assert torch.equal(acc.H.cpu().to(torch.float64), want), "FAST-6: streamed H differs from the one-shot H"
    assert acc.tokens == sum(int(k.shape[0]) for k in kept)
    if X.shape[1]:
        assert torch.equal(hessian(X.to(device)).cpu().to(torch.float64), want), "FAST-6: hessian(X) differs"


@req("FAST-7")
def test_fast_7_fast_only_entry_points_reject_bad_input(fast):
    """FAST-7: prune_shared and HessianAccumulator reject bad input by name, as prune_layer does (GEN-5)."""
    layer = make_layer("gaussian", 4, 8, 20, seed=0)
    with pytest.raises(ValueError, match=r"weights\['k'\]"):
        fast.prune_shared({"q": layer.W, "k": layer.W[:, :6]}, layer.H, method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match=r"weights\['k'\]"):
        fast.prune_shared({"q": layer.W, "k": layer.W[0]}, layer.H, method="wanda", sparsity=0.5)
    with pytest.raises(TypeError, match="weights"):
        fast.prune_shared([layer.W], layer.H, method="wanda", sparsity=0.5)
    with pytest.raises(TypeError, match="blocksise"):
        fast.prune_shared({"q": layer.W}, layer.H, method="sparsegpt", sparsity=0.5, blocksise=4)
    with pytest.raises(ValueError, match="sparsity"):
        fast.prune_shared({"q": layer.W}, layer.H, method="sparsegpt", sparsity=1.5)
    acc = fast.HessianAccumulator(8)
    with pytest.raises(ValueError, match="x must have shape"):
        acc.add(torch.ones(3, 7))
    with pytest.raises(ValueError, match="token_weights"):
        acc.add(torch.ones(3, 8), token_weights=torch.ones(4))
    with pytest.raises(ValueError, match="token_weights must be >= 0"):
        acc.add(torch.ones(3, 8), token_weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="in_features"):
        fast.HessianAccumulator(0)
    acc.add(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        _ = acc.H
    with pytest.raises(ValueError, match="X must be 2-D"):
        fast.hessian(torch.ones(3))


@req("FAST-8")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", registry.with_implementation("fast"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_fast_8_results_in_w_dtype_on_w_device(fast, device, method, dtype):
    """FAST-8: the weight comes back in W's dtype on W's device (H may be elsewhere), the mask as bool;
    a bf16 SparseGPT result is the float32 result rounded once."""
    layer = make_layer("outliers", 8, 32, 64, seed=2)
    W = layer.W.to(dtype).to(device)
    weight, mask = fast.prune_layer(W, layer.H.to(torch.float32), method=method, sparsity=0.5)
    assert weight.dtype == dtype and weight.device.type == device and mask.dtype == torch.bool
    assert mask.device.type == device and bool((weight[~mask] == 0).all())
    if method in ("magnitude", "wanda"):
        assert torch.equal(weight[mask], W[mask]), "FAST-8: a kept weight changed"
    if method == "sparsegpt" and dtype == torch.bfloat16:
        w32, m32 = fast.prune_layer(W.to(torch.float32), layer.H.to(torch.float32), method=method, sparsity=0.5)
        assert torch.equal(m32, mask) and torch.equal(w32.to(dtype), weight), (
            "FAST-8: bf16 result is not one rounding of float32's"
        )


@req("FAST-9")
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1), m=st.sampled_from([2, 3, 4, 8, 16, 17]), levels=st.integers(1, 5), data=st.data()
)
def test_fast_9_schedules_of_the_same_selection_agree(fast, seed, m, levels, data):
    """FAST-9: the N:M selection's CPU schedules (loop, float32 keys), GPU schedule (broadcast) and the reference's
    stable sort give the same mask, ties included (few distinct values force ties), for groups narrower and wider
    than KEYS_MAX_COLUMNS (keep_highest's switch between keys and loop); and the O(n) selection of fast/masks.py
    gives the reference's prune_lowest mask."""
    from rac.fast.masks import prune_lowest, prune_lowest_rows
    from rac.fast.sweep import KEYS_MAX_COLUMNS, _rank_broadcast, _rank_keys, _rank_loop, keep_highest
    from rac.reference.masks import prune_lowest as ref_lowest
    from rac.reference.masks import prune_lowest_per_row

    g = torch.Generator().manual_seed(seed)
    width = data.draw(st.sampled_from([37, KEYS_MAX_COLUMNS + 3]))
    scores = torch.randint(0, levels, (m, width), generator=g).to(torch.float32)
    kept = data.draw(st.integers(1, m - 1))
    want = prune_lowest_per_row(scores.T, m - kept).T
    if m <= 16:
        assert torch.equal(_rank_loop(scores) >= m - kept, want), "FAST-9: loop schedule differs from the stable sort"
        assert torch.equal(_rank_keys(scores) >= m - kept, want), "FAST-9: keys schedule differs from the stable sort"
        assert torch.equal(_rank_broadcast(scores) >= m - kept, want), "FAST-9: broadcast schedule differs"
    assert torch.equal(keep_highest(scores, kept), want)
    k = data.draw(st.integers(0, scores.numel()))
    assert torch.equal(prune_lowest(scores, k), ref_lowest(scores.reshape(-1), k).reshape(scores.shape))
    k_row = data.draw(st.integers(0, scores.shape[1]))
    assert torch.equal(prune_lowest_rows(scores, k_row), prune_lowest_per_row(scores, k_row))


_INTERPRETER_SCRIPT = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
from rac.conformance.checking.fast_checks import triton_vs_eager
triton_vs_eager("cpu", lambda *a, **k: None)
print("FAST-10 OK")
"""


@req("FAST-10")
@pytest.mark.parametrize("device", DEVICES)
def test_fast_10_triton_kernel_computes_the_eager_sweep(fast, measure, device, tmp_path):
    """FAST-10: the Triton panel kernel (fast/triton_sweep.py) computes the eager column loop's sweep.
    On CUDA it runs compiled; on a CPU it runs in Triton's interpreter (a fresh process with
    TRITON_INTERPRET=1), the same kernel source executed with numpy. Skipped where Triton is not installed."""
    pytest.importorskip(
        "triton", reason="Triton is not installed (CI); the GPU run and a dev venv with Triton check this"
    )
    if device == "cuda":
        triton_vs_eager("cuda", measure)
        return
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "FAST-10 OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]


def _column_loop_cases(test):
    """The layers, patterns, dtypes and mask blocks on which FAST-11 and FAST-14 compare a CPU column loop with the
    eager one."""
    cases = given(layer=layers(in_multiple=8, max_in=64), sparsity=sparsities,
                  pattern=st.sampled_from(["unstructured", "2:4", "1:4", "4:8", "3:8"]), float64=st.booleans(),
                  blocksize=st.sampled_from([1, 4, 8, 128]))
    first = example(layer=make_layer("outliers", 8, 40, 64, 5), sparsity=0.5, pattern="2:4", float64=False,
                    blocksize=8)
    return FEW(first(cases(test)))


@req("FAST-11")
@_column_loop_cases
def test_fast_11_cpu_column_loop_is_the_eager_loop(fast, measure, layer, sparsity, pattern, float64, blocksize):
    """FAST-11: the numpy column loop that rac.fast runs on a CPU (fast/cpu_sweep.py) gives bitwise the eager
    torch loop's weights, masks and errors: the same IEEE operations in the same order (2:4 masks by unique keys
    and a min/max network instead of the pairwise ranks), float32 and float64, unstructured and N:M."""
    from rac.fast.cpu_sweep import sweep_chunk_cpu
    from rac.fast.factor import left_panel_factor
    from rac.fast.sparsegpt import dead_inputs, left_panels, sparsegpt_sweep_left
    from rac.fast.sweep import sweep_chunk

    dtype = torch.float64 if float64 else torch.float32
    pat = parse_pattern(pattern)
    H = layer.H.to(torch.float32)
    # a dead input and exact ties in the scores, where the two rankings could part
    H[1, :] = 0.0
    H[:, 1] = 0.0
    W = layer.W.to(torch.float32)
    W[:, 2] = W[:, 3]
    bounds = left_panels(W.shape[1], pat, blocksize, 16)
    F, _ = left_panel_factor(H, 0.01, "raise", bounds, out_dtype=dtype)
    dead = dead_inputs(H)
    s = sparsity if pat.kind == "unstructured" else 0.0
    results = [sparsegpt_sweep_left(W.to(dtype), F, bounds, dead, pat, s, blocksize, panel=16, chunk=8,
                                    chunk_fn=fn) for fn in (sweep_chunk, sweep_chunk_cpu)]
    (w_eager, m_eager), (w_cpu, m_cpu) = results
    measure("FAST-11", float((w_eager - w_cpu).abs().max()), 0.0, "numpy vs torch column loop (bitwise)")
    assert torch.equal(m_eager, m_cpu), f"FAST-11: the CPU loop chose another mask ({pattern}, {dtype}, {layer})"
    assert torch.equal(w_eager, w_cpu), f"FAST-11: the CPU loop's weights differ ({pattern}, {dtype}, {layer})"


@req("FAST-14")
@_column_loop_cases
def test_fast_14_compiled_cpu_loop_computes_the_eager_sweep(fast, measure, layer, sparsity, pattern, float64,
                                                            blocksize):
    """FAST-14: the numba column loop (fast/numba_sweep.py) computes the eager torch loop's sweep: the same masks,
    weights within FAST-1's bound (its rank-1 update is one fused multiply-add, as BLAS ger's, whose unfused
    tails differ in the last bit), and the same bits whatever the slab of outputs each thread owns (1, 3, or
    all of them): no output reads another's. Skipped where numba is not installed (the ``cpu-kernel`` extra;
    CI installs it with ``test``)."""
    pytest.importorskip("numba", reason="numba is not installed: rac.fast runs the numpy loop (FAST-11) instead")
    from rac.fast import numba_sweep
    from rac.fast.factor import left_panel_factor
    from rac.fast.sparsegpt import dead_inputs, left_panels, sparsegpt_sweep_left
    from rac.fast.sweep import sweep_chunk

    dtype = torch.float64 if float64 else torch.float32
    pat = parse_pattern(pattern)
    H = layer.H.to(torch.float32)
    # three dead inputs in the first group: three scores of exactly 0, of which 2:4 prunes two (TIE-1: the lower
    # indices), so a ranking that orders ties otherwise chooses another mask
    H[1:4, :] = 0.0
    H[:, 1:4] = 0.0
    W = layer.W.to(torch.float32)
    bounds = left_panels(W.shape[1], pat, blocksize, 16)
    F, _ = left_panel_factor(H, 0.01, "raise", bounds, out_dtype=dtype)
    dead = dead_inputs(H)
    s = sparsity if pat.kind == "unstructured" else 0.0

    def run(chunk_fn):
        return sparsegpt_sweep_left(W.to(dtype), F, bounds, dead, pat, s, blocksize, panel=16, chunk=8,
                                    chunk_fn=chunk_fn)

    w_eager, m_eager = run(sweep_chunk)
    slabs = {slab: run(lambda *a, slab=slab: numba_sweep.sweep_chunk_numba(*a, slab=slab))
             for slab in (1, 3, W.shape[0])}
    assert not numba_sweep._FAILED, f"FAST-14: the numba kernel did not run: {numba_sweep._FAILED}"
    w_nb, m_nb = slabs[1]
    for slab, (w, m) in slabs.items():
        assert torch.equal(w, w_nb) and torch.equal(m, m_nb), f"FAST-14: slab {slab} changed the result ({layer})"
    assert torch.equal(m_eager, m_nb), f"FAST-14: the numba loop chose another mask ({pattern}, {dtype}, {layer})"
    # FAST-1's bound, in the sweep's own precision: the two differ only in how each rank-1 update rounds
    rtol = fast_sweep_rtol(EPS64 if float64 else EPS32, W.shape[1], 0.01)
    err = float((w_nb - w_eager).abs().max()) / max(1.0, float(w_eager.abs().max()))
    measure("FAST-14", err, rtol, "max |W_numba - W_eager| / max|W|")
    assert err <= rtol, f"FAST-14: numba and eager weights differ by {err:.3g} > {rtol:.3g} ({pattern}, {dtype})"


@req("FAST-14")
def test_fast_14_a_cpu_runs_the_compiled_loop_where_numba_is_installed(fast, measure, monkeypatch):
    """FAST-14: on a CPU, RAC_FAST_SWEEP=auto picks the numba loop where numba imports and the numpy loop where it
    does not; ``cpu``, ``numba`` and ``eager`` force theirs, and any other value is a ValueError naming it."""
    from rac.fast import numba_sweep
    from rac.fast.cpu_sweep import sweep_chunk_cpu
    from rac.fast.sparsegpt import in_panel_schedule
    from rac.fast.sweep import sweep_chunk

    cpu = torch.device("cpu")
    monkeypatch.delenv("RAC_FAST_SWEEP", raising=False)
    expected = numba_sweep.sweep_chunk_numba if numba_sweep.available() else sweep_chunk_cpu
    assert in_panel_schedule(cpu) == (expected, False), "FAST-14: auto did not pick the CPU loop it should"
    monkeypatch.setattr(numba_sweep, "available", lambda: False)
    assert in_panel_schedule(cpu) == (sweep_chunk_cpu, False), "FAST-14: without numba auto must run the numpy loop"
    for choice, fn in (("cpu", sweep_chunk_cpu), ("numba", numba_sweep.sweep_chunk_numba), ("eager", sweep_chunk)):
        monkeypatch.setenv("RAC_FAST_SWEEP", choice)
        assert in_panel_schedule(cpu)[0] is fn, f"FAST-14: RAC_FAST_SWEEP={choice} did not force its loop"
    monkeypatch.setenv("RAC_FAST_SWEEP", "fortran")
    with pytest.raises(ValueError, match="RAC_FAST_SWEEP"):
        in_panel_schedule(cpu)


@req("FAST-12")
def test_fast_12_huge_page_buffers_are_plain_tensors(fast, measure, monkeypatch):
    """FAST-12: fast/alloc.py's buffers are what torch.empty / a contiguous copy would give (shape, dtype, strides,
    values), with the huge-page advice given on Linux CPU buffers from MIN_BYTES up and never to small ones."""
    import sys

    from rac.fast import alloc

    calls = []
    real = alloc._madvise()
    if sys.platform.startswith("linux"):
        assert real is not None, "FAST-12: libc's madvise was not found on Linux"

    def spy(start, length, advice):
        calls.append((start, length, advice))
        return real(start, length, advice) if real is not None else 0

    monkeypatch.setattr(alloc, "_madvise", lambda: spy)
    src = torch.randn(1500, 1700)  # 10.2 MB: advised; its transposed view copied
    out = alloc.copy(src.T, torch.float64)
    assert out.shape == (1700, 1500) and out.dtype == torch.float64 and out.is_contiguous()
    assert torch.equal(out, src.T.to(torch.float64))
    assert len(calls) == 1 and calls[0][2] == 14 and calls[0][0] % (2 << 20) == 0 and calls[0][1] % (2 << 20) == 0
    p, n = out.data_ptr(), out.numel() * out.element_size()
    assert p <= calls[0][0] and calls[0][0] + calls[0][1] <= p + n, "FAST-12: advice outside the buffer"
    small = alloc.empty((100, 100), torch.float32)
    assert small.shape == (100, 100) and len(calls) == 1, "FAST-12: a small buffer was advised"
