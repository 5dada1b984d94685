"""Large CPU buffers backed by transparent huge pages, where Linux offers them on request.

A large tensor is fresh memory from the kernel, and its first write takes one page fault per
4 KiB page: for the n x n buffers of a 4096-input SparseGPT layer (the transposed W and its
updates, U's panels, the float64 copy of H, the results) that cost more than the copy that fills
them. On a Linux whose transparent huge pages are in "madvise" mode (the common default, and this
project's machines: /sys/kernel/mm/transparent_hugepage/enabled), ``madvise(MADV_HUGEPAGE)`` on the
buffer before its first write has the kernel map it in 2 MiB pages: 512 times fewer faults.

Measured on this project's CPU (2-core AMD EPYC, 1 thread, 2026-12-02, a session script, best of 5,
two interleaved rounds): filling a fresh 4096 x 4096 float32 buffer by a copy 56-62 ms -> 21-24 ms,
by a transposed copy 90-98 ms -> 48 ms, a float64 copy 117-134 ms -> 35 ms.

Nothing else changes: the memory is the same size, freed the same way, and where the call is not
available (another OS, a CUDA tensor, a small buffer, ``RAC_FAST_HUGEPAGES=0``) ``empty`` is
``torch.empty``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

#: Buffers from this size up are advised (smaller ones may come from the heap, already mapped).
MIN_BYTES = 8 << 20
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADVISE: list = []


def _madvise():
    """libc's madvise, or None where there is none to call; looked up once."""
    if not _MADVISE:
        fn = None
        if sys.platform.startswith("linux") and os.environ.get("RAC_FAST_HUGEPAGES", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                fn = libc.madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _MADVISE.append(fn)
    return _MADVISE[0]


def advise_huge(t: torch.Tensor) -> torch.Tensor:
    """Ask for huge pages over the 2 MiB-aligned interior of a fresh CPU tensor's memory; returns ``t``.

    Advice only: if the kernel refuses (THP "never"), nothing changes."""
    nbytes = t.numel() * t.element_size()
    madvise = _madvise() if t.device.type == "cpu" and nbytes >= MIN_BYTES else None
    if madvise is not None:
        start = -(-t.data_ptr() // _HUGE) * _HUGE
        end = (t.data_ptr() + nbytes) // _HUGE * _HUGE
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)
    return t


def empty(shape, dtype, device=None) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``, on huge pages where available (module docstring)."""
    return advise_huge(torch.empty(shape, dtype=dtype, device=device))


def copy(src: torch.Tensor, dtype=None) -> torch.Tensor:
    """A contiguous copy of ``src`` (any strides, e.g. a transposed view) in ``dtype``, in a fresh ``empty``."""
    return empty(tuple(src.shape), dtype or src.dtype, src.device).copy_(src)
