"""The in-panel column sweep as one Triton kernel per panel (CUDA; optional).

fast/sweep.py's column loop issues ~4 small kernels per column: on a GPU that is
latency, not work (4096 columns x 4 launches x a few microseconds per layer).
Within a panel the rows of W (outputs) are independent once the mask is known,
and N:M masks are chosen per output too, so one program can own a tile of
outputs and run the whole panel's column loop in registers:

    T = W^T[panel, tile]                                     (P x R, registers)
    for i in panel:
        N:M, first column of a group: rank the M rows' scores w^2 / U_jj^2,
                                      keep the N highest (ties: lower index pruned)
        w = T[i];  e = w * pruned_i / U_ii                   (the OBS error)
        T[k] -= U_ik e  for k > i in the panel;  T[i] = w - w * pruned_i

the same arithmetic as ``sweep_chunk`` over the whole panel (one launch instead
of ~4 x 128); the panel's trailing GEMM stays a cuBLAS call. ``chunk_fn`` below
has ``sweep_chunk``'s signature, so ``sweep_panel`` runs it unchanged.

Checked against the eager loop: on CUDA by the GPU tests (FAST-10), and on a CPU
with Triton's interpreter (``TRITON_INTERPRET=1``), which runs this very kernel
with numpy (conformance/project/test_fast_equivalence.py, skipped where Triton is not
installed). Not timed here: no GPU in this project's runs (docs/benchmarks.md).
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def kernel():
    """Build the Triton kernel on first use (Triton reads TRITON_INTERPRET when the kernel is defined)."""
    import triton
    import triton.language as tl

    @triton.jit
    def panel_sweep(WT, U, PF, ERR, DIAG, DEAD, out_features, width, stride_w, stride_u,
                    P: tl.constexpr, R: tl.constexpr, NM_N: tl.constexpr, NM_M: tl.constexpr):
        pid = tl.program_id(0)
        cols = pid * R + tl.arange(0, R)
        rows = tl.arange(0, P)
        cmask = cols < out_features
        rmask = rows < width
        tile_mask = rmask[:, None] & cmask[None, :]
        offsets = rows[:, None] * stride_w + cols[None, :]
        T = tl.load(WT + offsets, mask=tile_mask, other=0.0)
        PFT = tl.load(PF + offsets, mask=tile_mask, other=0.0)  # 1.0 = pruned
        for i in range(width):
            if NM_M > 0:
                if i % NM_M == 0:
                    # scores of the group's M rows, from the weights updated so far (SGPT-5)
                    for j in tl.static_range(NM_M):
                        w_j = tl.sum(tl.where(rows[:, None] == i + j, T, 0.0), axis=0)
                        d_j = tl.load(DIAG + i + j)
                        s_j = (w_j * w_j) / (d_j * d_j)
                        s_j = tl.where(tl.load(DEAD + i + j) != 0, 0.0, s_j)
                        # rank_j = #{k : s_k < s_j} + #{k < j : s_k == s_j}; keep iff rank_j >= M - N
                        rank = tl.zeros([R], dtype=tl.int32)
                        for k in tl.static_range(NM_M):
                            w_k = tl.sum(tl.where(rows[:, None] == i + k, T, 0.0), axis=0)
                            d_k = tl.load(DIAG + i + k)
                            s_k = (w_k * w_k) / (d_k * d_k)
                            s_k = tl.where(tl.load(DEAD + i + k) != 0, 0.0, s_k)
                            below = s_k < s_j
                            if k < j:
                                below = below | (s_k == s_j)
                            rank += below.to(tl.int32)
                        p_j = tl.where(rank >= NM_M - NM_N, 0.0, 1.0)
                        PFT = tl.where(rows[:, None] == i + j, p_j[None, :], PFT)
            on_i = rows[:, None] == i
            w = tl.sum(tl.where(on_i, T, 0.0), axis=0)
            p = tl.sum(tl.where(on_i, PFT, 0.0), axis=0)
            e = (w * p) / tl.load(U + i * stride_u + i)
            tl.store(ERR + i * stride_w + cols, e, mask=cmask)
            u = tl.load(U + i * stride_u + rows, mask=rmask & (rows > i), other=0.0)
            T = T - u[:, None] * e[None, :]
            T = tl.where(on_i, (w - w * p)[None, :], T)
        tl.store(WT + offsets, T, mask=tile_mask)
        tl.store(PF + offsets, PFT, mask=tile_mask)

    return panel_sweep


#: Outputs per program: 32 x (a 128-column panel) float32 = 16 KB of registers per program.
TILE = 32


def chunk_fn(WT, U, keepT, errT, j0: int, j1: int, d, dead, nm, pruneF) -> None:
    """``fast.sweep.sweep_chunk``'s contract, as one kernel launch over columns j0 .. j1-1."""
    import triton

    width = j1 - j0
    out_features = WT.shape[1]
    P = triton.next_power_of_2(max(width, 2))
    WT_c, PF_c, ERR_c = WT[j0:j1], pruneF[j0:j1], errT[j0:j1]
    U_c = U[j0:j1, j0:j1]
    if not (WT_c.is_contiguous() and PF_c.is_contiguous() and ERR_c.is_contiguous() and U_c.stride(1) == 1):
        raise ValueError("triton panel sweep needs row-contiguous WT, pruneF, errT and U")
    grid = (triton.cdiv(out_features, TILE),)
    kernel()[grid](
        WT_c, U_c, PF_c, ERR_c, d[j0:j1].contiguous(), dead[j0:j1].to(torch.int8).contiguous(),
        out_features, width, WT_c.stride(0), U_c.stride(0),
        P=P, R=TILE, NM_N=nm.n if nm is not None else 0, NM_M=nm.m if nm is not None else 0,
    )
    if nm is not None:  # the kernel chose the N:M masks: report them as keepT
        torch.eq(PF_c, 0, out=keepT[j0:j1])


def available(device: torch.device) -> bool:
    """Triton importable and a CUDA device (or the interpreter, TRITON_INTERPRET=1, on any device)."""
    import os

    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
