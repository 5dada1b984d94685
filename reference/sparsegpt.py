"""SparseGPT (Frantar & Alistarh, 2023), spec SGPT-*.

Optimal Brain Surgeon applied column by column, left to right:

1. damp H:            H_d = H + lambda I, lambda = dampening * mean(diag H)     (SGPT-2)
2. factorise:         U upper triangular with U^T U = H_d^{-1}                  (SGPT-3)
   (row i of U holds the OBS update for removing input i once inputs < i
   have been fixed; U_ii^2 is the matching diagonal of the remaining inverse)
3. choose the mask:   unstructured - at the start of each block of `blocksize`
   columns, prune the floor(s * out * blocksize) lowest scores
   w_ij^2 / U_jj^2 of the block (adaptive mask selection, SGPT-4);
   N:M - at the first column of each M-group, keep the N highest scores of
   each row in that group (SGPT-5). Scores use the weights as updated so far.
4. sweep columns i = 0 .. in-1: the error e = (w_i - q_i) / U_ii of pruning
   column i, spread over the columns not yet fixed: W[:, i:] -= e U[i, i:] (SGPT-6).

The original batches step 4 lazily per block (the later columns receive one
GEMM per block); that is the same arithmetic reordered, so the reference does
the plain per-column update and leaves batching to `fast/` (SGPT-7).
"""

from __future__ import annotations

import warnings

import torch

from .contract.patterns import Pattern
from .masks import select_mask

#: Recovery ladder of SGPT-8: dampening doubled (from 0.01 if it was below)
#: until the Cholesky factorisation succeeds, at most up to this value.
MAX_RECOVERY_DAMPENING = 1.0


class CholeskyError(ValueError):
    """H + lambda I could not be factorised, even after the recovery of SGPT-8."""


def dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """Inputs that never fire on the calibration set: H_jj == 0 exactly (DEAD-1)."""
    return torch.diagonal(H) == 0


def damped_hessian(H: torch.Tensor, dampening: float) -> torch.Tensor:
    """H_d = H + dampening * mean(diag H) * I (SGPT-2); relative, so scaling H changes nothing.

    When H is zero (every input dead) there is no scale to be relative to and
    lambda = dampening is used (any value gives the same masks: every score is 0).
    """
    mean_diag = float(torch.diagonal(H).mean())
    lam = dampening * (mean_diag if mean_diag > 0 else 1.0)
    return H + lam * torch.eye(H.shape[0], dtype=H.dtype)


def inverse_cholesky_factor(H_damped: torch.Tensor) -> torch.Tensor:
    """U, upper triangular, with U^T U = H_d^{-1} (SGPT-3). Raises torch.linalg.LinAlgError if H_d is not PD."""
    L = torch.linalg.cholesky(H_damped)
    H_inv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(H_inv, upper=True)


def factor_with_recovery(H: torch.Tensor, dampening: float, on_failure: str):
    """SGPT-8: factorise H_d; on failure either raise, or double the dampening and retry.

    Returns (U, dampening actually used). Never falls back to anything but a
    larger dampening; every increase is reported with a warning and in `info`.
    """
    tried = []
    damp = dampening
    while True:
        tried.append(damp)
        try:
            return inverse_cholesky_factor(damped_hessian(H, damp)), damp
        except torch.linalg.LinAlgError:
            if on_failure == "raise" or damp >= MAX_RECOVERY_DAMPENING:
                raise CholeskyError(
                    f"H + dampening * mean(diag H) * I is not positive definite for dampening in {tried}; "
                    "check that H is a PSD matrix sum_t x_t x_t^T, or pass a larger `dampening`"
                ) from None
            damp = min(max(2 * damp, 0.01), MAX_RECOVERY_DAMPENING)
            warnings.warn(
                f"sparsegpt: Cholesky of the damped H failed; retrying with dampening={damp:g} (spec SGPT-8)",
                RuntimeWarning,
                stacklevel=3,
            )


def obs_scores(W_cols: torch.Tensor, U_diag: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Saliency w_ij^2 / U_jj^2 of removing weight ij (SGPT-4); dead inputs score 0 (DEAD-2)."""
    scores = W_cols.square() / U_diag.square().unsqueeze(0)
    return scores.masked_fill(dead.unsqueeze(0), 0.0)


def obs_update(W: torch.Tensor, i: int, keep: torch.Tensor, U: torch.Tensor) -> None:
    """Fix column i: zero its pruned entries and compensate in columns > i (SGPT-6), in place."""
    w = W[:, i].clone()
    q = w.masked_fill(~keep, 0.0)
    err = (w - q) / U[i, i]
    W[:, i + 1 :] -= torch.outer(err, U[i, i + 1 :])
    W[:, i] = q


def sparsegpt_sweep(W, U, dead, pattern: Pattern, sparsity: float, blocksize: int, select=select_mask):
    """Steps 3-4 for every column; ``select(scores, pattern, sparsity, group)`` picks each mask piece.

    ``select`` is a parameter so the conformance suite can replay a port's
    masks through the same updates (see conformance/checking/oracles.py).
    """
    W = W.clone()
    out_features, in_features = W.shape
    mask = torch.ones_like(W, dtype=torch.bool)
    diag_U = torch.diagonal(U)
    for i in range(in_features):
        if pattern.kind == "unstructured" and i % blocksize == 0:
            j = min(i + blocksize, in_features)
            scores = obs_scores(W[:, i:j], diag_U[i:j], dead[i:j])
            mask[:, i:j] = select(scores, pattern, sparsity, "layer")
        if pattern.kind == "nm" and i % pattern.m == 0:
            j = i + pattern.m
            scores = obs_scores(W[:, i:j], diag_U[i:j], dead[i:j])
            mask[:, i:j] = select(scores, pattern, sparsity, "layer")
        obs_update(W, i, mask[:, i], U)
    return W, mask


def prune_sparsegpt(W, H, pattern: Pattern, sparsity: float, *, blocksize, dampening, on_cholesky_failure):
    """SparseGPT on one layer: (W_hat, mask, info). Options checked, with the registry's defaults as in the
    original code (blocksize 128, dampening 0.01, on_cholesky_failure "raise_dampening")."""
    U, used = factor_with_recovery(H, dampening, on_cholesky_failure)
    dead = dead_inputs(H)
    W_hat, mask = sparsegpt_sweep(W, U, dead, pattern, sparsity, blocksize)
    info = {"blocksize": blocksize, "dampening": used, "dampening_raised": used != dampening}
    return W_hat, mask, info
