"""``prune_layer`` and ``prune_shared``: the reference's interface (GEN-*), fast.

    prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options) -> PruneResult(weight, mask)
    prune_shared({"q_proj": Wq, "k_proj": Wk, ...}, H, *, method, ...) -> {"q_proj": PruneResult, ...}

Same arguments, options, defaults, checks and error messages as
``rac.reference.prune_layer`` (the contract's validation and method registry).
W and H may live on any device (H is moved to W's); the weight comes back in
W's dtype on W's device, the mask as bool.

``prune_shared`` prunes linears that read the same input (q/k/v; gate/up) with
one validated H and one factorisation, and one sweep over their stacked rows
where stacking is exact. Each method's ``prune_group`` (the registry's ``fast``
entry) decides:

| method    | shared                         | one stacked sweep                            |
| --------- | ------------------------------ | -------------------------------------------- |
| magnitude | -                              | group "row" and N:M (per-row groups)         |
| wanda     | diag(H)                        | group "row" (default) and N:M                |
| sparsegpt | damped factor U (O(in^3))      | N:M only: rows are independent given U       |
| alps      | ridge, normalisation, eigh     | never: the top-k spans the layer, rho sees k |

Unstructured SparseGPT chooses its mask over all rows of a column block and ALPS
over the whole layer, so stacking q, k and v there would be a different method
(llm-compressor, GPTQ and SparseGPT's scripts prune each linear on its own too);
they share the factorisation and sweep one by one. Every result equals
``prune_layer`` on that linear alone, up to rounding (FAST-5).
"""

from __future__ import annotations

import torch

from rac.reference.contract import registry
from rac.reference.prune import PruneResult

from ._validate import check_result, checked_hessian, checked_weight


def prune_layer(W, H, *, method: str, sparsity=None, pattern: str = "unstructured", **options) -> PruneResult:
    """Prune one linear layer; the reference's semantics (docs/spec.md), float32 compute.

    W: (out, in) weight, torch tensor on any device or numpy. H: (in, in) symmetric PSD.
    method: a registered method ("magnitude" | "wanda" | "sparsegpt" | "alps"). sparsity: fraction
    pruned for "unstructured"; None for "N:M". options: as the reference (unknown names: TypeError).
    """
    registry.get(method)
    W = checked_weight(W)
    H = checked_hessian(H, W)
    pat, s, opts = registry.check_request(method, sparsity, pattern, W.shape[1], options)
    return _prune_all([W], H, method, pat, s, opts)[0]


def prune_shared(weights: dict, H, *, method: str, sparsity=None, pattern: str = "unstructured", **options) -> dict:
    """Prune linears sharing one input (and so one H) together: {name: PruneResult} (module docstring)."""
    registry.get(method)
    if not isinstance(weights, dict) or not weights:
        raise TypeError(
            f"weights must be a non-empty dict {{name: W}} of linears sharing one input, got {type(weights).__name__}"
        )
    Ws = [checked_weight(W, f"weights[{name!r}]") for name, W in weights.items()]
    in_features, device = Ws[0].shape[1], Ws[0].device
    for name, W in zip(weights, Ws):
        if W.shape[1] != in_features or W.device != device:
            raise ValueError(
                f"weights[{name!r}] must have in_features={in_features} on {device} like the first linear "
                f"(they share one input), got shape {tuple(W.shape)} on {W.device}"
            )
    H = checked_hessian(H, Ws[0])
    pat, s, opts = registry.check_request(method, sparsity, pattern, in_features, options)
    return dict(zip(weights, _prune_all(Ws, H, method, pat, s, opts)))


def _prune_all(Ws, H, method, pat, s, opts) -> list:
    """The pruning proper for validated weights sharing H; one PruneResult per weight."""
    info = {"method": method, "pattern": str(pat), "sparsity": s, "options": opts}
    if pat.kind == "unstructured" and s == 0.0:  # GEN-3: nothing to prune, nothing changes
        return [PruneResult(W.clone(), torch.ones_like(W, dtype=torch.bool), dict(info)) for W in Ws]
    prune_group = registry.get(method).implementation("fast")
    results = prune_group(Ws, H, pat, s, **opts)
    return [PruneResult(check_result(weight, W, method), mask, {**info, **extra})
            for W, (weight, mask, extra) in zip(Ws, results)]


def stacked(Ws, stack: bool, prune) -> list:
    """Run ``prune(W)`` once on the stacked rows of ``Ws`` (when ``stack`` and their dtypes agree) or once per
    weight; [(weight, mask, info)] per weight. For pruners whose groups never span rows of two linears."""
    if not stack or len(Ws) == 1 or len({W.dtype for W in Ws}) > 1:
        return [prune(W) for W in Ws]
    weight, mask, extra = prune(torch.cat(Ws, dim=0))
    sizes = [W.shape[0] for W in Ws]
    return [(w, m, dict(extra)) for w, m in zip(weight.split(sizes), mask.split(sizes))]
