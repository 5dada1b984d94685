"""``prune_layer`` and ``prune_shared``: the reference's interface (GEN-*), fast.

    prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options) -> PruneResult(weight, mask)
    prune_shared({"q_proj": Wq, "k_proj": Wk, ...}, H, *, method, ...) -> {"q_proj": PruneResult, ...}

Same arguments, options, defaults, checks and error messages as
``rac.reference.prune_layer`` (its validation is reused, fast/_validate.py).
W and H may live on any device (H is moved to W's); the weight comes back in
W's dtype on W's device, the mask as bool.

``prune_shared`` prunes linears that read the same input (q/k/v; gate/up) with
one validated H and one factorisation, and one sweep over their stacked rows
where stacking is exact:

| method    | shared                         | one stacked sweep                            |
| --------- | ------------------------------ | -------------------------------------------- |
| magnitude | -                              | group "row" and N:M (per-row groups)         |
| wanda     | diag(H)                        | group "row" (default) and N:M                |
| sparsegpt | damped factor U (O(in^3))      | N:M only: rows are independent given U       |
| alps      | ridge, normalisation, eigh     | never: the top-k spans the layer, rho sees k |

Unstructured SparseGPT chooses its mask over all rows of a column block and ALPS
over the whole layer, so stacking q, k and v there would be a different method
(research/ecosystem.md); they share the factorisation and sweep one by one.
Every result equals ``prune_layer`` on that linear alone, up to rounding
(FAST-5).
"""

from __future__ import annotations

import torch

from rac.reference._validate import METHODS, check_choice
from rac.reference.prune import PruneResult

from . import alps as _alps
from ._validate import check_request, checked_hessian, checked_weight, output_dtype
from .factor import factor_with_recovery
from .magnitude import prune_magnitude
from .sparsegpt import dead_inputs, sparsegpt_sweep
from .wanda import prune_wanda


def prune_layer(W, H, *, method: str, sparsity=None, pattern: str = "unstructured", **options) -> PruneResult:
    """Prune one linear layer; the reference's semantics (docs/spec.md), float32 compute.

    W: (out, in) weight, torch tensor on any device or numpy. H: (in, in) symmetric PSD.
    method: "magnitude" | "wanda" | "sparsegpt" | "alps". sparsity: fraction pruned for
    "unstructured"; None for "N:M". options: as the reference (unknown names: TypeError).
    """
    check_choice(method, METHODS, "method")
    W = checked_weight(W)
    H = checked_hessian(H, W)
    pat, s, opts = check_request(method, sparsity, pattern, W.shape[1], options)
    return _prune_all([W], H, method, pat, s, opts)[0]


def prune_shared(weights: dict, H, *, method: str, sparsity=None, pattern: str = "unstructured", **options) -> dict:
    """Prune linears sharing one input (and so one H) together: {name: PruneResult} (module docstring)."""
    check_choice(method, METHODS, "method")
    if not isinstance(weights, dict) or not weights:
        raise TypeError(f"weights must be a non-empty dict {{name: W}} of linears sharing one input, got {type(weights).__name__}")
    Ws = [checked_weight(W, f"weights[{name!r}]") for name, W in weights.items()]
    in_features, device = Ws[0].shape[1], Ws[0].device
    for name, W in zip(weights, Ws):
        if W.shape[1] != in_features or W.device != device:
            raise ValueError(
                f"weights[{name!r}] must have in_features={in_features} on {device} like the first linear "
                f"(they share one input), got shape {tuple(W.shape)} on {W.device}"
            )
    H = checked_hessian(H, Ws[0])
    pat, s, opts = check_request(method, sparsity, pattern, in_features, options)
    return dict(zip(weights, _prune_all(Ws, H, method, pat, s, opts)))


def _prune_all(Ws, H, method, pat, s, opts) -> list:
    """The pruning proper for validated weights sharing H; one PruneResult per weight."""
    info = {"method": method, "pattern": str(pat), "sparsity": s, "options": opts}
    if pat.kind == "unstructured" and s == 0.0:  # GEN-3: nothing to prune, nothing changes
        return [PruneResult(W.clone(), torch.ones_like(W, dtype=torch.bool), dict(info)) for W in Ws]
    stack = pat.kind == "nm" or opts.get("group") == "row"
    if method == "magnitude":
        results = _stacked(Ws, stack, lambda W: prune_magnitude(W, pat, s, **opts))
    elif method == "wanda":
        diag_H = torch.diagonal(H)
        results = _stacked(Ws, stack, lambda W: prune_wanda(W, diag_H, pat, s, **opts))
    elif method == "sparsegpt":
        results = _sparsegpt(Ws, H, pat, s, **opts)
    else:
        results = _alps_all(Ws, H, pat, s, opts)
    return [PruneResult(weight, mask, {**info, **extra}) for weight, mask, extra in results]


def _stacked(Ws, stack: bool, prune) -> list:
    """Run ``prune`` once on the stacked rows (same dtype required) or once per weight."""
    if not stack or len(Ws) == 1 or len({W.dtype for W in Ws}) > 1:
        return [prune(W) for W in Ws]
    weight, mask, extra = prune(torch.cat(Ws, dim=0))
    sizes = [W.shape[0] for W in Ws]
    return [(w, m, dict(extra)) for w, m in zip(weight.split(sizes), mask.split(sizes))]


def _sparsegpt(Ws, H, pat, s, *, blocksize=128, dampening=0.01, on_cholesky_failure="raise_dampening") -> list:
    """One factorisation; N:M rows stacked into one sweep, unstructured swept linear by linear."""
    U, used = factor_with_recovery(H, dampening, on_cholesky_failure)
    dead = dead_inputs(H)
    extra = {"blocksize": blocksize, "dampening": used, "dampening_raised": used != dampening}

    def sweep(W32):
        return sparsegpt_sweep(W32, U, dead, pat, s, blocksize)

    if pat.kind == "nm" and len(Ws) > 1:
        weight, mask = sweep(torch.cat([W.to(torch.float32) for W in Ws], dim=0))
        sizes = [W.shape[0] for W in Ws]
        pieces = zip(weight.split(sizes), mask.split(sizes))
    else:
        pieces = (sweep(W.to(torch.float32, copy=True)) for W in Ws)
    return [(w.to(output_dtype(W)).contiguous(), m.contiguous(), dict(extra)) for W, (w, m) in zip(Ws, pieces)]


def _alps_all(Ws, H, pat, s, opts) -> list:
    """One ridge + normalisation + eigendecomposition; ADMM and CG linear by linear."""
    factor = _alps.factorise(H, opts["dampening"])
    return [_alps.solve(W, factor, pat, s, opts) for W in Ws]
