"""``prune_layer``: the one interface every pruner shares (spec GEN-*).

    prune_layer(W[out, in], H[in, in], method=..., sparsity=... | pattern="N:M", **options)
        -> PruneResult(weight, mask), unpacks as ``weight, mask = prune_layer(...)``

magnitude needs nothing of H, Wanda only diag(H), SparseGPT and ALPS all of it. The
methods, their options and defaults are the method registry's (``contract/registry.py``).
"""

from __future__ import annotations

import torch

from .contract import registry
from .contract.validate import check_hessian, check_weight


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


def prune_layer(W, H, *, method: str, sparsity=None, pattern: str = "unstructured", **options) -> PruneResult:
    """Prune one linear layer with ``method`` in float64.

    W: (out, in) weight (torch or numpy). H: (in, in) symmetric PSD, ``hessian(X)``.
    method: a registered method: "magnitude" | "wanda" | "sparsegpt" | "alps" (GEN-1).
    sparsity: fraction pruned in [0, 1) for pattern "unstructured"; None for "N:M".
    pattern: "unstructured" or "N:M" (at most N non-zeros in every M consecutive inputs of a row).
    options: method-specific, see docs/spec.md (unknown names raise TypeError).
    """
    entry = registry.get(method)
    W = check_weight(W)
    H = check_hessian(H, W.shape[1])
    pat, s, opts = registry.check_request(method, sparsity, pattern, W.shape[1], options)
    info = {"method": method, "pattern": str(pat), "sparsity": s, "options": opts}
    if pat.kind == "unstructured" and s == 0.0:  # GEN-3: nothing to prune, nothing changes
        return PruneResult(W, torch.ones_like(W, dtype=torch.bool), info)
    weight, mask, method_info = entry.implementation("reference")(W, H, pat, s, **opts)
    return PruneResult(weight, mask, {**info, **method_info})
