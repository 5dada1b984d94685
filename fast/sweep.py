"""SparseGPT's in-panel column sweep: the latency-bound part, isolated so it can be swapped and measured.

Layout: everything is transposed, WT = W^T (in, out), so a column of W is a
contiguous row of WT and each OBS update of the rows below is one BLAS ``ger``
(``addr_``) on contiguous memory.

``sweep_chunk`` fixes columns j0 .. j1-1 of a panel one by one (SGPT-6):

    e_i    = (pruned part of w_i) / U_ii          the OBS error of column i
    w_k   -= U_ik e_i        for i < k < j1       only inside the chunk (rank 1)
    w_i    = kept part of w_i

and for N:M chooses the mask of each M-group at its first column from the
weights updated so far (SGPT-5). Columns past the chunk receive the chunk's
errors later in one GEMM (``sweep_panel``), and columns past the panel in one
GEMM per panel (fast/sparsegpt.py): that is the lazy batching of SGPT-7, a
reordering of the same sums.

Measured effect of the chunking on this CPU: docs/benchmarks.md
(`bench_sweep_variants`).
"""

from __future__ import annotations

import torch

from rac.reference.contract.patterns import Pattern
from rac.reference.masks import prune_lowest_per_row


#: Up to this M, N:M groups are ranked by comparisons (M^2 per output), above it by a stable sort.
PAIRWISE_MAX_M = 16
#: Float32 groups of up to this many columns are ranked by ``_rank_keys``, wider ones by ``_rank_loop``: the
#: keys' (M, M, columns) comparison outgrows the cache. M = 4, 1 thread, this project's CPU (2-core AMD EPYC,
#: 2026-12-02, a session script, each of 2 runs): 4,096 columns 63-64 vs 78 us, 8,192 119 vs 125-134 us,
#: 16,384 243-247 vs 207-210 us, 262,144 (Wanda's 2:4 groups of a 1024 x 1024 layer, all at once) 25.6 ms vs
#: 2.8 ms.
KEYS_MAX_COLUMNS = 8192


def keep_highest(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Keep-mask of scores (M, out): the ``kept`` highest of each column; ties: lower index pruned first (TIE-1).

    Entry i is pruned iff fewer than M - kept entries are "below" it, where j is below i
    when s_j < s_i, or s_j == s_i and j < i: exactly the order of a stable ascending sort.
    Two schedules of the same comparisons: one broadcast (M, M, out) on a GPU (few kernels),
    a loop over j on a CPU (less memory traffic); on a CPU the loop is the faster of the two and
    both beat a stable sort (docs/benchmarks.md, probe_micro.py's figures).
    """
    m = scores.shape[0]
    if m > PAIRWISE_MAX_M:
        return prune_lowest_per_row(scores.T, m - kept).T
    if scores.device.type == "cpu":
        if scores.dtype == torch.float32 and scores.shape[1] <= KEYS_MAX_COLUMNS:
            return _rank_keys(scores) >= m - kept
        return _rank_loop(scores) >= m - kept
    return _rank_broadcast(scores) >= m - kept


def _rank_keys(scores: torch.Tensor) -> torch.Tensor:
    """The rank of ``_rank_loop`` for float32 scores >= 0 (no -0.0, no NaN: squares over U_jj^2, dead set to +0):
    such floats order as their int32 bit patterns, so key = bits * M + row is unique per column and orders
    exactly as "s_j < s_i, or s_j == s_i and j < i"; rank_i = #{j: key_j < key_i}, one broadcast compare.
    Same ranks as the loop (a mutant that counts a key against itself fails NM-1 in the layer suite); per
    4 x 4096 group on this CPU (2-core AMD EPYC, 1 thread,
    2026-12-02, a session script interleaving the two 200 times): 111 us instead of the loop's 145-149 us,
    about 35 ms of a 4096-input 2:4 layer's 1,024 groups."""
    m = scores.shape[0]
    row = torch.arange(m, dtype=torch.int64, device=scores.device).unsqueeze(1)
    key = scores.view(torch.int32).to(torch.int64).mul_(m).add_(row)
    return (key.unsqueeze(0) < key.unsqueeze(1)).sum(1)


def _rank_loop(scores: torch.Tensor) -> torch.Tensor:
    m = scores.shape[0]
    rank = torch.zeros_like(scores, dtype=torch.int8)
    for j in range(m):
        rank += scores[j] < scores
        if j + 1 < m:
            rank[j + 1 :] += scores[j] == scores[j + 1 :]
    return rank


def _rank_broadcast(scores: torch.Tensor) -> torch.Tensor:
    m = scores.shape[0]
    earlier = torch.ones(m, m, dtype=torch.bool, device=scores.device).tril(-1).unsqueeze(2)  # [i, j]: j < i
    s_i, s_j = scores.unsqueeze(1), scores.unsqueeze(0)
    return ((s_j < s_i) | ((s_j == s_i) & earlier)).sum(dim=1)


def nm_keep_group(
    WT_group: torch.Tensor, d_group: torch.Tensor, dead_group: torch.Tensor, pattern: Pattern
) -> torch.Tensor:
    """Keep-mask (M, out) of one M-group: the N highest w^2 / U_jj^2 of every output (SGPT-5, TIE-1)."""
    scores = (WT_group.square() / d_group.square().unsqueeze(1)).masked_fill(dead_group.unsqueeze(1), 0.0)
    return keep_highest(scores, pattern.n)


def sweep_chunk(WT, U, keepT, errT, j0: int, j1: int, d, dead, nm: Pattern | None, pruneF=None) -> None:
    """Fix columns j0 .. j1-1 of the panel in place (module docstring); errors go to errT[j0:j1].

    WT, keepT, errT: (panel, out) rows of the panel; U: (panel, panel) block of U; d = diag(U);
    nm: the N:M pattern (groups aligned at multiples of M in panel coordinates) or None (mask given);
    pruneF: 1.0 where pruned, 0.0 where kept, in WT's dtype (filled here for N:M groups).
    Masks act by multiplying with 0/1 (exact for finite weights), a quarter of the time of a bool
    ``masked_fill`` per column (docs/benchmarks.md, probe_micro.py's figures).
    """
    for i in range(j0, j1):
        if nm is not None and i % nm.m == 0:
            g = slice(i, i + nm.m)
            keepT[g] = nm_keep_group(WT[g], d[g], dead[g], nm)
            torch.logical_not(keepT[g], out=pruneF[g])
        e = errT[i]
        torch.mul(WT[i], pruneF[i], out=e)  # the pruned part of column i ...
        e.div_(U[i, i])  # ... over U_ii: the OBS error
        if i + 1 < j1:
            WT[i + 1 : j1].addr_(U[i, i + 1 : j1], e, alpha=-1.0)
        WT[i].sub_(WT[i] * pruneF[i])  # w_i = kept part (pruned entries become exactly 0)


def sweep_panel(WT, U, keepT, d, dead, nm: Pattern | None, chunk: int, chunk_fn=sweep_chunk, work=None) -> torch.Tensor:
    """Sweep one panel (rows of WT = columns of W) in chunks of ``chunk`` columns; returns its errors errT.

    Inside a chunk: ``chunk_fn``'s column loop (rank-1 updates over at most ``chunk`` columns).
    After a chunk: one GEMM applies its errors to the rest of the panel. ``chunk`` >= the
    panel width gives the one-level sweep of the original code (rank-1 updates over the whole
    panel). For N:M, ``chunk`` must be a multiple of M.

    work: optional (errT, pruneF) buffers of at least WT's shape and dtype, reused from panel to
    panel by the caller (``panel_buffers``); errT is returned as a view of the first.
    """
    width = WT.shape[0]
    if work is None:
        errT, pruneF = torch.empty_like(WT), torch.empty_like(WT)
    else:
        errT, pruneF = (buf[:width] for buf in work)
    torch.logical_not(keepT, out=pruneF)
    for j0 in range(0, width, chunk):
        j1 = min(j0 + chunk, width)
        chunk_fn(WT, U, keepT, errT, j0, j1, d, dead, nm, pruneF)
        if j1 < width:
            WT[j1:].addmm_(U[j0:j1, j1:].T, errT[j0:j1], alpha=-1.0)
    return errT


def panel_buffers(width: int, out: int, dtype, device) -> tuple:
    """(errT, pruneF) of ``sweep_panel`` for panels up to ``width`` columns, allocated once per sweep.

    A panel-sized buffer allocated per panel (2 MiB at 4096 outputs) sits above glibc's mmap
    threshold, so each allocation was fresh memory and its first writes page faults: in the torch
    profiler of one 4096 x 4096 2:4 call (1 thread, 2026-12-02) the 32 float copies into new pruneF
    buffers took 147 ms. One pair per sweep is written once and reused.
    """
    return torch.empty(width, out, dtype=dtype, device=device), torch.empty(width, out, dtype=dtype, device=device)
