"""Magnitude pruning (spec MAG-*), vectorised.

The score |W_ij| is exact in any floating dtype, so it is taken in W's own
dtype: the mask is bitwise the reference's. Selection is O(n) (fast/masks.py).
"""

from __future__ import annotations

import torch

from rac.reference.contract.patterns import Pattern

from .masks import select_mask
from .prune import stacked


def prune_magnitude(W: torch.Tensor, pattern: Pattern, sparsity: float, *, group: str):
    """Zero the lowest |W| of each group (layer by default, MAG-1); kept weights untouched (MAG-2).

    W: validated weight in the caller's dtype and device. Returns (weight, mask, info).
    """
    mask = select_mask(W.abs(), pattern, sparsity, group)
    return W.masked_fill(~mask, 0), mask, {"group": group}


def prune_group(Ws: list, H, pattern: Pattern, sparsity: float, *, group: str) -> list:
    """The registry's fast entry: linears sharing an input, one stacked selection where the groups are
    per row (group "row", N:M); H is not read (MAG-1)."""
    stack = pattern.kind == "nm" or group == "row"
    return stacked(Ws, stack, lambda W: prune_magnitude(W, pattern, sparsity, group=group))
