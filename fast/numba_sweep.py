"""SparseGPT's in-panel column loop compiled for a CPU with numba (optional; the ``cpu-kernel`` extra).

The numpy loop of fast/cpu_sweep.py still issues about five small operations per column from Python,
one after the other on one core: on a 4096 x 4096 layer that is 4,096 columns x ~13 us (unstructured)
to ~27 us (2:4, with the group ranking), all of it single-threaded while a second core waits. As in
fast/triton_sweep.py, the outputs (rows of W) are independent inside a chunk once the mask is known,
and N:M masks are chosen per output too, so the loop can own a slab of outputs and run every column
of the chunk on it:

    for each slab of SLAB outputs (torch's thread count of workers, each a contiguous run of slabs):
        for i in j0 .. j1-1:
            N:M, first column of a group: scores s_j = w_j^2 / U_jj^2 (0 where dead), kept iff
                #{k < j: s_k <= s_j} + #{k > j: s_k < s_j} >= M - N  (TIE-1's stable order)
            e_i = (w_i * pruned_i) / U_ii;   w_k -= U_ik e_i  (i < k < j1);   w_i -= w_i * pruned_i

the same operations as ``sweep.sweep_chunk`` with the same operands, in the same order for each entry;
the chunk GEMMs and panel GEMMs stay torch's. The rank-1 update is one fused multiply-add per entry
(LLVM's ``contract``), as the BLAS ``ger`` behind ``addr_`` computes it on full vectors; where that
``ger`` finishes a row with an unfused tail (MKL, rows not a multiple of its vector width) the two
differ in the last bit. So the result is the eager loop's to rounding, not bitwise: FAST-14 holds it
to FAST-10's rule (masks equal, weights within FAST-1's bound), and checks that the slab size, hence
the thread count, changes no bit.

Measured: ``python conformance/benchmarks/probe_loop.py`` (one 128-column panel of 4096 outputs in 32-column
chunks, the two loops alternating, best of 20, times 32 for a 4096-input layer; 2-core AMD EPYC, torch
2.13.0+cpu, 2026-12-02 18:54 UTC, commit dec8893, load 0.1): 2:4 97 -> 31 ms at 1 thread and 96 -> 30 ms at 2;
unstructured 59 -> 30 ms and 74 -> 36 ms; masks equal, weights bitwise equal at 4096 outputs. A session script
at 17:55 UTC gave 94 -> 25, 89 -> 21, 55 -> 18 and 50 -> 17 ms. What it does to whole layers:
docs/benchmarks.md ("Fifth round").

Used by ``fast.sparsegpt.in_panel_schedule`` on CPU tensors when numba imports (``RAC_FAST_SWEEP=cpu``
forces the numpy loop, ``numba`` this one). The kernel is compiled on first use (a few seconds, cached
on disk by numba where it can write); if compiling fails, one RuntimeWarning and the numpy loop.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import os

import torch

from .cpu_sweep import sweep_chunk_cpu, usable
from .sweep import PAIRWISE_MAX_M

#: Outputs per parallel work item: 256 float32 outputs x a 32-column chunk is 32 KiB, an L1/L2-sized tile.
SLAB = 256


def available() -> bool:
    """Whether numba can be imported (without importing it)."""
    return importlib.util.find_spec("numba") is not None


@functools.lru_cache(maxsize=None)
def kernel():
    """The compiled chunk kernel (numba is imported here, on first use, not with rac.fast)."""
    import numba
    import numpy as np

    @numba.njit(fastmath={"contract"}, cache=True, nogil=True)
    def chunk_kernel(W, U, K, E, P, j0, j1, d, dead, nm_n, nm_m, slab, s0, s1):
        # W, E, P: (panel, out) C-contiguous; K: bool (panel, out); U: (panel, panel); d = diag(U); dead: bool;
        # slabs s0 .. s1-1 of ``slab`` outputs each.
        # Every row is taken whole (W[i]) and then sliced, so each inner loop runs over a contiguous 1-D
        # array from index 0: LLVM vectorises it (a 2-D slice W[:, o0:o1] has unknown strides and did not).
        out = W.shape[1]
        for s in range(s0, s1):
            o0 = s * slab
            o1 = min(o0 + slab, out)
            m = o1 - o0
            S = np.empty((max(nm_m, 1), m), dtype=W.dtype)
            R = np.empty(m, dtype=np.int32)
            for i in range(j0, j1):
                if nm_m > 0 and i % nm_m == 0:
                    for j in range(nm_m):  # the group's scores, from the weights updated so far (SGPT-5)
                        wj = W[i + j][o0:o1]
                        dd = d[i + j] * d[i + j]
                        sj = S[j]
                        if dead[i + j]:
                            sj[:] = 0.0
                        else:
                            for o in range(m):
                                sj[o] = (wj[o] * wj[o]) / dd
                    for j in range(nm_m):  # rank in TIE-1's order; keep the N highest
                        sj = S[j]
                        R[:] = 0
                        for k in range(nm_m):
                            sk = S[k]
                            if k < j:
                                for o in range(m):
                                    R[o] += sk[o] <= sj[o]
                            else:
                                for o in range(m):
                                    R[o] += sk[o] < sj[o]
                        kj = K[i + j][o0:o1]
                        pj = P[i + j][o0:o1]
                        for o in range(m):
                            keep = R[o] >= nm_m - nm_n
                            kj[o] = keep
                            pj[o] = 0.0 if keep else 1.0
                uii = U[i, i]
                wi = W[i][o0:o1]
                ei = E[i][o0:o1]
                pi = P[i][o0:o1]
                for o in range(m):
                    ei[o] = (wi[o] * pi[o]) / uii  # the OBS error of column i
                for k in range(i + 1, j1):
                    uik = U[i, k]
                    wk = W[k][o0:o1]
                    for o in range(m):
                        wk[o] = wk[o] - uik * ei[o]  # the rank-1 update, inside the chunk
                for o in range(m):
                    wi[o] = wi[o] - wi[o] * pi[o]  # w_i = kept part (pruned entries become exactly 0)

    return chunk_kernel


_FAILED: list = []
_POOL: list = []


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """Worker threads for the kernel (it releases the GIL: ``nogil``), made once. Python threads rather than
    numba's ``parallel``: numba's OpenMP layer is a second OpenMP runtime next to torch's, whose idle threads
    spin while torch's GEMM runs right after each chunk, and its workqueue layer aborts on concurrent calls."""
    if not _POOL:
        _POOL.append(concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                                           thread_name_prefix="rac-numba-sweep"))
    return _POOL[0]


def sweep_chunk_numba(WT, U, keepT, errT, j0: int, j1: int, d, dead, nm, pruneF=None, slab: int = SLAB) -> None:
    """``fast.sweep.sweep_chunk`` (same arguments, same in-place results to rounding) as one compiled call.

    Falls back to the numpy loop where numba cannot run it: tensors numpy cannot view in place, rows
    that are not contiguous, N:M groups wider than PAIRWISE_MAX_M, or a kernel that failed to compile."""
    if (_FAILED or pruneF is None or not (usable(WT, U, keepT, errT, d, dead, pruneF) and U.dtype == WT.dtype)
            or not all(t.is_contiguous() for t in (WT, keepT, errT, pruneF))
            or (nm is not None and nm.m > PAIRWISE_MAX_M)):
        return sweep_chunk_cpu(WT, U, keepT, errT, j0, j1, d, dead, nm, pruneF)
    try:
        fn = kernel()
        args = (WT.numpy(), U.numpy(), keepT.numpy(), errT.numpy(), pruneF.numpy(), j0, j1, d.numpy(), dead.numpy(),
                nm.n if nm is not None else 0, nm.m if nm is not None else 0, slab)
        fn(*args, 0, 0)  # compiles (first call of these dtypes and layouts) here, so an error is raised here
        slabs = -(-WT.shape[1] // slab)
        workers = max(1, min(torch.get_num_threads(), slabs))
        cuts = [slabs * t // workers for t in range(workers + 1)]
        others = [_pool().submit(fn, *args, cuts[t], cuts[t + 1]) for t in range(1, workers)]
        fn(*args, cuts[0], cuts[1])  # the first run of slabs in this thread
        for job in others:
            job.result()
    except Exception as exc:  # numba missing or a compile error: raised at the first call, before anything is written
        import warnings

        _FAILED.append(exc)
        warnings.warn(f"rac.fast: the numba column loop failed ({exc!r}); using the numpy loop", RuntimeWarning,
                      stacklevel=2)
        sweep_chunk_cpu(WT, U, keepT, errT, j0, j1, d, dead, nm, pruneF)
