"""SparseGPT in blocked form (spec SGPT-*): the reference's OBS sweep, reordered into GEMMs.

    U, damp = factor_with_recovery(H, ...)         float64, once per H (fast/factor.py)
    for each panel [a, b) of columns:
        unstructured: at a mask-block start, prune the floor(s * out * width) lowest
                      w^2 / U_jj^2 of the whole block (all rows), SGPT-4
        sweep the panel column by column (fast/sweep.py; N:M masks chosen inside, SGPT-5)
        W[:, b:] -= E_panel @ U[a:b, b:]        one GEMM: the lazy update of SGPT-7

Panels start at every mask-block start (multiples of ``blocksize``) and every
multiple of ``PANEL``, so each mask is chosen from weights that have received
every earlier update, exactly when the reference chooses it. For N:M the
panel is a multiple of M and independent of ``blocksize``, so the result does
not depend on ``blocksize`` at all (SGPT-7 holds bitwise, not only to rounding).

Work is in float32 on W's device, in the transposed layout of fast/sweep.py.
FLOPs: out * in^2 in the panel GEMMs + out * in * CHUNK in the chunk GEMMs and
rank-1 updates; the column loop issues about 5 small kernels per column.
"""

from __future__ import annotations

import os
import warnings

import torch

from rac.reference.contract.patterns import Pattern, pruned_count

from ._validate import output_dtype
from . import alloc
from .factor import left_panel_factor
from .masks import prune_lowest
from .precision import full_fp32
from .sweep import panel_buffers, sweep_chunk, sweep_panel

#: Columns per panel (one trailing GEMM each): the original's 128; measured in docs/benchmarks.md.
PANEL = 128
#: Columns per chunk inside a panel (rank-1 updates stay inside a chunk); measured in docs/benchmarks.md.
CHUNK = 32
#: Columns per outer block of the left-looking sweep (``sparsegpt_sweep_left``): 512 measured best of 128-1024.
OUTER = 512


def dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """H_jj == 0 exactly (DEAD-1)."""
    return torch.diagonal(H) == 0


def obs_scores_t(WT_block: torch.Tensor, d_block: torch.Tensor, dead_block: torch.Tensor) -> torch.Tensor:
    """Scores w_ij^2 / U_jj^2 of a block given transposed (width, out); returned as (out, width). Dead: 0."""
    scores = (WT_block.square() / d_block.square().unsqueeze(1)).masked_fill(dead_block.unsqueeze(1), 0.0)
    return scores.T


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of a flat float32 tensor of non-negative values, exactly as torch.kthvalue.

    Radix select: non-negative IEEE floats order as their bit patterns, so a histogram of the top 16
    bits (torch.bincount) finds the bucket holding the k-th value and torch.kthvalue runs on that
    bucket alone. conformance/benchmarks/probe_micro.py (``kth``) on this CPU (2-core AMD EPYC,
    1 thread, load 6.5, 2026-12-02), 4096 x 128 scores: 0.94 ms instead of kthvalue's 11.3 ms, and
    the whole block mask 2.1 ms instead of 16.7 ms: about 0.45 s of the 32 blocks of a 4096-input
    layer.
    """
    x = x + 0.0  # -0.0 (bit pattern 0x80000000) becomes +0.0
    hi = x.view(torch.int32) >> 16
    counts = torch.cumsum(torch.bincount(hi, minlength=1 << 15), 0)
    bucket = int(torch.searchsorted(counts, torch.tensor(k, dtype=counts.dtype, device=counts.device)))
    before = int(counts[bucket - 1]) if bucket else 0
    return torch.kthvalue(x[hi == bucket], k - before).values


def block_keep_t(scoresT: torch.Tensor, k: int) -> torch.Tensor:
    """prune_lowest(scoresT.T, k).T (fast/masks.py: the k lowest of the block pruned, ties lower flat index of
    the (out, width) layout first) computed on the transposed layout without transposing the scores."""
    if k <= 0 or k >= scoresT.numel() or scoresT.dtype != torch.float32 or scoresT.device.type != "cpu":
        return prune_lowest(scoresT.T.contiguous(), k).T
    threshold = kth_smallest(scoresT.reshape(-1), k)
    below = scoresT < threshold
    tied = scoresT == threshold
    ties_to_prune = k - int(below.sum())
    if int(tied.sum()) == ties_to_prune:  # every tie pruned: the order among them does not matter
        return ~(below | tied)
    tie_rank = torch.cumsum(tied.T.reshape(-1), 0).reshape(tied.T.shape).T  # rank in the (out, width) order
    return ~(below | (tied & (tie_rank <= ties_to_prune)))


def panel_starts(in_features: int, pattern: Pattern, blocksize: int, panel: int) -> list:
    """Column indices where panels start (see the module docstring); the last panel ends at in_features."""
    if pattern.kind == "nm":
        step = pattern.m * -(-panel // pattern.m)
        return list(range(0, in_features, step))
    return sorted(set(range(0, in_features, blocksize)) | set(range(0, in_features, panel)))


_TRITON_FAILED: list = []


def _triton_or_eager(*args) -> None:
    """The Triton panel kernel; if it cannot be built here, say so once (RuntimeWarning) and run the eager loop."""
    from . import triton_sweep

    if not _TRITON_FAILED:
        try:
            return triton_sweep.chunk_fn(*args)
        except Exception as exc:  # a compile or launch error happens before anything is written
            _TRITON_FAILED.append(exc)
            warnings.warn(f"rac.fast: the Triton sweep kernel failed ({exc!r}); using the eager column loop",
                          RuntimeWarning, stacklevel=2)
    return sweep_chunk(*args)


def in_panel_schedule(device: torch.device):
    """(chunk_fn, whole panel?) for the in-panel column loop on ``device``.

    RAC_FAST_SWEEP=auto (default): the Triton kernel on CUDA when Triton is installed (one launch
    per panel, fast/triton_sweep.py); on a CPU the numba kernel when numba is installed (one compiled,
    parallel call per chunk, fast/numba_sweep.py), else the numpy loop of fast/cpu_sweep.py, in chunks
    of CHUNK; else the eager torch loop in chunks of CHUNK. "eager", "cpu", "numba" or "triton" force
    one. All compute the same thing (FAST-10, FAST-11, FAST-14).
    """
    choice = os.environ.get("RAC_FAST_SWEEP", "auto")
    if choice not in ("auto", "eager", "cpu", "numba", "triton"):
        raise ValueError(f"RAC_FAST_SWEEP must be 'auto', 'eager', 'cpu', 'numba' or 'triton', got {choice!r}")
    from . import numba_sweep, triton_sweep

    if choice == "triton" or (choice == "auto" and device.type == "cuda" and triton_sweep.available(device)):
        return _triton_or_eager, True
    if choice == "numba" or (choice == "auto" and device.type == "cpu" and numba_sweep.available()):
        return numba_sweep.sweep_chunk_numba, False
    if choice == "cpu" or (choice == "auto" and device.type == "cpu"):
        from .cpu_sweep import sweep_chunk_cpu

        return sweep_chunk_cpu, False
    return sweep_chunk, False


def sparsegpt_sweep(W32, U, dead, pattern: Pattern, sparsity: float, blocksize: int, *,
                    panel: int = PANEL, chunk: int = CHUNK, chunk_fn=None):
    """Blocked OBS sweep of W32 (out, in) with U (in, in); returns (W_hat, mask) on W32's device, W32's dtype.

    Right-looking: after each panel one GEMM updates every later column (``U[a:b, b:]``). The
    pruner itself runs the left-looking ``sparsegpt_sweep_left``, which needs no whole U; this
    form is kept for tests that hand in a U (FAST-3 runs it with the reference's float64 U).
    ``panel``, ``chunk`` and ``chunk_fn`` change only the order of the arithmetic (tests and
    benchmarks vary them); the defaults are the measured best, and ``in_panel_schedule``'s
    choice of column loop for the device.
    """
    WT = W32.T.contiguous()
    keepT = torch.ones_like(WT, dtype=torch.bool)
    with full_fp32():
        _sweep_t(WT, keepT, U, torch.diagonal(U), dead, pattern, sparsity, blocksize, panel, chunk, chunk_fn)
    return WT.T, keepT.T


def _sweep_t(WT, keepT, U, d, dead, pattern: Pattern, sparsity: float, blocksize: int, panel: int, chunk: int,
             chunk_fn, work=None) -> None:
    """The right-looking sweep in place on WT (in, out) / keepT, U (in, in) with diagonal d (see sparsegpt_sweep).

    Column indices are local to WT; the caller makes block starts local multiples of ``blocksize``.
    work: ``panel_buffers`` for panels up to WT's height (allocated here when None)."""
    if chunk_fn is None:
        chunk_fn, whole_panel = in_panel_schedule(WT.device)
        if whole_panel:
            chunk = panel
    in_features = WT.shape[0]
    if pattern.kind == "nm":
        chunk = pattern.m * -(-chunk // pattern.m)
        nm = pattern
    else:
        nm = None
    starts = panel_starts(in_features, pattern, blocksize, panel)
    ends = starts[1:] + [in_features]
    if work is None:
        work = panel_buffers(max(b - a for a, b in zip(starts, ends)), WT.shape[1], WT.dtype, WT.device)
    for a, b in zip(starts, ends):
        if nm is None and a % blocksize == 0:
            e = min(a + blocksize, in_features)
            scoresT = obs_scores_t(WT[a:e], d[a:e], dead[a:e]).T  # (width, out), contiguous
            keepT[a:e] = block_keep_t(scoresT, pruned_count(sparsity, scoresT.numel()))
        errT = sweep_panel(WT[a:b], U[a:b, a:b], keepT[a:b], d[a:b], dead[a:b], nm, chunk, chunk_fn=chunk_fn,
                           work=work)
        if b < in_features:
            WT[b:].addmm_(U[a:b, b:].T, errT, alpha=-1.0)


def left_panels(in_features: int, pattern: Pattern, blocksize: int, panel: int = PANEL) -> list:
    """[(A, B)]: the panels of the left-looking sweep, each a whole number of mask groups (blocksize columns,
    or M for N:M) and at least ``panel`` wide, so that every mask is chosen inside one panel."""
    unit = pattern.m if pattern.kind == "nm" else blocksize
    width = unit * -(-panel // unit)
    starts = list(range(0, in_features, width))
    return list(zip(starts, starts[1:] + [in_features]))


def sparsegpt_sweep_left(W32, F, bounds: list, dead, pattern: Pattern, sparsity: float, blocksize: int, *,
                         panel: int = PANEL, chunk: int = CHUNK, chunk_fn=None, outer: int = OUTER):
    """The same OBS sweep, left-looking: each panel [A, B) receives all earlier columns' updates at its start.

    With E the OBS errors, U = R^{-1} (R R^T = H_d) and Delta = W - W_hat on finished columns,
    Delta[:, :A] = E[:, :A] U[:A, :A] (each column's final value is W minus its updates and its
    own pruned part), and U's block inverse gives U[:A, A:B] = -U[:A, :A] R[:A, A:B] U_AB, so the
    updates the panel is owed are

        E[:, :A] U[:A, A:B] = -Delta[:, :A] R[:A, A:B] U_AB = -Delta[:, :A] F[:A, A:B]

    (``left_panel_factor``): one GEMM per panel, the same out * in^2 FLOPs as the right-looking
    GEMMs, but reading R instead of U, so the factorisation skips the triangular inverse (n^3/3,
    in float64: about 0.6 s of 2 s at 4096 on this CPU, docs/benchmarks.md). Inside a panel the
    right-looking ``_sweep_t`` runs with U_AB. Returns (W_hat, mask) as ``sparsegpt_sweep``.

    Two levels (``outer``): consecutive panels are grouped into outer blocks [A0, B0) at least ``outer``
    columns wide; at A0 one GEMM gives the whole outer block the updates of the columns before A0
    (F[:A0, A0:B0]: each panel's F holds rows :A0 too), then each panel receives only those of
    [A0, A). The same products, summed in another order, in GEMMs of ``outer`` instead of 128 rows:
    at 4096 x 4096 on this CPU (1 thread, 2026-12-02, a session script, best of 3 interleaved) the
    left-looking GEMMs took 1.03 s (67 GFLOP/s) instead of 1.37 s (50 GFLOP/s), the square GEMM
    rate measured next to them 61.5 GFLOP/s. F is the same; FAST-3 runs small ``outer`` values.
    """
    # W in any dtype, swept in float32 (F's dtype when F is float64: FAST-3 checks this order of the sweep in
    # float64 against the reference's)
    dtype = torch.float64 if F.dtype == torch.float64 else torch.float32
    WT = alloc.copy(W32.T, dtype)  # fresh n x out buffers on huge pages where offered (fast/alloc.py)
    DT = alloc.copy(WT)  # the original W^T; becomes Delta^T = (W - W_hat)^T panel by panel
    keepT = alloc.empty(WT.shape, torch.bool, WT.device).fill_(True)
    d = torch.diagonal(F)  # F's diagonal blocks are U's: d = diag(U)
    work = panel_buffers(max(B - A for A, B in bounds), WT.shape[1], dtype, W32.device)  # one pair for all panels
    with full_fp32():
        for group in outer_blocks(bounds, outer):
            A0, B0 = group[0][0], group[-1][1]
            if A0:
                WT[A0:B0].addmm_(F[:A0, A0:B0].T, DT[:A0])
            for A, B in group:
                if A > A0:
                    WT[A:B].addmm_(F[A0:A, A:B].T, DT[A0:A])
                _sweep_t(WT[A:B], keepT[A:B], F[A:B, A:B], d[A:B], dead[A:B], pattern, sparsity, blocksize, panel,
                         chunk, chunk_fn, work)
                DT[A:B].sub_(WT[A:B])
    return WT.T, keepT.T


def outer_blocks(bounds: list, outer: int) -> list:
    """The panels of ``bounds`` grouped in order into runs at least ``outer`` columns wide (the last may be less)."""
    groups, run = [], []
    for A, B in bounds:
        run.append((A, B))
        if B - run[0][0] >= outer:
            groups.append(run)
            run = []
    return groups + ([run] if run else [])


def prune_group(Ws: list, H: torch.Tensor, pattern: Pattern, sparsity: float, *, blocksize: int, dampening: float,
                on_cholesky_failure: str) -> list:
    """The registry's fast entry: one factorisation for linears sharing H; N:M rows stacked into one sweep
    (rows are independent given U), unstructured swept linear by linear (its mask spans a block's rows).
    [(W_hat in each W's dtype, mask, info)]."""
    bounds = left_panels(H.shape[0], pattern, blocksize)
    F, used = left_panel_factor(H, dampening, on_cholesky_failure, bounds)
    dead = dead_inputs(H)
    extra = {"blocksize": blocksize, "dampening": used, "dampening_raised": used != dampening}

    def sweep(W32):
        return sparsegpt_sweep_left(W32, F, bounds, dead, pattern, sparsity, blocksize)

    if pattern.kind == "nm" and len(Ws) > 1:
        weight, mask = sweep(torch.cat([W.to(torch.float32) for W in Ws], dim=0))
        sizes = [W.shape[0] for W in Ws]
        pieces = zip(weight.split(sizes), mask.split(sizes))
    else:
        pieces = (sweep(W) for W in Ws)  # the sweep copies W into float32 (transposed) and never writes W
    return [(alloc.copy(w, output_dtype(W)), alloc.copy(m), dict(extra)) for W, (w, m) in zip(Ws, pieces)]
