"""Magnitude pruning (spec MAG-*), vectorised.

The score |W_ij| is exact in any floating dtype, so it is taken in W's own
dtype: the mask is bitwise the reference's. Selection is O(n) (fast/masks.py).
"""

from __future__ import annotations

import torch

from rac.reference._validate import Pattern

from .masks import select_mask


def prune_magnitude(W: torch.Tensor, pattern: Pattern, sparsity: float, *, group: str = "layer"):
    """Zero the lowest |W| of each group (layer by default, MAG-1); kept weights untouched (MAG-2).

    W: validated weight in the caller's dtype and device. Returns (weight, mask, info).
    """
    mask = select_mask(W.abs(), pattern, sparsity, group)
    return W.masked_fill(~mask, 0), mask, {"group": group}
