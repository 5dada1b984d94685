"""SparseGPT's in-panel column loop on a CPU: ``sweep_chunk``'s arithmetic on numpy views of the same memory.

On a CPU the column loop is latency-bound: each column is about five small operations on
vectors of ``out`` entries (fast/sweep.py), and a torch operation costs several microseconds
of dispatch before it computes anything. The same operations through numpy, on views of the
same tensors (``Tensor.numpy()`` shares memory, nothing is copied) cost less per call; the
rank-1 update stays torch's ``addr_`` (one BLAS ``ger``). The 2:4 mask of a group is chosen by a
min/max network on unique keys instead of the pairwise ranking loop. (scipy's ``sger`` on the same
memory was as fast alone, but its OpenBLAS starts its own threads for a ger of more than about
9,000 entries, which then compete with torch's for the cores: a 4096 x 4096 2:4 layer's column
loop took 12 s instead of 0.4 s at 1 torch thread on 2 cores.)

Same arithmetic, same order, same results: every entry is one IEEE operation with the same
operands as in ``sweep_chunk`` (multiply by the 0/1 pruned indicator, divide by U_ii, the same
``addr_``, subtract the pruned part), and the 2:4 keys order the scores exactly as TIE-1's stable order.
FAST-11 checks that the results are bitwise ``sweep_chunk``'s, float32 and float64, unstructured
and N:M. ``fast.sparsegpt.in_panel_schedule`` runs it on CPU tensors where numba is not installed
(with numba: the compiled loop of fast/numba_sweep.py; ``RAC_FAST_SWEEP=cpu`` forces this one,
``eager`` the torch loop).

Measured (a session script, 2026-12-02, 2-core AMD EPYC, 1 thread, load 1.4, 32-column chunk of a
2:4 panel with 4096 outputs, best of 20, three interleaved rounds): 3.6-4.0 ms against the torch
loop's 7.3-8.0 ms (with scipy's ger; with torch's addr_ and a GEMM between chunks, as in a sweep,
7.4-8.0 ms against 11.0-12.7 ms). What it changes for whole layers: docs/benchmarks.md.
"""

from __future__ import annotations

import numpy as np
import torch
from .sweep import nm_keep_group, sweep_chunk


def usable(*tensors) -> bool:
    """Whether numpy can view these tensors in place: CPU, float32 or float64 (bool for masks), no autograd."""
    return all(t.device.type == "cpu" and not t.requires_grad and
               t.dtype in (torch.float32, torch.float64, torch.bool) for t in tensors)


def keep_2_of_4(W: np.ndarray, d2: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Keep-mask (4, out) of one 2:4 group of float32 weights: the 2 highest w^2 / U_jj^2 of each output (SGPT-5),
    ties pruned lower index first (TIE-1), exactly as ``sweep.keep_highest``.

    Scores are >= 0 with no -0.0 and no NaN, so they order as their int32 bit patterns; key = bits * 4 + row
    is unique and orders as "lower score, or equal score and lower row". An entry is kept iff its key is
    above the second smallest of its column's four, found by a min/max network (6 element-wise ops).
    """
    scores = np.square(W) / d2[:, None]
    if dead.any():
        scores[dead] = 0.0
    key = scores.view(np.int32).astype(np.int64) * 4 + np.arange(4, dtype=np.int64)[:, None]
    lo01, hi01 = np.minimum(key[0], key[1]), np.maximum(key[0], key[1])
    lo23, hi23 = np.minimum(key[2], key[3]), np.maximum(key[2], key[3])
    second = np.minimum(np.maximum(lo01, lo23), np.minimum(hi01, hi23))
    return key > second


def sweep_chunk_cpu(WT, U, keepT, errT, j0: int, j1: int, d, dead, nm, pruneF=None) -> None:
    """``fast.sweep.sweep_chunk`` (same arguments, same in-place results) with numpy on the tensors' memory.

    Falls back to ``sweep_chunk`` where numpy cannot view the tensors in place."""
    if not (usable(WT, U, keepT, errT, d, dead, pruneF) and U.dtype == WT.dtype):
        return sweep_chunk(WT, U, keepT, errT, j0, j1, d, dead, nm, pruneF)
    W, Un, E, P, K = WT.numpy(), U.numpy(), errT.numpy(), pruneF.numpy(), keepT.numpy()
    dn, deadn = d.numpy(), dead.numpy()
    two_of_four = nm is not None and (nm.n, nm.m) == (2, 4) and W.dtype == np.float32
    for i in range(j0, j1):
        if nm is not None and i % nm.m == 0:
            g = slice(i, i + nm.m)
            if two_of_four:
                K[g] = keep_2_of_4(W[g], np.square(dn[g]), deadn[g])
            else:
                keepT[g] = nm_keep_group(WT[g], d[g], dead[g], nm)
            np.logical_not(K[g], out=P[g])
        e = E[i]
        np.multiply(W[i], P[i], out=e)  # the pruned part of column i ...
        e /= Un[i, i]  # ... over U_ii: the OBS error
        if i + 1 < j1:
            WT[i + 1:j1].addr_(U[i, i + 1:j1], errT[i], alpha=-1.0)  # as sweep_chunk: the rank-1 update
        W[i] -= W[i] * P[i]  # w_i = kept part (pruned entries become exactly 0)
