"""The calibration statistic H (spec HES-1, paper Eq. 7).

The layer objective ||(W - W_hat) X||_F^2 of Eq. 1/7 depends on the
calibration activations X only through

    H = sum_t w_t x_t x_t^T = X diag(w) X^T,

so every pruner here is a function of (W, H). Token order cannot matter
(HES-2) and duplicating every token is the same as doubling H (HES-3).
"""

from __future__ import annotations

import torch

from .contract.validate import as_float64, check_finite


def hessian(X, weights=None) -> torch.Tensor:
    """H = sum_t w_t x_t x_t^T for X of shape (in_features, N), one column per token.

    X: the layer's input activations, columns x_t as in the paper's X_l in R^{d x N}.
    weights: optional non-negative weight w_t per token (default 1 for every token).
    Returns the float64 (in_features, in_features) matrix H.
    """
    X = as_float64(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (in_features, N tokens), got shape {tuple(X.shape)}")
    check_finite(X, "X")
    if weights is None:
        return X @ X.T
    w = as_float64(weights, "weights")
    if w.ndim != 1 or w.shape[0] != X.shape[1]:
        raise ValueError(f"weights must be 1-D with one entry per token (N={X.shape[1]}), got shape {tuple(w.shape)}")
    check_finite(w, "weights")
    if bool((w < 0).any()):
        raise ValueError("weights must be >= 0 (a token's weight in H)")
    return (X * w) @ X.T
