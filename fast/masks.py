"""Mask selection in O(n): the reference's rules (CNT-1, TIE-1, NM-1) without a full sort.

The reference prunes the k lowest scores of a group with a stable sort
(O(n log n)). The same mask follows from a selection: t = the k-th smallest
score; prune every score < t, then the first (k - #{score < t}) scores equal to
t in index order, which is exactly where a stable ascending sort puts them
(TIE-1). ``torch.kthvalue`` is a selection, ``cumsum`` orders the ties. It saves
half the time of a per-row sort and four fifths of a layer-wide one at 4096 x 4096
(docs/benchmarks.md, "Precision probes" lists probe_micro.py's figures). Nothing here
syncs a GPU with the host.

N:M groups are tiny (M inputs). For M <= 4 each weight's rank in its group is
counted by M^2 comparisons (``sweep.keep_highest``, the rule SparseGPT's N:M
selection uses, FAST-9) instead of the reference's stable sort of every group;
for larger M the comparisons cost as much as the sort, which is kept (measured on
the Wanda scores of a 4096 x 4096 layer: docs/benchmarks.md, "Wanda and magnitude
after f49757f").
"""

from __future__ import annotations

import torch

from rac.reference.contract.patterns import Pattern, pruned_count
from rac.reference.masks import nm_mask as _nm_mask_by_sort

from .sweep import keep_highest

#: Up to this M, N:M masks are ranked by comparisons; above it by the reference's stable sort.
COMPARE_MAX_M = 4


def prune_lowest_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a 2-D score matrix with the ``k`` lowest of every row pruned (ties: lower column first)."""
    rows, n = scores.shape
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    below = scores < threshold
    tied = scores == threshold
    # ties to prune in each row: k minus the scores strictly below the threshold (>= 1)
    ties_to_prune = k - below.sum(dim=1, keepdim=True)
    tie_rank = torch.cumsum(tied, dim=1)  # 1, 2, ... along each row at the tied entries
    pruned = below | (tied & (tie_rank <= ties_to_prune))
    return ~pruned


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``prune_lowest_rows`` on the row-major flattening: one group, ties lower flat index first."""
    return prune_lowest_rows(scores.reshape(1, -1), k).reshape(scores.shape)


def unstructured_mask(scores: torch.Tensor, sparsity: float, group: str) -> torch.Tensor:
    """Exactly floor(s * |g|) pruned in every group (CNT-1): the whole matrix ("layer") or each row ("row")."""
    if group == "layer":
        return prune_lowest(scores, pruned_count(sparsity, scores.numel()))
    if group == "row":
        return prune_lowest_rows(scores, pruned_count(sparsity, scores.shape[1]))
    raise ValueError(f"group must be 'layer' or 'row', got {group!r}")


def select_mask(scores: torch.Tensor, pattern: Pattern, sparsity: float, group: str) -> torch.Tensor:
    """Mask for ``pattern``: N:M groups (N kept of every M inputs), or unstructured groups of kind ``group``."""
    if pattern.kind == "nm":
        return nm_mask(scores, pattern)
    return unstructured_mask(scores, sparsity, group)


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Keep the N highest of every M consecutive inputs of each row (NM-1; ties: TIE-1)."""
    if pattern.m > COMPARE_MAX_M:
        return _nm_mask_by_sort(scores, pattern)
    out_features, in_features = scores.shape
    groups = scores.reshape(-1, pattern.m).T  # (M, out * in / M): one column per group
    return keep_highest(groups, pattern.n).T.reshape(out_features, in_features)
