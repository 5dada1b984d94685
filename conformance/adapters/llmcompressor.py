"""A real port: llm-compressor's SparseGPT and Wanda, driven through their own functions.

    nox -s conformance_llmcompressor        # the suite against it (docs/ports/llmcompressor.md)
    pytest conformance --port rac.conformance.adapters.llmcompressor

This adapter only TRANSLATES conventions; it never corrects llm-compressor's
behaviour, because the point is to find where that behaviour departs from
docs/spec.md. Every call goes through the same two steps a user's
``oneshot(..., recipe=SparseGPTModifier(...))`` goes through:

1. the modifier object (``SparseGPTModifier`` / ``WandaPruningModifier``), so
   the user-facing validation of sparsity, mask_structure and option names is
   theirs, not ours;
2. the modifier's functional step (``sgpt_sparsify.sparsify_weight`` /
   ``wanda_sparsify.sparsify_weight``) on a ``torch.nn.Linear`` holding W, with
   the arguments ``compress_modules`` passes, under ``torch.no_grad()`` as there.

Translations (each a convention, not a behaviour):

- N:M: rac-spec's N is the number KEPT (NM-2); llm-compressor's
  ``mask_structure="N:M"`` counts N PRUNED. "N:M" becomes ``f"{M-N}:{M}"``;
  "unstructured" becomes their ``"0:0"``. A string that is not two integers is
  passed on unchanged, so their parser reports it.
- H: rac-spec's H = sum_t x_t x_t^T; theirs is a running mean, 2/n_samples per
  token (``accumulate_hessian``): a positive multiple, which INV-1 allows, so H
  is passed as it is, cast to their float32 (``SGPT_PRECISION``). The cast is a
  copy, which is what their dict hand-over (``del hessians_dict[module]``) means:
  the function owns the tensor it is given and edits it in place.
- Wanda's statistic: their ``row_scalars`` are the running mean of ||X_j||^2,
  i.e. diag(H) up to the same kind of positive scale: diag(H) in float32.
- Options: ``blocksize`` -> ``block_size``, ``dampening`` -> ``dampening_frac``
  (both relative to mean(diag H), default 0.01, block 128, as ours). Any other
  option name goes to their modifier unchanged (its pydantic model forbids
  extra fields, so it reports unknown names itself).
- Dtype: W becomes the float32 weight of an nn.Linear (their computation is
  float32 whatever the module dtype; float32 is what makes the write-back exact).
- Mask: their functions return only the weight; the mask is its zero pattern,
  ``weight != 0``, which is how llm-compressor's exporters (compressed-tensors'
  sparse bitmask) read it too.

``hessian(X)`` drives their ``accumulate_hessian`` with X as one calibration
sample; it has no per-token weights, so ``weights`` raises TypeError (every
position fed to the hook is counted, padding included).
"""

from __future__ import annotations

import re

import torch

from llmcompressor.modifiers.pruning.sparsegpt.base import SparseGPTModifier
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import (
    accumulate_hessian,
    make_empty_hessian,
)
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight as sgpt_sparsify_weight
from llmcompressor.modifiers.pruning.wanda.base import WandaPruningModifier
from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import sparsify_weight as wanda_sparsify_weight

try:
    from importlib.metadata import version as _version

    LLMCOMPRESSOR_VERSION = _version("llmcompressor")
except Exception:  # pragma: no cover - metadata missing in an odd install
    LLMCOMPRESSOR_VERSION = "unknown"

#: our option name -> the modifier field it translates to
_OPTION_NAMES = {"sparsegpt": {"blocksize": "block_size", "dampening": "dampening_frac"}, "wanda": {}}
_MODIFIERS = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}
_NM = re.compile(r"^(-?\d+):(-?\d+)$")

CAPABILITIES = {
    "name": f"llmcompressor-{LLMCOMPRESSOR_VERSION}",
    "methods": ("sparsegpt", "wanda"),
    "patterns": ("unstructured", "nm"),
    "dtype": "float32",
    "options": {"sparsegpt": ("blocksize", "dampening"), "wanda": ()},
    "levels": ("layer",),
    "expected_failures": "llmcompressor.xfail",
}


def mask_structure(pattern) -> str:
    """rac-spec pattern -> llm-compressor ``mask_structure``: "N:M" (N kept) -> "(M-N):M" (N pruned)."""
    if pattern == "unstructured":
        return "0:0"
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        return pattern  # not ours to interpret: their parser reports it
    kept, m = int(match.group(1)), int(match.group(2))
    return f"{m - kept}:{m}"


def _linear(W: torch.Tensor) -> torch.nn.Linear:
    """The nn.Linear whose weight is W in float32 (their functions take a module, not a tensor)."""
    W = torch.as_tensor(W)
    if W.dim() != 2:
        # not a finding: there is no nn.Linear to hand them; the protocol's W is (out, in)
        raise ValueError(
            f"W must be 2-D (out, in) to build the nn.Linear llm-compressor prunes, got shape {tuple(W.shape)}"
        )
    module = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=torch.float32)
    with torch.no_grad():
        module.weight.copy_(W.to(torch.float32))
    return module


def prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Prune W (out, in) with llm-compressor's ``method`` ("sparsegpt" or "wanda"); returns (weight, mask)."""
    if method not in _MODIFIERS:
        # not a finding either: a recipe cannot name a modifier that does not exist
        raise ValueError(f"method must be one of {tuple(_MODIFIERS)} (llm-compressor port), got {method!r}")
    names = _OPTION_NAMES[method]
    fields = {names.get(k, k): v for k, v in options.items()}
    modifier = _MODIFIERS[method](sparsity=sparsity, mask_structure=mask_structure(pattern), **fields)
    module = _linear(W)
    H = torch.as_tensor(H)
    with torch.no_grad():  # as their compress_modules
        if method == "sparsegpt":
            _loss, weight = sgpt_sparsify_weight(
                module=module,
                hessians_dict={module: H.to(torch.float32)},  # a copy they own and edit in place
                sparsity=sparsity,
                prune_n=modifier._prune_n,
                prune_m=modifier._prune_m,
                block_size=modifier.block_size,
                dampening_frac=modifier.dampening_frac,
                preserve_sparsity_mask=modifier.preserve_sparsity_mask,
            )
        else:
            row_scalars = torch.diagonal(H).to(torch.float32)  # mean ||X_j||^2 = diag(H) up to scale
            weight = wanda_sparsify_weight(
                module=module,
                row_scalars_dict={module: row_scalars},
                sparsity=sparsity,
                prune_n=modifier._prune_n,
                prune_m=modifier._prune_m,
            )
    return weight, weight != 0


def hessian(X, weights=None) -> torch.Tensor:
    """Their ``accumulate_hessian`` on X (in, N) fed as one sample of N tokens: H = 2 X X^T in float32."""
    if weights is not None:
        raise TypeError(
            "weights: llm-compressor's accumulate_hessian takes no per-token weights; "
            "every position fed to the hook is counted (padding too)"
        )
    X = torch.as_tensor(X)
    module = torch.nn.Linear(X.shape[0], 1, bias=False, dtype=torch.float32)
    H = make_empty_hessian(module)
    H, _ = accumulate_hessian(X.T.to(torch.float32), module, H, 0)
    return H
