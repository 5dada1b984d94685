"""Oracles: answers computed independently of any port.

- ``scipy_refit``: exact least squares on a fixed mask, from X itself with
  scipy (not from H as the reference does), REF-2/REF-3.
- ``brute_force_optimum``: the best objective over *every* mask with a given
  number of pruned weights, for layers small enough to enumerate (OPT-1).
- ``sparsegpt_replay``: the reference SparseGPT updates driven by a port's own
  masks, checking each mask choice against the scores at that moment (SGPT-*).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import scipy.linalg
import torch

from rac.reference.contract.patterns import Pattern
from rac.reference.sparsegpt import dead_inputs, factor_with_recovery, sparsegpt_sweep


def residual(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """||(W - W_hat) X||_F^2 evaluated on X: accurate even where tr(D H D^T) cancels (huge refit weights)."""
    return float((((W - W_hat) @ X) ** 2).sum())


def scipy_refit(W: torch.Tensor, mask: torch.Tensor, X: torch.Tensor):
    """Per row: argmin_z ||X_S^T z - X^T w||_2 (scipy lstsq, minimum-norm); returns (W_hat, objective)."""
    Wn, Xn, Mn = W.numpy(), X.numpy(), mask.numpy()
    W_hat = np.zeros_like(Wn)
    for i in range(Wn.shape[0]):
        S = Mn[i]
        if S.any():
            A = Xn[S].T
            # singular values below max(shape) * eps * sigma_max are rounding noise (numpy's
            # rule); scipy's default cutoff (eps alone) lets a 5e-16 one through on dead inputs
            z, *_ = scipy.linalg.lstsq(A, Xn.T @ Wn[i], cond=max(A.shape) * np.finfo(float).eps, lapack_driver="gelsd")
            W_hat[i, S] = z
    residual = (Wn - W_hat) @ Xn
    return torch.from_numpy(W_hat), float((residual**2).sum())


def _row_best_by_kept(w: np.ndarray, R: np.ndarray) -> np.ndarray:
    """best[c] = min over supports S with |S| = c of the refit objective ||R^T (w - w_hat)||^2 of row w."""
    n = w.shape[0]
    best = np.full(n + 1, np.inf)
    target = R.T @ w
    best[0] = float(target @ target)
    for c in range(1, n + 1):
        for S in itertools.combinations(range(n), c):
            A = R[list(S)].T
            z, *_ = np.linalg.lstsq(A, target, rcond=None)
            r = A @ z - target
            best[c] = min(best[c], float(r @ r))
    return best


def brute_force_optimum(W: torch.Tensor, X: torch.Tensor, pruned_total: int, per_row: int | None = None) -> float:
    """min objective over all masks pruning ``pruned_total`` weights (or exactly ``per_row`` in each row).

    Rows are independent (the objective is a sum over rows), so enumerate the
    supports of each row (2^in of them) and combine the rows by dynamic
    programming over the number kept. Needs in <= 14 or so. Objectives are
    residuals on X, not evaluated through H (no cancellation on ill-conditioned X).
    """
    out_features, in_features = W.shape
    if in_features > 14:
        raise ValueError(f"brute force needs in_features <= 14, got {in_features}")
    R = X.numpy()  # least squares on X itself, as the paper's objective ||(W - W_hat) X||^2 reads
    tables = [_row_best_by_kept(W[i].numpy(), R) for i in range(out_features)]
    if per_row is not None:
        return float(sum(t[in_features - per_row] for t in tables))
    kept_total = out_features * in_features - pruned_total
    dp = np.full(kept_total + 1, np.inf)
    dp[0] = 0.0
    for t in tables:
        new = np.full(kept_total + 1, np.inf)
        for k in range(kept_total + 1):
            if math.isfinite(dp[k]):
                for c in range(0, min(in_features, kept_total - k) + 1):
                    new[k + c] = min(new[k + c], dp[k] + t[c])
        dp = new
    return float(dp[kept_total])


class ReplayViolation(AssertionError):
    pass


def sparsegpt_replay(W, H, port_mask, pattern: Pattern, sparsity: float, blocksize: int, dampening: float, rtol: float):
    """Run the reference OBS sweep with the port's mask choices; check each choice is a lowest-score selection.

    Returns the reference weights for those masks. Raises ReplayViolation
    naming the block where the port pruned a weight whose score (at that point
    of the sweep) exceeds that of a weight it kept, beyond rtol.
    """
    U, _ = factor_with_recovery(H, dampening, "raise")
    dead = dead_inputs(H)
    position = {"col": 0}

    def select(scores, pat, s, group):
        i = position["col"]
        width = scores.shape[1]
        piece = port_mask[:, i : i + width]
        position["col"] = i + width
        if pat.kind == "nm":
            groups = scores.reshape(-1, pat.m), piece.reshape(-1, pat.m)
            pairs = zip(*groups)
        else:
            pairs = [(scores.reshape(-1), piece.reshape(-1))]
        for s_g, k_g in pairs:
            if bool(k_g.all()) or not bool(k_g.any()):
                continue
            worst_pruned, best_kept = float(s_g[~k_g].max()), float(s_g[k_g].min())
            if worst_pruned > best_kept + rtol * max(abs(worst_pruned), abs(best_kept)):
                raise ReplayViolation(
                    f"columns {i}..{i + width - 1}: pruned a weight with OBS score {worst_pruned:.17g} "
                    f"while keeping one with {best_kept:.17g} (scores w^2 / U_jj^2 at that point of the sweep)"
                )
        return piece.clone()

    W_hat, _ = sparsegpt_sweep(W, U, dead, pattern, sparsity, blocksize, select=select)
    return W_hat


def resolvable(X: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """The hypothesis of the refit theorems for an implementation that sees only H = X X^T.

    In float64, H resolves a direction of X only if its singular value, relative
    to sigma_max(X), exceeds ~sqrt(n eps) ~ 1e-7: below that H holds rounding
    where X still holds data. A problem whose X (or, given a mask, whose X_S for
    some row's kept set S) has singular-value ratios between 10 n eps (clearly
    zero: rank) and 1e-6 is not determined by H, and no H-based solver can meet
    a 1e-9 bound on it. Such cases (near-duplicate inputs, outlier features next
    to near-dependent small ones) are excluded from REF-2/REF-4/OPT-1 and covered
    by every other test.
    """
    if X.numel() == 0:
        return True
    top = float(torch.linalg.svdvals(X).max())
    if top == 0:
        return True
    low, high = 10 * max(X.shape) * 2.2e-16, 1e-6
    supports = [torch.ones(X.shape[0], dtype=torch.bool)] if mask is None else list(mask)
    for S in supports:
        if not bool(S.any()):
            continue
        ratio = torch.linalg.svdvals(X[S]) / top
        if bool(((ratio > low) & (ratio < high)).any()):
            return False
    return True
