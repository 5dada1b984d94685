"""LAYER-1: imports run one way only (CONTRIBUTING.md, "Layers").

Bottom up: ``rac.reference.contract`` (argument checks, method registry, patterns and counts,
model access) < ``rac.reference`` (the maths, float64) < ``rac.fast`` < ``rac.cli`` (the ``rac``
command and the application). ``rac.fixtures`` (bundled data) imports none of them; the
conformance suite may import anything. Across layers only public names of public modules are
imported (no ``_private`` module or name). Every import statement counts, also one inside a
function (a lazy import is still a dependency).

The source files are parsed, not imported, so the test sees every arrow whatever is installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rac.conformance.checking.helpers import req

ROOT = Path(__file__).resolve().parents[2]
#: source folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"reference": "rac.reference", "fast": "rac.fast", "cli": "rac.cli", "fixtures": "rac.fixtures",
            "conformance": "rac.conformance"}
#: layer -> the layers it may import (itself included)
ALLOWED = {
    "contract": {"contract"},
    "reference": {"contract", "reference"},
    "fast": {"contract", "reference", "fast"},
    "fixtures": {"fixtures"},
    "cli": {"contract", "reference", "fast", "fixtures", "cli"},
    "conformance": {"contract", "reference", "fast", "fixtures", "cli", "conformance"},
}
#: build scripts of the bundled data (run by hand to remake it), not modules of the package
SCRIPTS = ("fixtures/build_fixtures.py", "fixtures/toy-reasoner/train.py")


def layer_of(module: str) -> str | None:
    """The layer of a ``rac.*`` module name, None for anything outside rac."""
    if module == "rac.reference.contract" or module.startswith("rac.reference.contract."):
        return "contract"
    for layer in ("reference", "fast", "cli", "fixtures", "conformance"):
        if module == f"rac.{layer}" or module.startswith(f"rac.{layer}."):
            return layer
    return None


def module_name(relpath: str) -> str:
    """``reference/contract/registry.py`` -> ``rac.reference.contract.registry`` (``__init__`` -> the package)."""
    parts = list(Path(relpath).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool):
    """(line, imported module, imported names) for every import statement, relative ones made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, tuple(alias.name for alias in node.names)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # __version__ is public


def violations(files: dict) -> list:
    """Arrows that break the layering, as strings; ``files`` maps a repository path to its source."""
    found = []
    for relpath, source in sorted(files.items()):
        if relpath in SCRIPTS:
            continue
        module = module_name(relpath)
        source_layer = layer_of(module)
        for line, target, names in imports(source, module, relpath.endswith("__init__.py")):
            target_layer = layer_of(target)
            if target_layer is None or source_layer == "conformance":
                continue
            where = f"{relpath}:{line} ({source_layer}) imports {target}"
            if target_layer not in ALLOWED[source_layer]:
                found.append(f"{where}: the {target_layer} layer is above {source_layer}")
            elif target_layer != source_layer:
                private = [p for p in (*target.split("."), *names) if _is_private(p)]
                if private:
                    found.append(f"{where}: private {private} of another layer")
    return found


def source_files() -> dict:
    files = {}
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            files[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    return files


@req("LAYER-1")
def test_layer_1_imports_run_one_way():
    """LAYER-1: no import in the package runs from a lower layer to a higher one, or to a private name."""
    files = source_files()
    if "reference/contract/registry.py" not in files:
        pytest.skip(
            "the source tree is not next to this test (an installed copy): the layering is checked in a checkout"
        )
    assert violations(files) == []


@req("LAYER-1")
@pytest.mark.parametrize(
    "relpath, line, why",
    [
        ("reference/compress.py", "from rac.fast import compress", "above"),  # reference -> fast
        ("reference/contract/validate.py", "from ..prune import PruneResult", "above"),  # contract -> reference
        ("reference/calibration.py", "    from rac.fixtures import PROBLEMS", "above"),  # lazy import counts
        ("fast/prune.py", "from rac.cli.export import load_model", "above"),  # fast -> application
        ("fixtures/layers.py", "import rac.reference", "above"),  # data -> code
        ("fast/hessian.py", "from rac.reference.calibration import _Row", "private"),  # private name
        ("cli/commands/prune.py", "from rac.fast._validate import checked_weight", "private"),  # private module
    ],
)
def test_layer_1_a_planted_wrong_import_is_found(relpath, line, why):
    """LAYER-1: the checker is not blind: one planted import that runs the wrong way (upwards, or to a
    private name of another layer) in an otherwise clean tree is reported, naming the file and line."""
    files = source_files()
    if relpath not in files:
        pytest.skip("the source tree is not next to this test (an installed copy)")
    body = f"def _planted():\n{line}\n" if line.startswith(" ") else f"{line}\n"
    files[relpath] = files[relpath] + "\n" + body
    found = violations(files)
    assert len(found) == 1 and found[0].startswith(relpath) and why in found[0], found
