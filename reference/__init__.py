"""rac.reference: Reasoning-Aware Compression written to be read next to the paper.

Float64, explicit, one function per equation. Layer level (docs/spec.md):

- ``hessian(X, weights=None)``      H = sum_t w_t x_t x_t^T           (HES-*)
- ``objective(W, W_hat, H)``        tr((W - W_hat) H (W - W_hat)^T)   (OBJ-1)
- ``refit(W, mask, H)``             exact least squares on a mask     (REF-*)
- ``prune_layer(W, H, method=...)`` magnitude, wanda, sparsegpt, alps (GEN-*, MAG-*, WANDA-*, SGPT-*, ALPS-*)
"""

from ._validate import METHODS, Pattern, parse_pattern, pruned_count
from .hessian import hessian
from .masks import nm_mask, prune_lowest, unstructured_mask
from .objective import objective
from .prune import PruneResult, prune_layer
from .refit import refit
from .sparsegpt import CholeskyError

#: Port capabilities (docs/porting.md): what the conformance suite may ask of this implementation.
CAPABILITIES = {
    "name": "reference",
    "methods": METHODS,
    "patterns": ("unstructured", "nm"),
    "dtype": "float64",
}

__all__ = [
    "CAPABILITIES",
    "CholeskyError",
    "METHODS",
    "Pattern",
    "PruneResult",
    "hessian",
    "nm_mask",
    "objective",
    "parse_pattern",
    "prune_layer",
    "prune_lowest",
    "pruned_count",
    "refit",
    "unstructured_mask",
]
