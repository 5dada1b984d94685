"""SparseGPT's factorisation (spec SGPT-2, SGPT-3, SGPT-8), once per H, in float64.

U is the upper triangular factor with U^T U = H_d^{-1}, H_d = H + lambda I,
lambda = dampening * mean(diag H). The reference forms it as the original
does: Cholesky of H_d, the explicit inverse, Cholesky again (4/3 n^3 FLOPs).
Here, with J the reversal permutation:

    J H_d J = L L^T  (Cholesky)   =>   H_d = R R^T with R = J L J upper triangular
    =>   H_d^{-1} = R^{-T} R^{-1}  =>   U = R^{-1}                       (same U: both have a positive diagonal)

one Cholesky and one triangular solve, and no explicit inverse of H_d is ever
formed or factorised again: n^3 / 3 + n^3 / 3 FLOPs instead of 4/3 n^3, which
brought the step down to its FLOP bound (docs/benchmarks.md, ``test_bench_factor``);
FAST-3 and PREC-2 check that it is the same U.

Precision (PREC-2): in float64 whatever the compute dtype, then U is rounded
once to float32. On a rank-deficient 1024-input H (d = 0.01 / 0.001),
factorising in float32 errs by 2.8e-5 / 2.8e-4 (relative Frobenius) where
rounding H itself to float32 costs 3.4e-6 / 3.4e-5 (probe_precision.py): an 8x
loss at the step every later score and update reads. In float64 it costs
more than float32 on a CPU (docs/benchmarks.md, ``test_bench_factor``) and, projected
from the datasheet, the same time on an H100 (FP64 tensor cores run at the FP32
rate, 67 TFLOP/s); it is O(in^3) once per distinct input, shared by every linear
reading it.
"""

from __future__ import annotations

import warnings

import torch

from rac.reference.contract.validate import all_finite
from rac.reference.sparsegpt import MAX_RECOVERY_DAMPENING, CholeskyError

from . import alloc

FACTOR_DTYPE = torch.float64


def damping(H: torch.Tensor, dampening: float) -> float:
    """lambda = dampening * mean(diag H) (SGPT-2); dampening itself when H = 0 (no scale to be relative to)."""
    mean_diag = float(torch.diagonal(H).to(torch.float64).mean())
    return dampening * (mean_diag if mean_diag > 0 else 1.0)


def inverse_cholesky_upper(H_damped: torch.Tensor):
    """U with U^T U = H_damped^{-1} by the reversed Cholesky (module docstring); None if H_damped is not PD."""
    R = reversed_cholesky(H_damped)  # upper triangular, R R^T = H_damped
    if R is None:
        return None
    eye = torch.eye(R.shape[0], dtype=R.dtype, device=R.device)
    U = torch.linalg.solve_triangular(R, eye, upper=True)
    if not all_finite(U):
        return None
    return U


def factor_with_recovery(H: torch.Tensor, dampening: float, on_failure: str, out_dtype=torch.float32):
    """SGPT-8 exactly as the reference: on failure raise, or double the dampening (from 0.01) up to 1.0.

    H: symmetrised, validated, any float dtype, on the compute device. Returns
    (U in ``out_dtype``, dampening used); each raise of the dampening warns
    (RuntimeWarning) and the caller reports it in ``info``.
    """
    U, damp = _with_recovery(H, dampening, on_failure, inverse_cholesky_upper)
    return U.to(out_dtype).contiguous(), damp  # row-major: the sweep reads rows of U


def reversed_cholesky(H_damped: torch.Tensor):
    """R upper triangular with R R^T = H_damped (the first half of ``inverse_cholesky_upper``); None if not PD."""
    L, info = torch.linalg.cholesky_ex(H_damped.flip(0, 1))
    if int(info) != 0:
        return None
    return L.flip(0, 1)


def left_panel_factor(H: torch.Tensor, dampening: float, on_failure: str, bounds: list, out_dtype=torch.float32,
                      cholesky_block: int | None = None):
    """What the left-looking sweep reads (fast/sparsegpt.py), instead of the whole U = R^{-1}:

        F[A:B, A:B] = U_AB = R[A:B, A:B]^{-1}       (= U's diagonal block, U being upper triangular)
        F[:A, A:B]  = R[:A, A:B] U_AB                (the left-looking update's operator)

    for the panels [A, B) of ``bounds``. R comes from the reversed Cholesky in float64 (SGPT-8's
    recovery as ``factor_with_recovery``); the small inverses and products are float64 too, and F
    is rounded once to ``out_dtype`` (PREC-2's rule for U, applied to F). FLOPs in float64: n^3/3
    (Cholesky) + sum_A (B-A)^3/3 + 2 A (B-A)^2 ~ panel * n^2: the n^3/3 of the full triangular
    inverse is never spent. ``cholesky_block``: ``blocked_cholesky_``'s block width (CHOLESKY_BLOCK
    when None; FAST-3 runs small ones so that its panel solves and trailing updates are checked on
    small layers). Returns (F, dampening used).
    """
    n = H.shape[0]

    def factor(H_damped_reversed):
        # J H_d J = L L^T, so R = J L J: R's block [i0:i1, j0:j1] is L[n-i1:n-i0, n-j1:n-j0] flipped both ways.
        # L is read in place (no flipped copy of the n x n factor).
        L = blocked_cholesky_(H_damped_reversed, cholesky_block or CHOLESKY_BLOCK)
        if L is None:
            return None
        # Only F's upper block triangle (rows :B of each panel's columns) is written and read; the rest is
        # left unwritten: zeros there cost a fill and page faults of the whole n x n (fresh memory), for
        # entries nothing reads.
        F = alloc.empty((n, n), out_dtype, L.device)
        for A, B in bounds:
            a, b = n - B, n - A  # the panel's columns in L's (reversed) order
            eye = torch.eye(B - A, dtype=L.dtype, device=L.device)
            U_AB = torch.linalg.solve_triangular(L[a:b, a:b].flip(0, 1), eye, upper=True)
            F[A:B, A:B] = U_AB
            if A:  # R[:A, A:B] U_AB = (J L[b:, a:b] J) U_AB = J (L[b:, a:b] (J U_AB))
                F[:A, A:B] = (L[b:, a:b] @ U_AB.flip(0)).flip(0)
        if not all(all_finite(F[:B, A:B]) for A, B in bounds):
            return None
        return F

    return _with_recovery(H, dampening, on_failure, factor, reverse=True)


#: Block width of ``blocked_cholesky_`` (256 and 384 measured best of 128 / 256 / 384 / 512 at 4096).
CHOLESKY_BLOCK = 256


def blocked_cholesky_(A: torch.Tensor, block: int = CHOLESKY_BLOCK, panel_solve=None):
    """Lower Cholesky factor of A, right-looking by blocks of ``block`` columns, in place; None if not PD.

    Reads and writes only the lower triangle (the strict upper triangle keeps whatever it held, and
    the caller may leave it unwritten: ``reversed_lower``); callers read blocks on or below the
    diagonal, through solves that read one triangle. Column block [k0, k1): its diagonal block is
    factored (torch.linalg.cholesky_ex, which fails exactly where A's leading minors stop being
    positive), the rows below are solved against it, and the trailing lower triangle receives its
    update row block by row block (GEMMs of ``block`` rows): n^3/3 FLOPs, as LAPACK's potrf.

    Why not potrf itself: torch.linalg.cholesky_ex returns a column-major factor and zeroes its upper
    triangle across that layout, which took 0.16-0.36 s of its 1.2-1.35 s at 4096 in float64 on this
    CPU (1 thread, load 4.8, torch profiler), and it needs the whole symmetric matrix. Why
    right-looking: a session script on this CPU (2026-12-02, 1 thread, 4096 x 4096 float64, best of
    2, two interleaved rounds, load about 1) timed this schedule at 1.02 s against the left-looking
    one (each block receiving all earlier blocks' updates in one GEMM) at 1.20-1.23 s and
    cholesky_ex at 1.22-1.34 s; the factors agree to 3.8e-16 relative. Block widths 128 to 512 and
    row blocks up to 1024 measured 1.01-1.15 s; 256 / 256 is kept.

    panel_solve(L_kk, P): overwrites P (the rows below a diagonal block) with P L_kk^{-T};
    ``solve_panel_in_place`` by default (``solve_panel_copied``, the earlier schedule, is kept for
    conformance/benchmarks/probe_factor.py to compare).
    """
    panel_solve = panel_solve or solve_panel_in_place
    n = A.shape[0]
    for k0 in range(0, n, block):
        k1 = min(k0 + block, n)
        L_kk, info = torch.linalg.cholesky_ex(A[k0:k1, k0:k1])
        if int(info) != 0:
            return None
        A[k0:k1, k0:k1] = L_kk
        if k1 < n:
            panel_solve(L_kk, A[k1:, k0:k1])
            P = A[k1:, k0:k1]  # the solved column block: the trailing matrix loses P P^T
            for r0 in range(k1, n, block):
                r1 = min(r0 + block, n)
                A[r0:r1, k1:r1].addmm_(P[r0 - k1:r1 - k1], P[:r1 - k1].T, alpha=-1.0)
    return A


def solve_panel_in_place(L_kk: torch.Tensor, P: torch.Tensor) -> None:
    """P <- P L_kk^{-T} as L_kk X = P^T on P's own memory.

    P = A[k1:, k0:k1] is a row-major block of A, so P^T is a column-major matrix with A's row stride
    as its leading dimension (LAPACK's layout); the solve reads it as the right-hand side and writes
    X through ``out=`` into A itself. ``solve_panel_copied`` solves from the right into a new tensor
    and copies that back into A's strided block. The same triangular solve by another BLAS path: the
    factors agree to 5.0e-16 (1 thread) and 6.3e-16 (2 threads) relative at 4096. The copied solve
    ran at about 26 GFLOP/s at 2 threads, 0.08 s of a 0.32 s Cholesky.
    ``python conformance/benchmarks/probe_factor.py 4096 T 5`` (this CPU, 2026-12-02 16:02 UTC,
    commit 851ea57, best of 5 interleaved, load 1.1): 0.648 s -> 0.593 s at 1 thread, 0.339 s ->
    0.316 s at 2; more in docs/benchmarks.md ("Why SparseGPT stays above 1.5x its bound").
    """
    PT = P.T
    torch.linalg.solve_triangular(L_kk, PT, upper=False, out=PT)


def solve_panel_copied(L_kk: torch.Tensor, P: torch.Tensor) -> None:
    """P <- P L_kk^{-T} through a solve from the right into a new tensor, copied back (the schedule before
    ``solve_panel_in_place``)."""
    P.copy_(torch.linalg.solve_triangular(L_kk.T, P, upper=True, left=False))


def reversed_lower(H: torch.Tensor, dtype, rows: int = 256) -> torch.Tensor:
    """The lower triangle (diagonal included) of J H J in ``dtype``: [i, j] = H[n-1-i, n-1-j] for i >= j;
    the strict upper triangle is left unwritten (``blocked_cholesky_`` reads only the lower one).

    Built ``rows`` rows at a time through a flipped block of H, so no flipped n x n copy of H is
    made, and half of the float64 result is never written: fresh memory's first writes page fault,
    which was most of the cost of ``H.flip(0, 1).to(float64)`` (a 64 MiB float32 copy, then a
    128 MiB float64 one) at 4096 inputs; in one session on this CPU (1 thread, 2026-12-02) a fresh
    64 MiB clone took 73 ms against 10 ms into memory already written.
    """
    n = H.shape[0]
    out = alloc.empty((n, n), dtype, H.device)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        out[r0:r1, :r1].copy_(H[n - r1:n - r0, n - r1:].flip(0, 1))
    return out


def _with_recovery(H: torch.Tensor, dampening: float, on_failure: str, factor, reverse: bool = False):
    """SGPT-8's loop around ``factor`` (H_damped in FACTOR_DTYPE -> result, or None when not PD).

    reverse: hand ``factor`` the lower triangle of J H_d J (rows and columns reversed; ``reversed_lower``),
    made from H on every try instead of a float64 copy of H, a clone per try and a flipped copy."""
    H64 = None if reverse else H.to(FACTOR_DTYPE)
    tried = []
    damp = dampening
    while True:
        tried.append(damp)
        H_damped = reversed_lower(H, FACTOR_DTYPE) if reverse else H64.clone()  # H itself is never written
        H_damped.diagonal().add_(damping(H, damp))  # J H J has H's diagonal, reversed: the same mean
        result = factor(H_damped)
        if result is not None:
            return result, damp
        if on_failure == "raise" or damp >= MAX_RECOVERY_DAMPENING:
            raise CholeskyError(
                f"H + dampening * mean(diag H) * I is not positive definite for dampening in {tried}; "
                "check that H is a PSD matrix sum_t x_t x_t^T, or pass a larger `dampening`"
            )
        damp = min(max(2 * damp, 0.01), MAX_RECOVERY_DAMPENING)
        warnings.warn(
            f"sparsegpt: Cholesky of the damped H failed; retrying with dampening={damp:g} (spec SGPT-8)",
            RuntimeWarning,
            stacklevel=4,
        )
