"""Input checks of ``rac.fast``: the contract's checks, run where the tensors live.

Every error a user can see comes from ``rac.reference.contract.validate`` (same type,
same message, GEN-5); the only difference is that W and H are checked in their
own dtype and on their own device instead of being copied to float64 on the
CPU first. A GPU caller keeps its tensors on the GPU; H is moved to W's device.
"""

from __future__ import annotations

import torch

from rac.reference.contract.validate import as_real_tensor, check_hessian, check_weight

#: The dtype every fast pruner computes in (docs/spec.md, "Fast implementation and precision policy").
COMPUTE_DTYPE = torch.float32


def checked_weight(W, name: str = "W") -> torch.Tensor:
    """W validated as the reference validates it (GEN-5), left in its own dtype and device."""
    return check_weight(W, name, convert=as_real_tensor)


def checked_hessian(H, W: torch.Tensor) -> torch.Tensor:
    """H validated as the reference validates it (GEN-5/6), on W's device, symmetrised.

    Checked in H's own dtype before anything is rounded. Returned in float64 if it came
    as float64 (the factorisations of SparseGPT and ALPS are float64 and lose nothing
    then), else in float32; finite in float32 either way (the sweeps are float32).
    """

    def to_w_device(x, name):
        return as_real_tensor(x, name).to(W.device)

    H = check_hessian(H, W.shape[1], convert=to_w_device)
    if H.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return H.to(COMPUTE_DTYPE)  # finite (checked), so within float32's range: no second pass
    if float(H.abs().max()) > torch.finfo(COMPUTE_DTYPE).max:  # float64 or integer entries beyond 3.4e38
        raise ValueError("H must be finite in float32 (rac.fast computes in float32); it has entries beyond 3.4e38")
    H = H if H.dtype == torch.float64 else H.to(COMPUTE_DTYPE)
    return H


def output_dtype(W: torch.Tensor) -> torch.dtype:
    """Results come back in W's dtype (float32 for an integer W, which cannot hold updated weights)."""
    return W.dtype if W.is_floating_point() else COMPUTE_DTYPE


__all__ = ["COMPUTE_DTYPE", "checked_hessian", "checked_weight", "output_dtype"]
