"""Wanda (spec WANDA-*), vectorised: S_ij = |W_ij| * sqrt(H_jj), float32 scores.

Only diag(H) is read (WANDA-4). The score takes three roundings in float32
(|W| to float32, sqrt, the product): at most 4 eps32 relative, which is the
rounding SEL-1 allows a float32 port; exact ties of the reference stay exact
ties when W and diag(H) are exact in float32 (bf16 weights, perfect squares).
Kept weights are returned untouched in W's own dtype (WANDA-3).
"""

from __future__ import annotations

import torch

from rac.reference.contract.patterns import Pattern

from ._validate import COMPUTE_DTYPE
from .masks import select_mask
from .prune import stacked


def wanda_scores(W: torch.Tensor, diag_H: torch.Tensor) -> torch.Tensor:
    """|W_ij| * sqrt(H_jj) in float32 (WANDA-1); dead inputs (H_jj = 0) score 0 (DEAD-2)."""
    norms = diag_H.to(COMPUTE_DTYPE).clamp(min=0).sqrt()
    return W.abs().to(COMPUTE_DTYPE) * norms.unsqueeze(0)


def prune_wanda(W: torch.Tensor, diag_H: torch.Tensor, pattern: Pattern, sparsity: float, *, group: str):
    """Prune the lowest Wanda scores per row (or per layer, or per M-group). Returns (weight, mask, info)."""
    mask = select_mask(wanda_scores(W, diag_H), pattern, sparsity, group)
    return W.masked_fill(~mask, 0), mask, {"group": group}


def prune_group(Ws: list, H: torch.Tensor, pattern: Pattern, sparsity: float, *, group: str) -> list:
    """The registry's fast entry: linears sharing an input read one diag(H); one stacked selection where
    the groups are per row (group "row", the default, and N:M)."""
    diag_H = torch.diagonal(H)
    stack = pattern.kind == "nm" or group == "row"
    return stacked(Ws, stack, lambda W: prune_wanda(W, diag_H, pattern, sparsity, group=group))
