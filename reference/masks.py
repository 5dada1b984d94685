"""Mask builders: which weights a score keeps (spec CNT-*, NM-*, TIE-1).

A mask is a bool tensor shaped like W, True = kept. A *score* says how much a
weight matters (higher = more important); each builder prunes the
lowest-scoring weights of each comparison group.

Ties (TIE-1): among equal scores, the weight with the lower index in the
group's row-major order is pruned first. A stable ascending sort gives
exactly this rule.
"""

from __future__ import annotations

import torch

from .contract.patterns import Pattern, pruned_count


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a flat score vector with its ``k`` lowest entries pruned (ties: lower index first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, stable=True).indices
        keep[order[:k]] = False
    return keep


def prune_lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``prune_lowest`` applied to every row of a 2-D score matrix at once (same tie rule)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, order, False)
    return keep


def unstructured_mask(scores: torch.Tensor, sparsity: float, group: str) -> torch.Tensor:
    """Prune exactly floor(s * |g|) lowest scores in every comparison group g (CNT-1).

    group = "layer": the whole matrix is one group (row-major order for ties);
    group = "row":   each output row is its own group.
    """
    if group == "layer":
        k = pruned_count(sparsity, scores.numel())
        return prune_lowest(scores.reshape(-1), k).reshape(scores.shape)
    if group == "row":
        k = pruned_count(sparsity, scores.shape[1])
        return prune_lowest_per_row(scores, k)
    raise ValueError(f"group must be 'layer' or 'row', got {group!r}")


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Keep the N highest scores in every M consecutive inputs of each row (NM-1).

    Groups start at input index 0, M, 2M, ... ; M - N weights are pruned per
    group, ties broken as in TIE-1 (lower input index pruned first).
    """
    out_features, in_features = scores.shape
    groups = scores.reshape(out_features * in_features // pattern.m, pattern.m)
    keep = prune_lowest_per_row(groups, pattern.m - pattern.n)
    return keep.reshape(out_features, in_features)


def select_mask(scores: torch.Tensor, pattern: Pattern, sparsity: float, group: str) -> torch.Tensor:
    """Mask for ``pattern``: N:M groups, or unstructured groups of kind ``group``."""
    if pattern.kind == "nm":
        return nm_mask(scores, pattern)
    return unstructured_mask(scores, sparsity, group)
