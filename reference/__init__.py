"""rac.reference: Reasoning-Aware Compression written to be read next to the paper.

Float64, explicit, one function per equation. Layer level (docs/spec.md):

- ``hessian(X, weights=None)``      H = sum_t w_t x_t x_t^T           (HES-*)
- ``objective(W, W_hat, H)``        tr((W - W_hat) H (W - W_hat)^T)   (OBJ-1)
- ``refit(W, mask, H)``             exact least squares on a mask     (REF-*)
- ``prune_layer(W, H, method=...)`` magnitude, wanda, sparsegpt, alps (GEN-*, MAG-*, WANDA-*, SGPT-*, ALPS-*)

Model level (Algorithm 1):

- ``collect_calibration(model, tokenizer, prompts, mode=...)``  Phase I, tokens with source labels (CAL-*)
- ``compress(model, calibration, method=...)``                  Phase II, block by block (P2-*)

The rules every implementation shares (argument checks, the method registry, patterns and
counts, model access) are the bottom layer, ``rac.reference.contract``.
"""

from importlib.metadata import PackageNotFoundError, version

from .calibration import collect_calibration
from .calibration_set import LABELS, CalibrationSet
from .compress import compress
from .given_traces import GivenTrace
from .contract import registry
from .contract.patterns import Pattern, parse_pattern, pruned_count
from .hessian import hessian
from .masks import nm_mask, prune_lowest, unstructured_mask
from .objective import objective
from .prune import PruneResult, prune_layer
from .refit import refit
from .sparsegpt import CholeskyError

try:
    __version__ = version("rac-spec")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"


def __getattr__(name):
    # CAPABILITIES is read from the method registry when asked for, so a pruner registered after
    # this import (a plug-in) is part of it.
    if name == "CAPABILITIES":
        #: Port capabilities (docs/porting.md): what the conformance suite may ask of this implementation.
        return {
            "name": "reference",
            "methods": registry.with_implementation("reference"),
            "patterns": ("unstructured", "nm"),
            "dtype": "float64",
            "levels": ("layer", "calibration", "model"),
        }
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPABILITIES",
    "CalibrationSet",
    "CholeskyError",
    "GivenTrace",
    "LABELS",
    "Pattern",
    "PruneResult",
    "collect_calibration",
    "compress",
    "hessian",
    "nm_mask",
    "objective",
    "parse_pattern",
    "prune_layer",
    "prune_lowest",
    "pruned_count",
    "refit",
    "registry",
    "unstructured_mask",
    "__version__",
]
