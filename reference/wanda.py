"""Wanda (Sun et al., 2024), spec WANDA-*.

Score S_ij = |W_ij| * ||X_j||_2, where ||X_j||_2 is the norm of input
feature j over the calibration tokens: ||X_j||_2^2 = H_jj, so Wanda needs
only diag(H). Compared per output row by default; no weight update.
"""

from __future__ import annotations

import torch

from .contract.patterns import Pattern
from .masks import select_mask


def wanda_scores(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| * sqrt(H_jj) (WANDA-1). Dead inputs (H_jj = 0) score 0 (DEAD-2)."""
    feature_norms = torch.diagonal(H).clamp(min=0).sqrt()
    return W.abs() * feature_norms.unsqueeze(0)


def prune_wanda(W, H, pattern: Pattern, sparsity: float, *, group: str):
    """Prune the lowest Wanda scores in each row (or in the layer); kept weights unchanged (WANDA-3)."""
    mask = select_mask(wanda_scores(W, H), pattern, sparsity, group)
    return W.masked_fill(~mask, 0.0), mask, {"group": group}
