"""Where rac.fast may use reduced-precision matrix units, and where it must not.

The policy is written in docs/spec.md ("Fast implementation and precision
policy", PREC-*). In code it comes down to two rules:

- ``full_fp32()``: every float32 matrix product of the pruners (SparseGPT's
  lazy updates, ALPS's ADMM products, H from float32 activations) runs at full
  float32 precision, whatever the caller set with
  ``torch.set_float32_matmul_precision`` (TF32 on CUDA, bf16 passes on CPU).
  The float32 sweep costs out * in^2 FLOPs: on an H100's non-tensor float32
  units (67 TFLOP/s, datasheet) about 1 ms for a 4096 x 4096 layer (projected, not
  measured), so TF32
  would save little and cost 3 decimal digits per update.
- ``mm_fp32_out(a, b)``: the one place bf16/fp16 matrix units are allowed:
  activations that are already bf16/fp16 are multiplied in their own dtype
  with float32 output and accumulation (their products are exact in float32),
  where the device offers it (CUDA ``torch.mm(..., out_dtype=float32)``);
  elsewhere they are cast to float32 first, which is exact and gives the same
  products.
"""

from __future__ import annotations

import contextlib

import torch

_HALF = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def full_fp32():
    """Run float32 matmuls at full precision inside the block (restores the caller's setting)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _native_half_mm(a: torch.Tensor, b: torch.Tensor):
    """a @ b with half inputs and float32 output in one GEMM, or None where the backend has no such kernel."""
    if a.device.type != "cuda":
        return None
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):  # older torch, or a backend without mm.dtype
        return None


def mm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in float32; half inputs use half matrix units where possible (PREC-1)."""
    if a.dtype in _HALF and b.dtype == a.dtype:
        out = _native_half_mm(a, b)
        if out is not None:
            return out
    with full_fp32():
        return torch.mm(a.to(torch.float32), b.to(torch.float32))
