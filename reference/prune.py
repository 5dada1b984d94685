"""``prune_layer``: the one interface every pruner shares (spec GEN-*).

    prune_layer(W[out, in], H[in, in], method=..., sparsity=... | pattern="N:M", **options)
        -> PruneResult(weight, mask), unpacks as ``weight, mask = prune_layer(...)``

magnitude needs nothing of H, Wanda only diag(H), SparseGPT and ALPS all of it.
"""

from __future__ import annotations

import torch

from ._validate import METHODS, check_choice, check_hessian, check_options, check_sparsity_for_pattern, check_weight, parse_pattern
from .magnitude import MAGNITUDE_OPTIONS, prune_magnitude
from .sparsegpt import SPARSEGPT_OPTIONS, check_sparsegpt_options, prune_sparsegpt
from .wanda import WANDA_OPTIONS, prune_wanda


class PruneResult(tuple):
    """``(weight, mask)`` with an ``info`` dict (method, pattern, options used, recoveries taken).

    weight: float64 (out, in), exactly 0 where mask is False.
    mask:   bool (out, in), True = kept.
    """

    def __new__(cls, weight: torch.Tensor, mask: torch.Tensor, info: dict):
        self = super().__new__(cls, (weight, mask))
        self.info = info
        return self

    @property
    def weight(self) -> torch.Tensor:
        return self[0]

    @property
    def mask(self) -> torch.Tensor:
        return self[1]


def _alps():
    from .alps import ALPS_OPTIONS, prune_alps

    return ALPS_OPTIONS, prune_alps


def _method_table():
    alps_options, prune_alps = _alps()
    return {
        "magnitude": (MAGNITUDE_OPTIONS, prune_magnitude),
        "wanda": (WANDA_OPTIONS, prune_wanda),
        "sparsegpt": (SPARSEGPT_OPTIONS, prune_sparsegpt),
        "alps": (alps_options, prune_alps),
    }


def check_request(method: str, sparsity, pattern, in_features: int, options: dict):
    """Validate a pruning request without pruning: (Pattern, sparsity, options with defaults).

    The model level calls this for every target linear before it changes any weight,
    so a bad option fails the run at once instead of after the first blocks (P2-9).
    """
    check_choice(method, METHODS, "method")
    pat = parse_pattern(pattern, in_features)
    s = check_sparsity_for_pattern(sparsity, pat)
    defaults = _method_table()[method][0]
    opts = check_options(method, options, defaults)
    if method in ("magnitude", "wanda"):
        check_choice(opts["group"], ("layer", "row"), "group")
    elif method == "sparsegpt":
        check_sparsegpt_options(opts)
    else:
        from .alps import check_alps_options

        check_alps_options(opts)
    return pat, s, opts


def prune_layer(W, H, *, method: str, sparsity=None, pattern: str = "unstructured", **options) -> PruneResult:
    """Prune one linear layer with ``method`` in float64.

    W: (out, in) weight (torch or numpy). H: (in, in) symmetric PSD, ``hessian(X)``.
    method: "magnitude" | "wanda" | "sparsegpt" | "alps".
    sparsity: fraction pruned in [0, 1) for pattern "unstructured"; None for "N:M".
    pattern: "unstructured" or "N:M" (at most N non-zeros in every M consecutive inputs of a row).
    options: method-specific, see docs/spec.md (unknown names raise TypeError).
    """
    check_choice(method, METHODS, "method")
    W = check_weight(W)
    H = check_hessian(H, W.shape[1])
    pat, s, opts = check_request(method, sparsity, pattern, W.shape[1], options)
    pruner = _method_table()[method][1]
    info = {"method": method, "pattern": str(pat), "sparsity": s, "options": opts}
    if pat.kind == "unstructured" and s == 0.0:  # GEN-3: nothing to prune, nothing changes
        return PruneResult(W, torch.ones_like(W, dtype=torch.bool), info)
    weight, mask, method_info = pruner(W, H, pat, s, **opts)
    return PruneResult(weight, mask, {**info, **method_info})
