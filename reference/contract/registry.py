"""The method registry: every pruner, its patterns, its options and its implementations, in one table.

A pruner is one module per implementation plus one ``Method`` entry here (CONTRIBUTING.md,
"Adding a pruner"). Everything that needs the list of methods reads it from this table:
argument validation (``check_request``, spec GEN-5), ``rac.reference.prune_layer`` and
``rac.fast.prune_layer`` (dispatch), the ``rac`` command's ``--method`` choices, the conformance
suite's parametrisation and its comparison groups (CNT-2), and the ports' ``CAPABILITIES``.
An unknown method is a ``ValueError`` naming the registered ones, everywhere: nothing falls back.

Implementations are named as ``"package.module:function"`` strings and imported on first use,
so this table (the bottom layer) imports nothing from the layers above it. Their signatures:

    reference(W, H, pattern, sparsity, **options) -> (W_hat, mask, info)
        W float64 (out, in) and H float64 (in, in) on the CPU, both validated; pattern a ``Pattern``;
        sparsity the fraction pruned (1 - N/M for N:M); options complete and checked.
    fast(Ws, H, pattern, sparsity, **options) -> [(W_hat, mask, info), ...]
        the linears ``Ws`` (validated, on one device, any float dtype) that read one input, so they
        share ``H`` (validated, on their device); one result per linear, W_hat in its dtype
        (``rac.fast.prune_shared``; ``rac.fast.prune_layer`` calls it with one linear).

Third-party pruners register with ``register(Method(...))`` when their module is imported, or
through the ``rac.methods`` entry-point group of an installed package (the entry point names a
module, imported once when the registry is first listed, or a ``Method``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from .patterns import PATTERN_KINDS, Pattern, check_sparsity_for_pattern, parse_pattern
from .values import (
    check_choice,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    one_of,
)

#: Comparison groups of unstructured sparsity (CNT-2): the whole matrix, each output row, or
#: SparseGPT's column blocks (all rows x ``blocksize`` columns).
GROUPS = ("layer", "row", "block")
#: Entry-point group through which installed packages add pruners.
ENTRY_POINT_GROUP = "rac.methods"


@dataclass(frozen=True)
class Option:
    """One option of a pruner: its default and ``check(value, name) -> value`` (ValueError naming it)."""

    default: object
    check: Callable
    doc: str = ""


@dataclass(frozen=True)
class Method:
    """A registry entry (module docstring).

    name: what users pass as ``method``. reference / fast: the implementations ("module:function"
    or a callable; fast None: the method has no rac.fast implementation). patterns: the pattern
    kinds it supports. options: name -> ``Option``. group: its comparison group for unstructured
    sparsity (CNT-2), or None when the option ``group`` chooses it. summary: one line for help texts.
    core_rules: the spec IDs without which a port's implementation of the method is "not verified"
    (docs/porting.md, "Coverage"): a conformance run must have checked each (or found it not
    applicable to the port, by its own declaration).
    """

    name: str
    reference: object
    fast: object = None
    patterns: tuple = PATTERN_KINDS
    options: dict = field(default_factory=dict)
    group: str | None = None
    summary: str = ""
    core_rules: tuple = ("GEN-1", "GEN-2", "CNT-1", "NM-1")

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"Method.name must be an identifier-like string, got {self.name!r}")
        unknown = set(self.patterns) - set(PATTERN_KINDS)
        if unknown or not self.patterns:
            raise ValueError(f"Method {self.name!r}: patterns must be a non-empty subset of {PATTERN_KINDS}, "
                             f"got {self.patterns!r}")
        for key, opt in self.options.items():
            if not isinstance(opt, Option):
                raise TypeError(f"Method {self.name!r}: options[{key!r}] must be an Option(default, check)")
        choices = getattr(self.options.get("group"), "check", None)
        if self.group is None and "group" not in self.options:
            raise ValueError(f"Method {self.name!r}: give group= (one of {GROUPS}) or a 'group' option")
        if self.group is not None and self.group not in GROUPS:
            raise ValueError(f"Method {self.name!r}: group must be one of {GROUPS}, got {self.group!r}")
        if choices is not None and not set(getattr(choices, "choices", ())) <= set(GROUPS):
            raise ValueError(f"Method {self.name!r}: the 'group' option may only choose among {GROUPS}")

    def defaults(self) -> dict:
        """{option: default value}."""
        return {key: opt.default for key, opt in self.options.items()}

    def check_options(self, options: dict) -> dict:
        """``options`` with the defaults filled in, each checked; unknown names: TypeError (GEN-5)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; it accepts: {known}")
        out = self.defaults()
        out.update(options)
        for key, opt in self.options.items():
            out[key] = opt.check(out[key], key)
        return out

    def comparison_group(self, options: dict | None = None) -> str:
        """The comparison group of unstructured sparsity under ``options`` (CNT-2)."""
        if self.group is not None:
            return self.group
        return (options or {}).get("group", self.options["group"].default)

    def implementation(self, which: str):
        """The function of ``which`` ("reference" or "fast"); ValueError when there is none."""
        check_choice(which, ("reference", "fast"), "which")
        target = getattr(self, which)
        if target is None:
            raise ValueError(f"method {self.name!r} has no rac.{which} implementation (docs/spec.md, registry)")
        return resolve(target)


def resolve(target):
    """A callable, or the function named by ``"package.module:function"``."""
    if callable(target):
        return target
    module_name, _, attr = str(target).partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


_REGISTRY: dict = {}
_PLUGINS_LOADED = False


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (ValueError if the name is taken, unless ``replace``)."""
    if not isinstance(method, Method):
        raise TypeError(f"register() takes a Method, got {type(method).__name__}")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a registered method (tests register throwaway pruners and take them away again)."""
    _REGISTRY.pop(name, None)


def _load_plugins() -> None:
    """Import the ``rac.methods`` entry points of installed packages, once."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, Method) and obj.name not in _REGISTRY:
            register(obj)


def names() -> tuple:
    """The registered method names, built-in first, in registration order."""
    _load_plugins()
    return tuple(_REGISTRY)


def get(name) -> Method:
    """The entry of method ``name``; ValueError naming the registered methods otherwise (GEN-5)."""
    _load_plugins()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"method must be one of {', '.join(map(repr, _REGISTRY))}; got {name!r}")
    return _REGISTRY[name]


def with_implementation(which: str) -> tuple:
    """The names of the methods that have a ``which`` ("reference" / "fast") implementation."""
    return tuple(name for name in names() if getattr(_REGISTRY[name], which) is not None)


def check_request(method, sparsity, pattern, in_features: int, options: dict):
    """Validate a pruning request without pruning: (Pattern, sparsity, options with defaults) (GEN-5).

    The model level calls this for every target linear before any weight changes, so a bad
    option fails the run at once instead of after the first blocks (P2-9).
    """
    entry = get(method)
    pat = parse_pattern(pattern, in_features)
    if pat.kind not in entry.patterns:
        raise ValueError(f"pattern {str(pat)!r}: method {method!r} supports only {', '.join(entry.patterns)} patterns")
    s = check_sparsity_for_pattern(sparsity, pat)
    return pat, s, entry.check_options(dict(options))


# --------------------------------------------------------------------------- the built-in pruners (spec section 4)

register(Method(
    "magnitude",
    reference="rac.reference.magnitude:prune_magnitude",
    fast="rac.fast.magnitude:prune_group",
    options={"group": Option("layer", one_of("layer", "row"), "comparison group (CNT-2)")},
    summary="keep the largest |W_ij| (MAG-*)",
    core_rules=("MAG-1", "MAG-2", "CNT-1", "NM-1"),
))
register(Method(
    "wanda",
    reference="rac.reference.wanda:prune_wanda",
    fast="rac.fast.wanda:prune_group",
    options={"group": Option("row", one_of("row", "layer"), "comparison group (CNT-2)")},
    summary="keep the largest |W_ij| sqrt(H_jj), per output row (WANDA-*)",
    core_rules=("WANDA-1", "WANDA-2", "WANDA-3", "WANDA-4", "CNT-1", "NM-1"),
))
register(Method(
    "sparsegpt",
    reference="rac.reference.sparsegpt:prune_sparsegpt",
    fast="rac.fast.sparsegpt:prune_group",
    group="block",
    options={
        "blocksize": Option(128, check_positive_int, "columns per adaptive mask block (SGPT-4)"),
        "dampening": Option(0.01, check_nonnegative_float, "relative dampening of H (SGPT-2)"),
        "on_cholesky_failure": Option("raise_dampening", one_of("raise_dampening", "raise"), "SGPT-8"),
    },
    summary="optimal brain surgeon column by column with adaptive masks (SGPT-*)",
    core_rules=("SGPT-1", "SGPT-2", "SGPT-3", "SGPT-4", "SGPT-5", "SGPT-6", "SGPT-8", "CNT-1", "NM-1"),
))
register(Method(
    "alps",
    reference="rac.reference.alps:prune_alps",
    fast="rac.fast.alps:prune_group",
    group="layer",
    options={
        "dampening": Option(0.01, check_nonnegative_float, "ridge as a fraction of mean(diag H)"),
        "rho0": Option(0.1, check_positive_float, "initial ADMM penalty"),
        "max_iter": Option(300, check_positive_int, "ADMM iterations at most"),
        "min_iter": Option(30, check_nonnegative_int, "the settled-support stop applies after this many"),
        "update_every": Option(3, check_positive_int, "rho is updated every this many iterations"),
        "rho_max": Option(1e6, check_positive_float, "cap on rho"),
        "cg_iters": Option(10, check_nonnegative_int, "conjugate-gradient iterations on the final support"),
        "cg_rtol": Option(1e-4, check_nonnegative_float, "CG stops at this relative residual per row"),
    },
    summary="ADMM with a rising penalty, then CG on the support (ALPS-*)",
    core_rules=("ALPS-1", "ALPS-2", "CNT-1", "NM-1"),
))

#: The pruners of docs/spec.md (GEN-1), in the spec's order; ``names()`` adds registered plug-ins.
BUILTIN_METHODS = ("magnitude", "wanda", "sparsegpt", "alps")

__all__ = [
    "BUILTIN_METHODS", "ENTRY_POINT_GROUP", "GROUPS", "Method", "Option", "Pattern", "check_request", "get", "names",
    "register", "resolve", "unregister", "with_implementation",
]
