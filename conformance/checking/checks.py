"""Port-agnostic checks of a result against the rules of docs/spec.md.

Each check returns None or raises AssertionError with a message that names
the requirement and shows where the rule broke.
"""

from __future__ import annotations

import torch

from rac.reference import pruned_count
from rac.reference.contract import registry
from rac.reference.masks import prune_lowest, prune_lowest_per_row


def groups(method: str, shape, options: dict):
    """The comparison groups of a method as (row slice, column slice) pairs, in CNT-2's order: the
    method's group from the registry ("layer", "row", or "block": all rows x ``blocksize`` columns)."""
    out_features, in_features = shape
    entry = registry.get(method)
    kind = entry.comparison_group(options)
    if kind == "block":
        bs = options.get("blocksize", entry.options["blocksize"].default)
        return [(slice(None), slice(i, min(i + bs, in_features))) for i in range(0, in_features, bs)]
    if kind == "layer":
        return [(slice(None), slice(None))]
    return [(slice(r, r + 1), slice(None)) for r in range(out_features)]


def assert_counts(req: str, mask: torch.Tensor, group_list, sparsity: float) -> None:
    """Exactly floor(s * |g|) pruned in every group g (evaluated on the decimal s, CNT-1)."""
    for g in group_list:
        sub = mask[g]
        want = pruned_count(sparsity, sub.numel())
        got = int((~sub).sum())
        assert got == want, (
            f"{req}: group rows {g[0]}, cols {g[1]} of size {sub.numel()} has {got} pruned, expected "
            f"floor({sparsity} * {sub.numel()}) = {want}"
        )


def assert_nm(req: str, mask: torch.Tensor, weight: torch.Tensor, n: int, m: int) -> None:
    """Every M consecutive inputs (aligned at 0, M, 2M, ...) of each row keep exactly N (NM-1)."""
    out_features, in_features = mask.shape
    kept = mask.reshape(out_features, in_features // m, m).sum(-1)
    bad = (kept != n).nonzero()
    assert bad.numel() == 0, (
        f"{req}: {n}:{m} broken: row {bad[0, 0].item()} group {bad[0, 1].item()} keeps "
        f"{kept[tuple(bad[0])].item()} (N = kept count {n})"
    )
    nonzero = (weight != 0).reshape(out_features, in_features // m, m).sum(-1)
    assert bool((nonzero <= n).all()), f"{req}: more than {n} non-zeros in some group of {m}"


def assert_pruned_zero(req: str, weight: torch.Tensor, mask: torch.Tensor) -> None:
    bad = (weight[~mask] != 0).sum().item()
    assert bad == 0, f"{req}: {bad} pruned entries (mask False) are not exactly zero"


def assert_selection(req: str, mask: torch.Tensor, scores: torch.Tensor, group_list, rtol: float) -> None:
    """Within each group every pruned score <= every kept score, up to rtol (SEL-1)."""
    for g in group_list:
        s, k = scores[g], mask[g]
        if bool(k.all()) or not bool(k.any()):
            continue
        worst_pruned = float(s[~k].max())
        best_kept_floor = float(s[k].min())
        assert worst_pruned <= best_kept_floor + rtol * max(abs(worst_pruned), abs(best_kept_floor)), (
            f"{req}: in group rows {g[0]}, cols {g[1]} a pruned weight scores {worst_pruned:.17g} "
            f"> a kept weight's {best_kept_floor:.17g} (the lowest scores must be pruned)"
        )


def assert_tie_rule(req: str, mask: torch.Tensor, scores: torch.Tensor, group_list, sparsity: float) -> None:
    """Exactly the mask of TIE-1: lowest scores pruned, equal scores pruned lower index first."""
    for g in group_list:
        s = scores[g]
        want = prune_lowest(s.reshape(-1), pruned_count(sparsity, s.numel())).reshape(s.shape)
        diff = (want != mask[g]).nonzero()
        assert diff.numel() == 0, (
            f"{req}: at tied scores the lower index must be pruned first; group rows {g[0]}, cols {g[1]} "
            f"differs at {diff[0].tolist()}"
        )


def assert_nm_tie_rule(req: str, mask: torch.Tensor, scores: torch.Tensor, n: int, m: int) -> None:
    out_features, in_features = mask.shape
    gs = scores.reshape(-1, m)
    want = prune_lowest_per_row(gs, m - n).reshape(out_features, in_features)
    diff = (want != mask).nonzero()
    assert diff.numel() == 0, f"{req}: N:M tie rule broken at {diff[0].tolist()}"
