"""Input checks of ``rac.fast``: the contract's checks, run where the tensors live.

Every error a user can see comes from ``rac.reference.contract.validate`` (same type,
same message, GEN-5); the only difference is that W and H are checked in their
own dtype and on their own device instead of being copied to float64 on the
CPU first. A GPU caller keeps its tensors on the GPU; H is moved to W's device.
"""

from __future__ import annotations

import math

import torch

from rac.reference.contract.validate import all_finite, as_real_tensor, check_hessian, check_weight

#: The dtype every fast pruner computes in (docs/spec.md, "Fast implementation and precision policy").
COMPUTE_DTYPE = torch.float32
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def checked_weight(W, name: str = "W") -> torch.Tensor:
    """W validated as the reference validates it (GEN-5), left in its own dtype and device; ValueError
    naming it if it is beyond float32's range, where rac.fast computes (REL: an Inf is never returned)."""
    W = check_weight(W, name, convert=as_real_tensor)
    if W.dtype == torch.float64 and W.numel() and float(W.abs().max()) > FLOAT32_MAX:
        raise ValueError(
            f"{name} has entries up to {float(W.abs().max()):.3g}, beyond float32's range ({FLOAT32_MAX:.3g}) in which "
            "rac.fast computes; use rac.reference (float64) for such weights"
        )
    return W


def checked_hessian(H, W: torch.Tensor) -> torch.Tensor:
    """H validated as the reference validates it (GEN-5/6), on W's device, symmetrised and brought to
    a scale float32 holds.

    Checked in H's own dtype before anything is rounded. Every pruner's result is the same for H and
    4^k H (INV-1, exact in floating point), so an H whose mean diagonal lies outside [2^-64, 2^64]
    (say 1e-300, or 1e300 in float64) is multiplied by the power of four that brings it near 1: the
    float32 steps then neither underflow nor overflow, and nothing else changes. Returned in float64
    if it came as float64 (the factorisations of SparseGPT and ALPS are float64 and lose nothing
    then), else in float32.
    """

    def to_w_device(x, name):
        return as_real_tensor(x, name).to(W.device)

    H = check_hessian(H, W.shape[1], convert=to_w_device)
    if not H.is_floating_point():
        H = H.to(COMPUTE_DTYPE)
    H = rescaled(H)
    if H.dtype in (torch.float16, torch.bfloat16):
        H = H.to(COMPUTE_DTYPE)
    # a float64 H whose off-diagonal dwarfs its diagonal: cannot be PSD (a float32 H, checked finite, cannot)
    if H.dtype == torch.float64 and float(H.abs().max()) > FLOAT32_MAX:
        raise ValueError("H has off-diagonal entries beyond float32's range next to its diagonal; it is not a PSD "
                         "matrix sum_t x_t x_t^T")
    return H if H.dtype == torch.float64 else H.to(COMPUTE_DTYPE)


def rescaled(H: torch.Tensor) -> torch.Tensor:
    """H times the power of four 4^-k that brings its mean diagonal into [2^-64, 2^64], or H itself (INV-1)."""
    mean_diag = float(torch.diagonal(H).to(torch.float64).mean())
    if mean_diag <= 0 or 2.0**-64 <= mean_diag <= 2.0**64:
        return H
    k = round(math.log(mean_diag, 4))
    return H.to(torch.float64).mul(4.0 ** -k).to(H.dtype) if H.dtype != torch.float64 else H * 4.0 ** -k


def check_result(weight: torch.Tensor, W: torch.Tensor, method: str) -> torch.Tensor:
    """Post-condition: a finite result, or FloatingPointError saying which input is out of range for
    float32 (REL): rac.fast never returns an Inf or a NaN."""
    if not all_finite(weight):
        raise FloatingPointError(
            f"rac.fast {method}: the float32 computation overflowed for W with entries up to "
            f"{float(W.abs().max()):.3g} (float32 holds up to {FLOAT32_MAX:.3g}, and the updates can grow a "
            "weight): rescale W or use rac.reference (float64)"
        )
    return weight


def output_dtype(W: torch.Tensor) -> torch.dtype:
    """Results come back in W's dtype (float32 for an integer W, which cannot hold updated weights)."""
    return W.dtype if W.is_floating_point() else COMPUTE_DTYPE


__all__ = ["COMPUTE_DTYPE", "check_result", "checked_hessian", "checked_weight", "output_dtype", "rescaled"]
