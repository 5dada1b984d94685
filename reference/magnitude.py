"""Magnitude pruning (spec MAG-*): keep the largest |W_ij|; H is not used."""

from __future__ import annotations

import torch

from .contract.patterns import Pattern
from .masks import select_mask


def magnitude_scores(W: torch.Tensor) -> torch.Tensor:
    """Importance of W_ij is |W_ij| (MAG-1)."""
    return W.abs()


def prune_magnitude(W, H, pattern: Pattern, sparsity: float, *, group: str):
    """Zero the lowest-|W| weights of each group; kept weights are unchanged (MAG-2).

    group: "layer" (the original baselines: one threshold per matrix) or "row".
    """
    mask = select_mask(magnitude_scores(W), pattern, sparsity, group)
    return W.masked_fill(~mask, 0.0), mask, {"group": group}
