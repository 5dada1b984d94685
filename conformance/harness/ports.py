"""Loading the implementation under test (a "port") and calling it safely (docs/porting.md).

A port is any importable object (module, class instance, namespace) with the
entry points of the levels it implements:

    layer:        prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options) -> (weight, mask)
                  and optionally hessian(X, weights=None) -> H
    calibration:  collect_calibration(model, tokenizer, prompts, *, mode, ...) -> CalibrationSet   (Phase I)
    model:        compress(model, calibration, *, method, ...) -> (model, report)                 (Phase II)

and optionally a ``CAPABILITIES`` dict::

    CAPABILITIES = {
        "name": "my-port",
        "methods": ("magnitude", "wanda", "sparsegpt", "alps"),   # the ones it implements
        "patterns": ("unstructured", "nm"),
        "dtype": "float64",          # the precision it computes in; sets the tolerances
        "devices": ("cpu",),         # where it accepts tensors; the suite uses the first (or --device)
        "options": {"sparsegpt": ("blocksize", "dampening"), ...},  # options it accepts (default: all)
        "levels": ("layer", "calibration", "model"),  # default: those whose entry point exists
        "expected_failures": "expected_failures.txt",  # or {"ID": "reason"}; see expected.py
    }

It is selected with ``--port package.module:object`` (``--port package.module``
for a module); the default is the reference, ``rac.reference``. W and H reach
the port as float64 torch tensors on the selected device; a port in another
framework converts them in a thin adapter (docs/porting.md). Whatever the port
returns is checked here (type, shape, dtype, device, finiteness) so that a
broken port fails the requirement under test with a clear message
(``PortError``), not with an obscure error deep inside a check.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rac.reference.contract import registry

ALL_PATTERNS = ("unstructured", "nm")
#: The levels of the port protocol and the entry point each needs.
LEVELS = {"layer": "prune_layer", "calibration": "collect_calibration", "model": "compress"}
DEFAULT_PORT = "rac.reference"

#: machine epsilon of the dtype a port computes in (tolerances derive from it)
EPS = {"float64": float(torch.finfo(torch.float64).eps), "float32": float(torch.finfo(torch.float32).eps)}

_KNOWN_CAPABILITIES = {"name", "methods", "patterns", "dtype", "devices", "options", "levels", "expected_failures"}


class PortError(AssertionError):
    """The port broke the calling convention (wrong return type, shape, dtype, device, NaN, ...)."""


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


def module_dir(spec: str) -> Path | None:
    """The directory of the module named in ``spec`` (where relative paths in CAPABILITIES point)."""
    module = sys.modules.get(spec.partition(":")[0])
    path = getattr(module, "__file__", None)
    return Path(path).resolve().parent if path else None


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
    devices: tuple = ("cpu",)
    device: str = "cpu"
    expected_failures: object = None  # as declared: a path (relative to the module) or a dict

    @classmethod
    def load(cls, spec: str, device: str | None = None) -> "Port":
        impl = load_object(spec)
        caps = getattr(impl, "CAPABILITIES", {}) or {}
        if not isinstance(caps, dict):
            raise ImportError(f"--port {spec!r}: CAPABILITIES must be a dict, got {type(caps).__name__}")
        unknown = sorted(set(caps) - _KNOWN_CAPABILITIES)
        if unknown:
            raise ImportError(
                f"--port {spec!r}: unknown CAPABILITIES key(s) {unknown}; known: {sorted(_KNOWN_CAPABILITIES)}"
            )
        dtype = caps.get("dtype", "float64")
        if dtype not in EPS:
            raise ImportError(f"--port {spec!r}: CAPABILITIES['dtype'] must be one of {sorted(EPS)}, got {dtype!r}")
        levels = _levels(spec, impl, caps)
        if not levels:
            raise ImportError(
                f"--port {spec!r}: object has none of the entry points {sorted(LEVELS.values())} "
                "(layer level: prune_layer(W, H, *, method, ...))"
            )
        devices = tuple(caps.get("devices", ("cpu",)))
        chosen = device or ("cpu" if "cpu" in devices else devices[0])
        if chosen not in devices:
            raise ImportError(
                f"--port {spec!r}: --device {chosen!r} is not among its CAPABILITIES['devices'] {devices}"
            )
        _check_device_available(spec, chosen)
        return cls(
            spec=spec,
            impl=impl,
            name=caps.get("name", spec),
            methods=tuple(caps.get("methods", registry.names())),
            patterns=tuple(caps.get("patterns", ALL_PATTERNS)),
            dtype=dtype,
            options=dict(caps.get("options", {})),
            levels=levels,
            devices=devices,
            device=chosen,
            expected_failures=caps.get("expected_failures"),
        )

    @property
    def eps(self) -> float:
        return EPS[self.dtype]

    def __repr__(self) -> str:  # short: hypothesis prints the port in every falsifying example
        return f"Port({self.spec!r})"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis's printer asks this before a dataclass's fields
        printer.text(repr(self))

    def supports(self, method: str, pattern: str = "unstructured") -> bool:
        """Whether the port declares ``method`` with this pattern kind (its options do not matter: PORT-7)."""
        if "layer" not in self.levels:
            return False
        kind = "unstructured" if pattern == "unstructured" else "nm"
        return method in self.methods and kind in self.patterns

    def accepts(self, method: str, option: str) -> bool:
        """Whether the port takes ``option`` for ``method`` (CAPABILITIES["options"]; undeclared: all)."""
        if method not in self.options:
            return True
        return option in self.options[method]

    def option_values(self, method: str, **wanted) -> tuple[dict, dict]:
        """(options to pass, the values in effect) for a call of ``method`` (PORT-7).

        An option the port takes is passed as wanted; one it does not take is left out, and the
        spec's default (the method registry's) is in effect: a port's fixed values must be the
        spec's defaults. So every rule is checked at the port's defaults, and an option the port
        accepts only widens what is checked.
        """
        entry = registry.get(method)
        call = {k: v for k, v in wanted.items() if self.accepts(method, k)}
        effective = {**entry.defaults(), **call}
        return call, effective

    def supports_level(self, level: str) -> bool:
        """Whether the port implements ``level`` ("layer", "calibration" or "model")."""
        return level in self.levels

    # ------------------------------------------------------------------ calibration and model levels

    def collect_calibration(self, model, tokenizer, prompts, **kwargs):
        """Phase I through the port; the result must look like a CalibrationSet (sequences, labels, meta)."""
        result = self.impl.collect_calibration(model, tokenizer, prompts, **kwargs)
        _check_calibration_set(result)
        return result

    def compress(self, model, calibration, **kwargs):
        """Phase II through the port: prunes ``model`` in place and returns (model, report)."""
        result = self.impl.compress(model, calibration, **kwargs)
        if not isinstance(result, tuple) or len(result) != 2:
            raise PortError(f"compress must return (model, report), got {type(result).__name__}")
        if result[0] is not model:
            raise PortError("compress must prune the model it was given in place and return that same object")
        report = result[1]
        if not isinstance(report, dict) or not isinstance(report.get("layers"), list):
            raise PortError(f"compress's report must be a dict with a 'layers' list, got {type(report).__name__}")
        return result

    # ------------------------------------------------------------------ layer level

    @property
    def has_hessian(self) -> bool:
        return "layer" in self.levels and callable(getattr(self.impl, "hessian", None))

    def hessian(self, X, weights=None) -> torch.Tensor:
        X_d = X.to(self.device)
        if weights is not None:
            H = self.impl.hessian(X_d, weights.to(self.device))
        else:
            H = self.impl.hessian(X_d)
        return _as_tensor(H, "hessian", (X.shape[0], X.shape[0]), self.device)

    def prune(self, W: torch.Tensor, H: torch.Tensor, *, method: str, sparsity=None, pattern="unstructured", **options):
        """Call the port on the selected device; return (weight float64, mask bool, info dict) on the CPU,
        or raise PortError."""
        result = self.impl.prune_layer(
            W.clone().to(self.device),
            H.clone().to(self.device),
            method=method,
            sparsity=sparsity,
            pattern=pattern,
            **options,
        )
        try:
            weight, mask = result[0], result[1]
        except Exception:
            raise PortError(f"GEN-1: prune_layer must return (weight, mask), got {type(result).__name__}") from None
        info = getattr(result, "info", {}) or {}
        if not isinstance(info, dict):
            raise PortError(f"GEN-1: prune_layer's result.info must be a dict, got {type(info).__name__}")
        weight = _as_tensor(weight, "weight", tuple(W.shape), self.device)
        mask = _as_tensor(mask, "mask", tuple(W.shape), self.device, boolean=True)
        return weight, mask, dict(info)


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


def _check_device_available(spec: str, device: str) -> None:
    try:
        torch.empty(0, device=device)
    except Exception as exc:
        raise ImportError(f"--port {spec!r}: device {device!r} is not available here ({exc})") from None


def _as_tensor(x, what: str, shape: tuple, device: str = "cpu", boolean: bool = False) -> torch.Tensor:
    """Check one returned array (GEN-1) and hand it to the checks as a CPU tensor (float64 or bool)."""
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            if torch.device(device).type != "cpu":
                raise PortError(
                    f"GEN-1: {what} is a numpy array but the inputs were on {device}; return a tensor there"
                )
            x = torch.from_numpy(np.array(x, copy=True))
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(x, torch.Tensor):
        raise PortError(f"GEN-1: {what} must be a torch.Tensor (or numpy array), got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise PortError(f"GEN-1: {what} must have shape {shape}, got {tuple(x.shape)}")
    if x.device != torch.device(device) and not (x.device.type == torch.device(device).type == "cuda"):
        raise PortError(f"GEN-1: {what} is on {x.device}, expected {device} (the device of the inputs)")
    if boolean:
        if x.dtype != torch.bool:
            raise PortError(f"GEN-1: {what} must have dtype bool (True = kept), got {x.dtype}")
        return x.detach().cpu()
    if not x.is_floating_point():
        raise PortError(f"GEN-1: {what} must be floating point, got {x.dtype}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise PortError(f"GEN-1: {what} holds {bad} NaN/Inf entries (of {x.numel()})")
    return x.detach().cpu().to(torch.float64)


def _check_calibration_set(cs) -> None:
    """The CalibrationSet contract (CAL-4): per sequence a 1-D int64 CPU tensor of ids and one of labels."""
    for attr in ("sequences", "labels", "meta"):
        if not hasattr(cs, attr):
            raise PortError(
                f"collect_calibration must return a CalibrationSet (sequences, labels, meta); "
                f"{type(cs).__name__} has no {attr!r}"
            )
    if len(cs.sequences) != len(cs.labels):
        raise PortError(f"collect_calibration: {len(cs.sequences)} sequences but {len(cs.labels)} label tensors")
    for i, (ids, lab) in enumerate(zip(cs.sequences, cs.labels)):
        for what, t in (("sequences", ids), ("labels", lab)):
            if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.dtype != torch.long or t.device.type != "cpu":
                desc = f"{type(t).__name__} {getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))}"
                raise PortError(f"collect_calibration: {what}[{i}] must be a 1-D int64 CPU tensor, got {desc}")
        if lab.shape != ids.shape:
            raise PortError(
                f"collect_calibration: labels[{i}] has shape {tuple(lab.shape)}, sequence {tuple(ids.shape)}"
            )
