"""Argument checks shared by ``rac.reference``, ``rac.fast`` and the application (spec GEN-5).

Each check raises ``TypeError`` (wrong kind of object) or ``ValueError``
(right kind, wrong value) and names the argument and the expected form, so a
user sees at once what to change. Nothing is modified in place.

Checks of plain values (numbers, choices) live in ``values.py``, which needs no torch, and
are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .values import (  # noqa: F401  (re-exported: one import for every check)
    check_choice,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_sparsity,
    one_of,
)

#: H may come from float32 accumulation; a transposed or wrong matrix is
#: asymmetric at O(1), rounding in two summation orders at ~N * eps32. We
#: accept |H - H^T| <= SYMMETRY_RTOL * max|H| (spec GEN-6) and symmetrise.
SYMMETRY_RTOL = 1e-5


def as_real_tensor(x, name: str) -> torch.Tensor:
    """``x`` (torch tensor or numpy array) as a torch tensor of real numbers, keeping its dtype and device.

    The type checks of GEN-5 without a copy: ``rac.fast`` validates tensors where they live (a GPU)
    with the same checks and messages as the reference.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x, copy=True))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real floating-point numbers, got dtype {x.dtype}")
    return x.detach()


def as_float64(x, name: str) -> torch.Tensor:
    """Return ``x`` (torch tensor or numpy array) as a new float64 CPU tensor."""
    return as_real_tensor(x, name).to(device="cpu", dtype=torch.float64).clone()


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite, by one reduction (aminmax: a NaN propagates to both ends, an Inf
    shows at one) instead of isfinite's bool copy of x and its .all(). check_weight on a 4096 x 4096
    float32 W, 1 thread, 7 rounds interleaved with the previous code in one session (load 1.7-3.1,
    2026-12-02): 0.08-0.11 s -> 0.003-0.004 s."""
    if not x.is_floating_point() or x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def check_finite(x: torch.Tensor, name: str) -> None:
    if all_finite(x):  # the index is looked up only when something is wrong
        return
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite; found NaN or Inf at index {tuple(bad)}")


def check_weight(W, name: str = "W", convert=as_float64) -> torch.Tensor:
    """W: the layer weight, shape (out, in) as in torch.nn.Linear (paper: W_l in R^{p x d}).

    ``convert(x, name)`` makes the tensor that is checked and returned (default: a float64 CPU copy).
    """
    W = convert(W, name)
    if W.ndim != 2 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D matrix (out_features, in_features), got shape {tuple(W.shape)}"
        )
    check_finite(W, name)
    return W


def check_hessian(H, in_features: int, name: str = "H", convert=as_float64) -> torch.Tensor:
    """H: symmetric positive semi-definite (in, in) matrix sum_t w_t x_t x_t^T (``convert`` as in check_weight)."""
    H = convert(H, name)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix, got shape {tuple(H.shape)}")
    if H.shape[0] != in_features:
        raise ValueError(
            f"{name} must have shape ({in_features}, {in_features}) to match W's in_features={in_features}, "
            f"got {tuple(H.shape)}"
        )
    scale = _abs_max(H)  # NaN and Inf propagate through aminmax
    if not math.isfinite(scale):
        check_finite(H, name)  # raises, naming the first bad index
    # One transposed copy serves the check and the symmetrisation: reading H.T in place is a
    # cache-hostile strided pass, and there were two; the copy halves this check's time at 4096
    # inputs (docs/benchmarks.md, "Wanda and magnitude after f49757f"). The maxima are aminmax
    # reductions (no |.| copies) and the symmetrised H is built in the transposed copy: (H + H^T) / 2
    # bitwise, two n x n allocations fewer. 4096 x 4096 float32 H, as check_finite above: 0.19-0.28 s ->
    # 0.08-0.13 s (results bitwise equal, float32 and float64).
    HT = H.T.contiguous()
    asym = _abs_max_difference(H, HT)
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{name} must be symmetric: max |H - H^T| = {asym:.3g} exceeds {SYMMETRY_RTOL:g} * max|H| = "
            f"{SYMMETRY_RTOL * scale:.3g} (was it built as X^T X with X of the wrong layout?)"
        )
    if bool((torch.diagonal(H) < 0).any()):
        raise ValueError(f"{name} must be positive semi-definite; its diagonal has negative entries")
    if not HT.is_floating_point():
        return (H + HT) / 2
    return HT.add_(H).mul_(0.5)  # = (H + H^T) / 2 exactly: a sum's halving by 0.5 rounds as dividing by 2


def _abs_max(x: torch.Tensor) -> float:
    """max |x| by one aminmax reduction (NaN if x holds a NaN, Inf if an Inf)."""
    if x.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(x)
    return max(-float(lo), float(hi)) if not (math.isnan(float(lo)) or math.isnan(float(hi))) else math.nan


def _abs_max_difference(A: torch.Tensor, B: torch.Tensor, rows: int = 256) -> float:
    """max |A - B| of finite A and B (an overflow to Inf shows as Inf), ``rows`` rows at a time: the difference
    never exists as a whole n x n tensor, whose fresh memory's first writes (page faults) cost more than the
    subtraction. The same maximum in any order. 4096 x 4096 float32: ``probe_micro.py`` (``asym``)."""
    return max((_abs_max(torch.sub(A[r0:r0 + rows], B[r0:r0 + rows])) for r0 in range(0, A.shape[0], rows)),
               default=0.0)


def check_mask(mask, shape, name: str = "mask") -> torch.Tensor:
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.array(mask, copy=True))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor or numpy.ndarray, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype bool (True = kept), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have the shape of W {tuple(shape)}, got {tuple(mask.shape)}")
    return mask.to("cpu").clone()
