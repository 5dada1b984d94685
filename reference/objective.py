"""The layer-wise reconstruction objective (spec OBJ-1, paper Eq. 1 and 7)."""

from __future__ import annotations

import torch

from .contract.validate import check_hessian, check_weight


def objective(W, W_hat, H) -> float:
    """tr((W - W_hat) H (W - W_hat)^T) = ||(W - W_hat) X||_F^2 when H = X X^T.

    W, W_hat: (out, in) dense and pruned weights; H: (in, in) from ``hessian``.
    """
    W = check_weight(W, "W")
    W_hat = check_weight(W_hat, "W_hat")
    if W_hat.shape != W.shape:
        raise ValueError(f"W_hat must have the shape of W {tuple(W.shape)}, got {tuple(W_hat.shape)}")
    H = check_hessian(H, W.shape[1])
    delta = W - W_hat
    return float(((delta @ H) * delta).sum())


def row_objectives(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per-row terms (w_i - w_hat_i)^T H (w_i - w_hat_i); they sum to ``objective`` (rows are independent)."""
    delta = W - W_hat
    return ((delta @ H) * delta).sum(dim=1)
