"""Deliberately broken ports for the self-test (docs/spec.md SELF-1; ``python -m rac.conformance.harness.selftest``).

Every mutant is the reference with exactly one plausible bug, at one level of
the port protocol; the suite must reject it and name a requirement it was built
to break. Modules, one per level, each with a ``MUTANTS`` dict of ``Mutant``:

- ``ports``: layer level (prune_layer, hessian)
- ``calibration``: Phase I (collect_calibration)
- ``model``: Phase II (compress)

To add one: write the broken entry point (a wrapper or a patched copy of the
reference's), build the port with ``reference_port(name, <entry point>=fn)``, and
register ``Mutant(port, level, {IDs it must fail}, "the bug")`` under its name in
the module of its level; ``--port rac.conformance.mutants.<module>:<name>``
selects it by hand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import SimpleNamespace

import rac.reference as ref

LEVEL_MODULES = {"layer": "ports", "calibration": "calibration", "model": "model"}


@dataclass(frozen=True)
class Mutant:
    port: object
    level: str  # "layer", "calibration" or "model": the tests the self-test runs against it
    expected: frozenset  # requirement IDs the suite must report failing (at least one of them)
    bug: str

    def __post_init__(self):
        if self.level not in LEVEL_MODULES:
            raise ValueError(f"level must be one of {sorted(LEVEL_MODULES)}, got {self.level!r}")
        object.__setattr__(self, "expected", frozenset(self.expected))


def reference_port(name: str, **entry_points) -> SimpleNamespace:
    """The reference as a port namespace (every level), with some entry points replaced."""
    fns = dict(prune_layer=ref.prune_layer, hessian=ref.hessian,
               collect_calibration=ref.collect_calibration, compress=ref.compress)
    unknown = set(entry_points) - set(fns)
    if unknown:
        raise TypeError(f"reference_port: unknown entry point(s) {sorted(unknown)}; known: {sorted(fns)}")
    fns.update(entry_points)
    return SimpleNamespace(CAPABILITIES=dict(ref.CAPABILITIES, name=name), **fns)


#: The unbroken reference through the same wrapper: must pass whatever the mutants fail.
control = reference_port("control")


def all_mutants() -> dict:
    """name -> (port spec, Mutant) over every level."""
    out = {}
    for level, module_name in LEVEL_MODULES.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        for name, mutant in module.MUTANTS.items():
            if name in out:
                raise ValueError(f"mutant name {name!r} is used twice")
            if mutant.level != level:
                raise ValueError(f"mutant {name!r} is registered in {module_name} but has level {mutant.level!r}")
            out[name] = (f"{module.__name__}:{name}", mutant)
    return out


class patched:
    """Temporarily replace attributes of a module (restored on exit, also after an error).

    Checks that each attribute exists, so a mutant whose target was renamed in the
    reference fails loudly at import, instead of silently testing nothing."""

    def __init__(self, module, **attrs):
        missing = [name for name in attrs if not hasattr(module, name)]
        if missing:
            raise AttributeError(f"{module.__name__} has no {missing}: update the mutant")
        self.module, self.attrs, self.saved = module, attrs, {}

    def __enter__(self):
        for name, value in self.attrs.items():
            self.saved[name] = getattr(self.module, name)
            setattr(self.module, name, value)
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(self.module, name, value)
        return False
