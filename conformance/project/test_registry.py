"""REG-*: the method registry is the one list of pruners (reference/contract/registry.py, CONTRIBUTING.md).

REG-1  An unknown method is a ValueError naming the registered ones, in the reference, in rac.fast and
       in the ``rac`` command; a method without a rac.fast implementation is an error there, never a
       fallback to another method.
REG-2  A pruner added as one module with one ``register(Method(...))`` entry, installed as a
       ``rac.methods`` entry point, is run by the generic conformance suite and listed by the ``rac``
       command, with no other file edited; a broken one is rejected by it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rac.conformance.checking.helpers import req
from rac.fixtures.layers import make_layer
from rac.reference.contract import registry
from rac.reference.contract.registry import Method, Option
from rac.reference.contract.values import check_nonnegative_int, one_of

SUITE = Path(__file__).resolve().parents[1]  # conformance/: the rootdir

PLUGIN = '''
"""A throwaway pruner for the registry test: a seeded random mask, kept weights unchanged."""
import torch

from rac.reference.contract.registry import Method, Option, register
from rac.reference.contract.values import check_nonnegative_int, one_of
from rac.reference.masks import select_mask


def prune_random(W, H, pattern, sparsity, *, group, seed):
    scores = torch.rand(W.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mask = select_mask(scores, pattern, sparsity, group)
    return W.masked_fill(~mask, {fill}), mask, {{"seed": seed}}


register(Method(
    "{name}", reference=prune_random,
    options={{"group": Option("row", one_of("row", "layer")), "seed": Option(0, check_nonnegative_int)}},
    summary="a seeded random mask (registry test)",
))
'''


def _install_plugin(tmp_path, name: str, fill: str = "0.0"):
    """A module registering ``name`` plus a dist-info that declares it as a ``rac.methods`` entry point:
    what ``pip install`` of a package holding one pruner module leaves on sys.path."""
    (tmp_path / f"{name}_pruner.py").write_text(PLUGIN.format(name=name, fill=fill), encoding="utf-8")
    info = tmp_path / f"{name}_pruner-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-pruner\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\n{name} = {name}_pruner\n", encoding="utf-8"
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path), "RAC_HYPOTHESIS_PROFILE": "selftest"}


def _run_suite(tmp_path, env, name: str):
    """The layer level of the suite against the reference, only the tests parametrised with ``name``."""
    report = tmp_path / f"report-{name}"
    inventory = tmp_path / f"inventory-{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(SUITE / "layer"),
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(SUITE),
        "--port=rac.reference",
        "-k",
        name,
        f"--report-dir={report}",
        f"--inventory={inventory}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    rows = json.loads(next(report.glob("conformance-*.json")).read_text())["requirements"] if report.is_dir() else []
    return proc, {r["id"]: r for r in rows}, json.loads(inventory.read_text())


@pytest.fixture
def throwaway():
    """A method registered for one test and removed afterwards."""

    def prune(W, H, pattern, sparsity, *, seed):
        return W.clone(), torch.ones_like(W, dtype=torch.bool), {}

    registry.register(
        Method("throwaway_inline", reference=prune, group="layer", options={"seed": Option(0, check_nonnegative_int)})
    )
    yield "throwaway_inline"
    registry.unregister("throwaway_inline")


@req("REG-1")
def test_reg_1_unknown_method_is_an_error_everywhere(throwaway, capsys):
    """REG-1: no implementation maps an unknown method onto another one, and rac.fast refuses a method it
    does not implement instead of running something else."""
    import rac.fast
    import rac.reference
    from rac.cli.main import main

    layer = make_layer("gaussian", 4, 8, 16, seed=0)
    for prune in (rac.reference.prune_layer, rac.fast.prune_layer):
        with pytest.raises(ValueError, match=r"method must be one of .*'sparsegpt'.*; got 'sparsegtp'"):
            prune(layer.W, layer.H, method="sparsegtp", sparsity=0.5)
    with pytest.raises(ValueError, match="'throwaway_inline' has no rac.fast implementation"):
        rac.fast.prune_layer(layer.W, layer.H, method=throwaway, sparsity=0.5)
    assert throwaway in rac.reference.CAPABILITIES["methods"]
    assert throwaway not in rac.fast.CAPABILITIES["methods"]
    with pytest.raises(SystemExit):
        main(["prune", "--method", "sparsegtp"])
    assert "invalid choice: 'sparsegtp'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Method(throwaway, reference=print, group="layer"))
    with pytest.raises(TypeError, match="unknown option.*blocksize.*'throwaway_inline'; it accepts: seed"):
        rac.reference.prune_layer(layer.W, layer.H, method=throwaway, sparsity=0.5, blocksize=4)
    with pytest.raises(ValueError, match="group must be one of"):
        Method("bad_group", reference=print, group="column")
    with pytest.raises(ValueError, match="patterns must be a non-empty subset"):
        Method("bad_pattern", reference=print, group="layer", patterns=("nm", "blocky"))
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        registry.check_request(throwaway, 0.5, "unstructured", 8, {"seed": -1})
    check = one_of("row", "layer")
    assert check("row", "group") == "row" and check.choices == ("row", "layer")


@req("REG-2")
def test_reg_2_a_registered_pruner_runs_through_the_generic_suite(tmp_path):
    """REG-2: one plug-in module (``register(Method(...))``) installed as an entry point is collected by
    the generic layer tests (GEN, INV, CNT, NM, DEAD, REF-4, OPT) and passes them; the same plug-in with a
    bug (pruned weights left at 1.0 instead of 0) is rejected by GEN-2; ``rac layer`` and ``rac prune
    --help`` list it. No file of the project is edited."""
    env = _install_plugin(tmp_path, "throwaway")
    proc, rows, inventory = _run_suite(tmp_path, env, "throwaway")
    ran = [test for test in inventory if "throwaway" in test]
    assert len(ran) >= 15, f"the generic suite collected only {ran} for the plug-in:\n{proc.stdout[-2000:]}"
    assert proc.returncode == 0, f"the generic suite failed on a correct plug-in:\n{proc.stdout[-3000:]}"
    for rule in ("GEN-1", "GEN-2", "GEN-3", "GEN-4", "GEN-7", "INV-1", "CNT-1", "NM-1", "DEAD-1", "REF-4", "OPT-1"):
        verdict = rows.get(rule, {}).get("verdict")
        assert verdict in ("pass", "metric"), f"{rule} was not checked on the plug-in: {rows.get(rule)}"

    broken = tmp_path / "broken"
    broken.mkdir()
    proc, rows, _ = _run_suite(broken, _install_plugin(broken, "throwaway_broken", fill="1.0"), "throwaway_broken")
    assert proc.returncode != 0 and rows["GEN-2"]["verdict"] == "fail", "a broken plug-in passed GEN-2"

    layer = subprocess.run(
        [sys.executable, "-m", "rac.cli.main", "layer", "--in", "32", "--out", "8", "--tokens", "64"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert layer.returncode == 0 and "\nthrowaway " in layer.stdout, layer.stdout + layer.stderr
    helptext = subprocess.run(
        [sys.executable, "-m", "rac.cli.main", "prune", "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert helptext.returncode == 0 and "throwaway" in helptext.stdout, helptext.stdout + helptext.stderr
