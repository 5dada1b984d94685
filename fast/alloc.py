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

import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys
import threading

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


# --- freed memory kept by the C heap for the duration of a call ------------------------------------------------
#
# glibc's malloc serves a request larger than its mmap threshold (dynamic, at most 32 MiB on 64-bit) with a
# fresh mmap and returns it to the kernel with munmap when freed. A decoder block's activations on a CPU
# (8,192 tokens x 2,816 float32 = 92 MB) are all above it: every op's output is fresh memory, and its first
# write takes one page fault per 4 KiB page, on every op of every chunk. Measured on this project's CPU
# (2-core AMD EPYC, 1 thread, 2026-12-02, glibc 2.36, session scripts): SiLU of an 8,192 x 2,816 float32
# tensor 46-50 ms with 22,530 page faults per call -> 6-7 ms with none once the heap holds the memory; one
# Llama block (1024/2816) forward over 8,192 tokens 2.64-2.87 s -> 2.11-2.51 s (calls 2-6 of two runs each).

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: while retaining: every block's activations from the heap, and the heap never trimmed
_RETAIN = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: (1 << 31) - 1}
#: afterwards: the values glibc's own dynamic rule reaches once a program has freed a mapped chunk of 32 MiB
#: (threshold = that size, at most 32 MiB on 64-bit; trim threshold = twice the threshold). Setting either
#: turns glibc's dynamic rule off for the rest of the process, so these stay fixed.
_AFTER = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}
_LIBC: list = []
_DEPTH = [0]
_LOCK = threading.Lock()


#: environment variables by which a user tunes glibc's malloc; where one is set, the process's thresholds are the
#: user's, and ``retain_freed`` leaves them alone
USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def user_tuned_malloc(environ=None) -> bool:
    """True where the environment (default ``os.environ``) tunes glibc's malloc (one of USER_TUNING, or a
    glibc.malloc tunable)."""
    environ = os.environ if environ is None else environ
    return any(k in environ for k in USER_TUNING) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _glibc():
    """(mallopt, malloc_trim) of glibc, or None (another C library or OS, ``RAC_FAST_RETAIN_FREED=0``, or a
    malloc the user tuned: ``user_tuned_malloc``). Looked up once."""
    if not _LIBC:
        fns = None
        if (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
                and os.environ.get("RAC_FAST_RETAIN_FREED", "1") != "0" and not user_tuned_malloc()):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt, trim = libc.mallopt, libc.malloc_trim
                mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
                fns = (mallopt, trim)
            except (OSError, AttributeError):
                fns = None
        _LIBC.append(fns)
    return _LIBC[0]


def retains(device) -> bool:
    """Whether ``retain_freed(device)`` acts (a CPU device with glibc, not switched off)."""
    return torch.device(device).type == "cpu" and _glibc() is not None


@contextlib.contextmanager
def retain_freed(device="cpu"):
    """For the duration, glibc keeps freed memory in its heap for the next allocation instead of returning it
    to the kernel (see above); afterwards the thresholds are set to ``_AFTER`` and ``malloc_trim(0)`` hands
    the heap's free memory back. A no-op for a CUDA device (activations live in torch's caching allocator),
    outside glibc, with ``RAC_FAST_RETAIN_FREED=0``, and where the user tuned malloc through the environment
    (``user_tuned_malloc``: the thresholds are theirs). Nested and concurrent uses set and restore once.
    Changes no result: the same tensors in memory that was mapped before."""
    fns = _glibc() if retains(device) else None
    if fns is None:
        yield
        return
    mallopt, trim = fns
    with _LOCK:
        _DEPTH[0] += 1
        if _DEPTH[0] == 1:
            for param, value in _RETAIN.items():
                mallopt(param, value)
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                for param, value in _AFTER.items():
                    mallopt(param, value)
                trim(0)
