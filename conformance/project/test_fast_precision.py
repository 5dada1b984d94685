"""PREC-*: each choice of rac.fast's precision policy, checked against the float64 reference.

docs/spec.md ("Fast implementation and precision policy") says which steps may use
bf16 or TF32 matrix units and which stay float32 or float64. One test per choice;
where a choice could silently be undone (a GEMM with bf16 output, TF32 switched on
by the caller, a float32 factorisation), the test's bound is tighter than what the
cheaper choice gives, and a control shows it.
"""

from __future__ import annotations

import math

import pytest
import torch

from rac.conformance.checking.helpers import req
from rac.conformance.checking.oracles import residual
from rac.conformance.checking.strategies import make_layer
from rac.conformance.checking.fast_checks import (  # noqa: F401  (fast_fixture: the ``fast`` fixture)
    DEVICES, EPS32, EPS64, assert_sparsegpt_equivalent, fast_fixture, fast_sweep_rtol,
)
from rac.reference import hessian as ref_hessian
from rac.reference import prune_layer as ref_prune
from rac.reference.sparsegpt import damped_hessian, inverse_cholesky_factor


def _activations(seed: int, tokens: int, in_features: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, in_features, generator=g)
    x[:, : max(1, in_features // 16)] *= 50.0  # outlier features, as in LLM activations
    return x


@req("PREC-1")
@pytest.mark.parametrize("device", DEVICES)
def test_prec_1_bf16_activations_accumulate_in_fp32(fast, device):
    """PREC-1: bf16 activations may enter H's GEMM in bf16 (their products are exact in float32), but H is
    accumulated and kept in float32: |H - H_64| <= 2 N eps32 (|X|^T |X|) entrywise, against the float64 H of
    the same bf16 values. A GEMM with bf16 output misses this bound by orders of magnitude (control)."""
    tokens, in_features = 512, 48
    x = _activations(0, tokens, in_features).to(torch.bfloat16)
    acc = fast.HessianAccumulator(in_features, device=device)
    for chunk in x.split(128):
        acc.add(chunk.to(device))
    H = acc.H.cpu().to(torch.float64)
    x64 = x.to(torch.float64)
    H_64 = ref_hessian(x64.T)
    # sum of N exact products in float32: |error| <= gamma_N sum |terms|, gamma_N ~ N u = N eps32 / 2; 4x margin
    bound = 2 * tokens * EPS32 * (x64.abs().T @ x64.abs())
    excess = float(((H - H_64).abs() - bound).max())
    assert excess <= 0, f"PREC-1: H from bf16 activations is off the float32-accumulation bound by {excess:.3g}"
    assert H.dtype == torch.float64 and acc.H.dtype == torch.float32
    control = (x.T @ x).to(torch.float64)  # bf16 in, bf16 out
    assert float(((control - H_64).abs() - bound).max()) > 0, "PREC-1 control: a bf16-output GEMM should miss the bound"


@req("PREC-1")
@pytest.mark.parametrize("device", DEVICES)
def test_prec_1_fp32_activations_stay_full_fp32_whatever_the_caller_set(fast, device):
    """PREC-1: float32 activations are multiplied at full float32 precision even when the caller allows TF32
    (``torch.set_float32_matmul_precision("medium")``), and the caller's setting is restored afterwards."""
    tokens, in_features = 512, 48
    x = _activations(1, tokens, in_features)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        acc = fast.HessianAccumulator(in_features, device=device)
        acc.add(x.to(device))
        assert torch.get_float32_matmul_precision() == "medium", (
            "PREC-1: the caller's matmul precision was not restored"
        )
    finally:
        torch.set_float32_matmul_precision(previous)
    x64 = x.to(torch.float64)
    # each product rounds once (u), then N additions: gamma_(N+1) ~ (N + 1) u; 4x margin
    bound = 2 * (tokens + 1) * EPS32 * (x64.abs().T @ x64.abs())
    excess = float(((acc.H.cpu().to(torch.float64) - ref_hessian(x64.T)).abs() - bound).max())
    assert excess <= 0, f"PREC-1: H from float32 activations is off the full-float32 bound by {excess:.3g} (TF32 used?)"


@req("PREC-2")
@pytest.mark.parametrize("device", DEVICES)
def test_prec_2_sparsegpt_factor_is_float64_rounded_once(fast, device):
    """PREC-2: SparseGPT's U is computed in float64 and rounded to float32 once:
    |U_fast - U_64| <= eps32 |U_64| + 10 n eps64 cond(H_d) max|U_64| (the rounding, plus the float64
    factorisations' own error). A float32 factorisation (the original code's) misses it (control)."""
    from rac.fast.factor import factor_with_recovery

    layer = make_layer("rank_deficient", 4, 64, 24, seed=5)  # rank 24 of 64: cond(H_d) ~ in / d
    dampening = 0.001
    U_fast, used = factor_with_recovery(layer.H.to(device), dampening, "raise")
    assert used == dampening and U_fast.dtype == torch.float32
    H_d = damped_hessian(layer.H, dampening)
    U_64 = inverse_cholesky_factor(H_d)
    eig = torch.linalg.eigvalsh(H_d)
    cond = float(eig.max() / eig.min())
    bound = EPS32 * U_64.abs() + 10 * 64 * EPS64 * cond * float(U_64.abs().max())
    excess = float(((U_fast.cpu().to(torch.float64) - U_64).abs() - bound).max())
    assert excess <= 0, f"PREC-2: U is off the rounded-once bound by {excess:.3g}"
    U_32 = inverse_cholesky_factor(damped_hessian(layer.H.to(torch.float32), dampening)).to(torch.float64)
    assert float(((U_32 - U_64).abs() - bound).max()) > 0, (
        "PREC-2 control: a float32 factorisation should miss the bound"
    )


@req("PREC-3")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_prec_3_sparsegpt_sweep_is_full_fp32(fast, measure, device, pattern):
    """PREC-3: the sweep (scores, column loop, lazy GEMMs) is full float32 even when the caller allows TF32:
    the weights stay within FAST-1's float32 bound of the OBS sweep with the same masks."""
    layer = make_layer("outliers", 16, 64, 200, seed=9)
    kwargs = dict(pattern=pattern) if pattern != "unstructured" else dict(sparsity=0.5)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        weight, mask = fast.prune_layer(
            layer.W.to(device), layer.H.to(device), method="sparsegpt", blocksize=16, **kwargs
        )
    finally:
        torch.set_float32_matmul_precision(previous)
    assert_sparsegpt_equivalent(
        "PREC-3",
        measure,
        layer,
        weight.cpu(),
        mask.cpu(),
        pattern,
        0.5 if pattern == "unstructured" else None,
        16,
        0.01,
        fast_sweep_rtol(EPS32, 64, 0.01),
    )


@req("PREC-4")
def test_prec_4_magnitude_exact_in_w_dtype_wanda_scores_in_fp32(fast):
    """PREC-4: magnitude ranks |W| in W's own dtype (exact: it tells apart float64 values closer than
    float32 can); Wanda's scores are float32, so such values tie and the lower index goes first (TIE-1)."""
    delta = 2.0**-40  # below float32's resolution at 1
    W = torch.tensor([[1 + 3 * delta, 1 + delta, 1 + 2 * delta, 1.0]], dtype=torch.float64)
    H = torch.eye(4, dtype=torch.float64)
    _, mask = fast.prune_layer(W, H, method="magnitude", sparsity=0.5)
    assert mask.tolist() == [[True, False, True, False]], "PREC-4: magnitude must rank |W| exactly in W's dtype"
    assert torch.equal(mask, ref_prune(W, H, method="magnitude", sparsity=0.5).mask)
    _, mask = fast.prune_layer(W, H, method="wanda", sparsity=0.5)
    assert mask.tolist() == [[False, False, True, True]], "PREC-4: Wanda's float32 scores tie here; lower index first"


@req("PREC-5")
@pytest.mark.parametrize("device", DEVICES)
def test_prec_5_alps_admm_in_float64(fast, device):
    """PREC-5: ALPS's ADMM runs in float64: on the layer where float32 ADMM swaps one near-tied pair in the final
    projection (1.3e-5 of ||WX||^2, docs/spec.md), fast ALPS keeps the reference's support and objective."""
    from rac.fast.alps import ADMM_DTYPE

    assert ADMM_DTYPE == torch.float64
    layer = make_layer("outliers", 7, 40, 41, 1955754634)
    weight, mask = fast.prune_layer(layer.W.to(device), layer.H.to(device), method="alps", pattern="2:4")
    ref = ref_prune(layer.W, layer.H, method="alps", pattern="2:4")
    energy = float(((layer.W @ layer.X) ** 2).sum())
    gap = abs(residual(layer.W, weight.cpu(), layer.X) - residual(layer.W, ref.weight, layer.X))
    assert torch.equal(mask.cpu(), ref.mask), "PREC-5: ALPS support differs from the reference"
    # ALPS-2's bound; the float32 ADMM measured 1.3e-5 here
    assert gap <= 1e-6 * energy, f"PREC-5: objective gap {gap / energy:.3g} of ||WX||^2"
    assert math.isfinite(gap)
