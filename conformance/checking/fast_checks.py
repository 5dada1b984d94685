"""Shared pieces of the FAST-* and PREC-* tests: devices, the ``fast`` fixture, rac.fast's tolerances."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, settings

from rac.conformance.checking.oracles import ReplayViolation, residual, sparsegpt_replay
from rac.conformance.checking.helpers import not_applicable
from rac.conformance.checking.tolerances import score_rtol
from rac.fixtures.layers import make_layer
from rac.reference import parse_pattern
from rac.reference import prune_layer as ref_prune

EPS32 = float(torch.finfo(torch.float32).eps)
EPS64 = float(torch.finfo(torch.float64).eps)

CUDA = torch.cuda.is_available()
#: the devices of the FAST-* tests; "cuda" is skipped by the ``fast`` fixture where there is none (after the
#: port check, so that for another port the test is not applicable rather than not checked)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu])]
#: hypothesis settings for these tests: the port fixture is session-scoped; keep CI seconds-long
FEW = settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(name="fast")
def fast_fixture(port, request):
    """rac.fast itself; these tests are about it, so they run when it is the port under test (and, for the
    "cuda" parameter, where CUDA is)."""
    import rac.fast

    if port.impl is not rac.fast:
        not_applicable("FAST-* rules are about rac.fast; run with --port rac.fast (nox -s conformance runs both ports)")
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda" and not CUDA:
        pytest.skip("not checked: needs CUDA")
    return rac.fast


def fast_sweep_rtol(eps: float, in_features: int, dampening: float) -> float:
    """Weights of rac.fast's SparseGPT against the OBS sweep with the same masks, relative to max |W_hat|.

    The factor U comes from float64 and is rounded once (PREC-2), so it carries eps/2 relative
    error, not eps * cond(H_d) as a factorisation in float32 would (conformance sweep_rtol). The
    float32 sweep then gives each weight up to ``in`` updates of relative rounding eps, amplified
    by the growth of the OBS updates, at most cond(U) = sqrt(cond(H_d)) <= sqrt(in / d + 1) under
    relative dampening d. 10x for the constants, as sweep_rtol. (Measured over 300 generated
    layers: at most 0.07 of this bound.)
    """
    return 10 * eps * in_features * math.sqrt(in_features / max(dampening, 1e-12) + 1)


def assert_sparsegpt_equivalent(req_id, measure, layer, weight, mask, pattern, sparsity, blocksize, dampening, rtol_w):
    """The port's SparseGPT result = the reference's, except at near-ties.

    1. Replay the port's masks through the reference OBS sweep: every choice must prune the
       lowest scores at that moment up to rtol_sel (a score w^2 / U_jj^2 carries twice w's
       error plus its own rounding), so wherever the mask differs from the reference's own,
       the difference is a near-tie.
    2. The port's weights equal the replay's within rtol_w (relative to max |W_hat|).
    3. With the reference's own mask, the objectives agree to what that weight error allows:
       |f(W_hat) - f(W_ref)| <= 2 sqrt(f) delta + delta^2, delta = ||Delta W X||_F bounded by
       rtol_w max|W_hat| sqrt(numel) sigma_max(X).
    """
    rtol_sel = 2 * rtol_w + score_rtol(EPS32)
    try:
        replay = sparsegpt_replay(layer.W, layer.H, mask, parse_pattern(pattern), sparsity or 0.0, blocksize,
                                  dampening, rtol=rtol_sel)
    except ReplayViolation as exc:
        raise AssertionError(f"{req_id}: a mask choice is not SparseGPT's: {exc} ({layer})") from None
    scale = max(1.0, float(replay.abs().max()))
    err = float((weight - replay).abs().max()) / scale
    measure(req_id, err, rtol_w, "max |W_fast - W_replay| / max|W|")
    assert err <= rtol_w, (
        f"{req_id}: weights differ from the OBS sweep with the same masks by {err:.3g} > {rtol_w:.3g} ({layer})"
    )
    kwargs = dict(pattern=pattern) if pattern != "unstructured" else dict(sparsity=sparsity)
    ref = ref_prune(layer.W, layer.H, method="sparsegpt", blocksize=blocksize, dampening=dampening, **kwargs)
    if torch.equal(ref.mask, mask):
        sigma = float(torch.linalg.matrix_norm(layer.X, ord=2)) if layer.X.numel() else 0.0
        delta = rtol_w * scale * math.sqrt(layer.W.numel()) * sigma
        f_ref, f_fast = residual(layer.W, ref.weight, layer.X), residual(layer.W, weight, layer.X)
        bound = 2 * math.sqrt(f_ref) * delta + delta**2 + 1e-12 * (f_ref + 1e-300)
        assert abs(f_fast - f_ref) <= bound, (
            f"{req_id}: objective {f_fast!r} vs reference {f_ref!r} beyond {bound:.3g} ({layer})"
        )


_TRITON_CASES = [
    ("gaussian", "unstructured", 0.5, 8),
    ("dead_inputs", "2:4", None, 128),
    ("mixed", "1:4", None, 128),
    ("bf16_weights", "unstructured", 0.29, 128),
    ("outliers", "2:8", None, 16),
    ("rank_deficient", "3:4", None, 4),
]


def triton_vs_eager(device: str, measure) -> None:
    """The Triton panel kernel and the eager loop on the same layers: the kernel's result is SparseGPT by
    FAST-1's checks, and equals the eager result (masks; weights to FAST-1's bound)."""
    from rac.fast import triton_sweep
    from rac.fast.factor import factor_with_recovery
    from rac.fast.sparsegpt import dead_inputs, sparsegpt_sweep
    from rac.fast.sweep import sweep_chunk

    for kind, pattern, sparsity, blocksize in _TRITON_CASES:
        layer = make_layer(kind, 6, 32, 40, seed=3)
        U, _ = factor_with_recovery(layer.H.to(device), 0.01, "raise")
        dead = dead_inputs(layer.H).to(device)
        pat = parse_pattern(pattern)
        W = layer.W.to(device, torch.float32)
        eager = sparsegpt_sweep(
            W.clone(), U, dead, pat, sparsity or 0.0, blocksize, panel=16, chunk=4, chunk_fn=sweep_chunk
        )
        kern = sparsegpt_sweep(
            W.clone(), U, dead, pat, sparsity or 0.0, blocksize, panel=16, chunk=16, chunk_fn=triton_sweep.chunk_fn
        )
        weight, mask = kern[0].cpu(), kern[1].cpu()
        rtol = fast_sweep_rtol(EPS32, 32, 0.01)
        assert_sparsegpt_equivalent("FAST-10", measure, layer, weight, mask, pattern, sparsity, blocksize, 0.01, rtol)
        if torch.equal(mask, eager[1].cpu()):
            err = float((weight - eager[0].cpu()).abs().max()) / max(1.0, float(weight.abs().max()))
            assert err <= rtol, f"FAST-10: Triton and eager sweeps differ by {err:.3g} on {layer}"
