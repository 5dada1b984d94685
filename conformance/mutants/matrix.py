"""The self-test's settings of a port: float64 or float32, taking every option or none (SELF-1).

    --port rac.conformance.mutants.matrix:<name>__<f64|f32>__<options|defaults>

``<name>`` is a layer-level mutant (``mutants.ports``), ``control`` (the unbroken reference), or
``fast`` (rac.fast). The setting changes what the port declares and how it is called, never its bug:

- ``f32``: declares dtype float32, so the suite holds it to float32 tolerances; it computes on its
  inputs rounded to float32 and returns float32 weights (an in-place change of its rounded inputs is
  copied back, so a port that modifies its input still does);
- ``defaults``: declares no options for any method (``options: {m: ()}``) and refuses any option
  with a TypeError naming it, as a port whose values are fixed at the spec's defaults does; the suite
  then checks every rule at those defaults (PORT-7).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

SETTINGS = tuple((dtype, options) for dtype in ("f64", "f32") for options in ("options", "defaults"))


def variant(base, name: str, dtype: str, options: str) -> SimpleNamespace:
    """``base`` (a port namespace or module with CAPABILITIES and prune_layer) in one setting."""
    caps = dict(base.CAPABILITIES)
    caps["name"] = f"{name}-{dtype}-{options}"
    if dtype == "f32":
        caps["dtype"] = "float32"
    if options == "defaults":
        caps["options"] = {m: () for m in caps.get("methods", ())}

    def prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **opts):
        if options == "defaults" and opts:
            raise TypeError(f"unknown option(s) {', '.join(sorted(opts))} for method {method!r}: "
                            "this port takes none (its values are the spec's defaults)")
        if dtype == "f64" or not isinstance(W, torch.Tensor):
            return base.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **opts)
        W32 = W.to(torch.float32).to(W.dtype)
        before = W32.clone()
        H32 = H.to(torch.float32).to(H.dtype) if isinstance(H, torch.Tensor) else H
        result = base.prune_layer(W32, H32, method=method, sparsity=sparsity, pattern=pattern, **opts)
        if not torch.equal(W32, before):
            W.copy_(W32)  # the port modified its input
        return _Result(result[0].to(torch.float32), result[1], getattr(result, "info", {}))

    fns = {"CAPABILITIES": caps, "prune_layer": prune_layer}
    hessian = getattr(base, "hessian", None)
    if hessian is not None:
        def hessian_variant(X, weights=None):
            if dtype == "f32" and isinstance(X, torch.Tensor):
                X = X.to(torch.float32)
                return hessian(X, weights).to(torch.float32)
            return hessian(X, weights)

        fns["hessian"] = hessian_variant
    return SimpleNamespace(**fns)


class _Result(tuple):
    def __new__(cls, weight, mask, info):
        self = super().__new__(cls, (weight, mask))
        self.info = info
        return self


def _base(name: str):
    if name == "control":
        from . import control

        return control
    if name == "fast":
        import rac.fast

        return rac.fast
    from .ports import MUTANTS

    if name not in MUTANTS:
        raise AttributeError(f"no layer-level mutant {name!r}; known: control, fast, {', '.join(sorted(MUTANTS))}")
    return MUTANTS[name].port


def __getattr__(attr: str):
    name, _, rest = attr.partition("__")
    dtype, _, options = rest.partition("__")
    if (dtype, options) not in SETTINGS:
        raise AttributeError(f"{attr!r}: expected <name>__<f64|f32>__<options|defaults>")
    port = variant(_base(name), name, dtype, options)
    port.CAPABILITIES["levels"] = ("layer",)
    return port
