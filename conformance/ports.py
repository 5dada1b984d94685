"""Loading the implementation under test (a "port") and calling it safely.

A port is any importable object (module, class instance, namespace) with

    prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options) -> (weight, mask)

and optionally ``hessian(X, weights=None)``, the model-level entry points
``collect_calibration(model, tokenizer, prompts, *, mode, ...)`` (Phase I) and
``compress(model, calibration, *, method, ...)`` (Phase II), and a ``CAPABILITIES`` dict::

    CAPABILITIES = {
        "name": "my-port",
        "methods": ("magnitude", "wanda", "sparsegpt", "alps"),   # the ones it implements
        "patterns": ("unstructured", "nm"),
        "dtype": "float64",          # the precision it computes in; sets the tolerances
        "options": {"sparsegpt": ("blocksize", "dampening"), ...},  # options it accepts (default: all)
        "levels": ("layer", "calibration", "model"),  # default: those whose entry point exists
    }

It is selected with ``--port package.module:object`` (``--port package.module``
for a module); the default is the reference, ``rac.reference``. W and H reach
the port as float64 CPU torch tensors; a port in another framework converts
them in a thin adapter (docs/porting.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch

ALL_METHODS = ("magnitude", "wanda", "sparsegpt", "alps")
ALL_PATTERNS = ("unstructured", "nm")
#: The levels of the port protocol and the entry point each needs.
LEVELS = {"layer": "prune_layer", "calibration": "collect_calibration", "model": "compress"}
DEFAULT_PORT = "rac.reference"

#: machine epsilon of the dtype a port computes in (tolerances derive from it)
EPS = {"float64": float(torch.finfo(torch.float64).eps), "float32": float(torch.finfo(torch.float32).eps)}


class PortError(AssertionError):
    """The port broke the calling convention (wrong return shape, dtype, ...)."""


def load_object(spec: str):
    """Import ``package.module:attribute.path`` (or a bare module path)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # report, do not crash the run
        raise ImportError(f"--port {spec!r}: cannot import module {module_name!r}: {exc!r}") from exc
    for part in filter(None, attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"--port {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


@dataclass
class Port:
    """The implementation under test plus what it declares it can do."""

    spec: str
    impl: object
    name: str
    methods: tuple
    patterns: tuple
    dtype: str
    options: dict = field(default_factory=dict)
    levels: tuple = ("layer",)

    @classmethod
    def load(cls, spec: str) -> "Port":
        impl = load_object(spec)
        if not callable(getattr(impl, "prune_layer", None)):
            raise ImportError(f"--port {spec!r}: object has no callable prune_layer(W, H, *, method, ...)")
        caps = dict(getattr(impl, "CAPABILITIES", {}) or {})
        dtype = caps.get("dtype", "float64")
        if dtype not in EPS:
            raise ImportError(f"--port {spec!r}: CAPABILITIES['dtype'] must be one of {sorted(EPS)}, got {dtype!r}")
        return cls(
            spec=spec,
            impl=impl,
            name=caps.get("name", spec),
            methods=tuple(caps.get("methods", ALL_METHODS)),
            patterns=tuple(caps.get("patterns", ALL_PATTERNS)),
            dtype=dtype,
            options=dict(caps.get("options", {})),
            levels=_levels(spec, impl, caps),
        )

    @property
    def eps(self) -> float:
        return EPS[self.dtype]

    def supports(self, method: str, pattern: str = "unstructured", options=()) -> bool:
        kind = "unstructured" if pattern == "unstructured" else "nm"
        if method not in self.methods or kind not in self.patterns:
            return False
        if method in self.options:
            return set(options) <= set(self.options[method])
        return True

    def supports_level(self, level: str) -> bool:
        """Whether the port implements ``level`` ("layer", "calibration" or "model")."""
        return level in self.levels

    def collect_calibration(self, model, tokenizer, prompts, **kwargs):
        """Phase I through the port; the result must look like a CalibrationSet (sequences, labels)."""
        return self.impl.collect_calibration(model, tokenizer, prompts, **kwargs)

    def compress(self, model, calibration, **kwargs):
        """Phase II through the port: returns (model, report)."""
        return self.impl.compress(model, calibration, **kwargs)

    @property
    def has_hessian(self) -> bool:
        return callable(getattr(self.impl, "hessian", None))

    def hessian(self, X, weights=None) -> torch.Tensor:
        H = self.impl.hessian(X, weights) if weights is not None else self.impl.hessian(X)
        return _as_tensor(H, "hessian", (X.shape[0], X.shape[0]))

    def prune(self, W: torch.Tensor, H: torch.Tensor, *, method: str, sparsity=None, pattern="unstructured", **options):
        """Call the port; return (weight float64, mask bool, info dict) or raise PortError."""
        result = self.impl.prune_layer(
            W.clone(), H.clone(), method=method, sparsity=sparsity, pattern=pattern, **options
        )
        try:
            weight, mask = result[0], result[1]
        except Exception:
            raise PortError(f"prune_layer must return (weight, mask), got {type(result).__name__}") from None
        info = dict(getattr(result, "info", {}) or {})
        weight = _as_tensor(weight, "weight", tuple(W.shape))
        mask = _as_tensor(mask, "mask", tuple(W.shape), boolean=True)
        return weight, mask, info


def _levels(spec: str, impl, caps: dict) -> tuple:
    """Declared levels (checked against the entry points), else every level whose entry point exists."""
    if "levels" not in caps:
        return tuple(level for level, fn in LEVELS.items() if callable(getattr(impl, fn, None)))
    levels = tuple(caps["levels"])
    for level in levels:
        if level not in LEVELS:
            raise ImportError(f"--port {spec!r}: CAPABILITIES['levels'] has {level!r}; known levels: {sorted(LEVELS)}")
        if not callable(getattr(impl, LEVELS[level], None)):
            raise ImportError(f"--port {spec!r}: declares level {level!r} but has no callable {LEVELS[level]}")
    return levels


def _as_tensor(x, what: str, shape: tuple, boolean: bool = False) -> torch.Tensor:
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.array(x, copy=True))
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(x, torch.Tensor):
        raise PortError(f"{what} must be a torch.Tensor (or numpy array), got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise PortError(f"{what} must have shape {shape}, got {tuple(x.shape)}")
    if boolean:
        if x.dtype != torch.bool:
            raise PortError(f"{what} must have dtype bool (True = kept), got {x.dtype}")
        return x.detach().cpu()
    if not x.is_floating_point():
        raise PortError(f"{what} must be floating point, got {x.dtype}")
    return x.detach().cpu().to(torch.float64)
