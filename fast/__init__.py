"""rac.fast: the maths of rac.reference, fast on a GPU and honest on a CPU.

Device-agnostic torch: every function computes where its tensors live (CUDA or
CPU), in float32 with the precision policy of docs/spec.md (PREC-*), and is a
port of the conformance suite (``pytest conformance --port rac.fast``).

- ``prune_layer(W, H, method=...)``       the reference's interface and semantics  (GEN-*, FAST-*)
- ``prune_shared({name: W}, H, ...)``     linears sharing an input: one H, one factorisation
- ``hessian(X, weights=None)``            H = sum_t w_t x_t x_t^T, float32 accumulation (HES-*)
- ``HessianAccumulator(in_features)``     the same, streamed over token chunks (Phase II)

Model level (the reference's entry points, same arguments and results):

- ``collect_calibration(model, tokenizer, prompts, mode=...)``  batched decoding with a KV cache (CAL-*, EQV-1)
- ``compress(model, calibration, method=...)``                  streamed H, one block on the device at a time,
                                                                 checkpoints (P2-*, EQV-2, RES-1, MEM-1, DEV-*)

Modules: ``prune`` (dispatch through the method registry), one module per pruner
(``magnitude``, ``wanda``, ``sparsegpt`` with ``factor``/``sweep``/``triton_sweep``, ``alps``),
``masks`` (O(n) selection), ``hessian``, ``precision``; Phase I ``calibration``; Phase II
``compress`` (the block loop) with ``plan`` (devices, memory), ``blocks`` (chunks, onloading,
one block's Hessians) and ``checkpoint``.
"""

from rac.reference.contract import registry
from rac.reference.prune import PruneResult
from rac.reference.sparsegpt import CholeskyError

from .calibration import collect_calibration
from .compress import compress
from .hessian import HessianAccumulator, hessian
from .plan import InsufficientMemoryError
from .prune import prune_layer, prune_shared


def __getattr__(name):
    # read from the method registry when asked for, so a registered plug-in with a fast entry is part of it
    if name == "CAPABILITIES":
        #: Port capabilities (conformance/harness/ports.py): tolerances of the suite derive from "dtype".
        return {
            "name": "fast",
            "methods": registry.with_implementation("fast"),
            "patterns": ("unstructured", "nm"),
            "dtype": "float32",
            "devices": ("cpu", "cuda"),  # the suite runs on "cpu" unless --device cuda
            "levels": ("layer", "calibration", "model"),
        }
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPABILITIES",
    "CholeskyError",
    "HessianAccumulator",
    "InsufficientMemoryError",
    "PruneResult",
    "collect_calibration",
    "compress",
    "hessian",
    "prune_layer",
    "prune_shared",
]
