"""GOLD-1..3: the golden vectors are current, intact, and their checker can fail (self-test job "protocol").

GOLD-4 (a port against the golden vectors) is part of the conformance suite: test_golden.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rac.conformance.checking import golden, golden_check
from rac.conformance.checking.helpers import req
from rac.conformance.harness.ports import Port

GOLDEN = golden.GOLDEN_DIR


@req("GOLD-1")
def test_gold_1_golden_vectors_are_current():
    """GOLD-1: regenerating from rac.reference gives bitwise the same inputs, the same cases, and outputs
    that the checker accepts against the stored ones (masks exactly, weights/objectives at float64
    tolerances: another machine's BLAS may differ in the last bits)."""
    problems = golden.verify_current(GOLDEN)
    assert not problems, (
        "GOLD-1: stale golden vectors (python -m rac.conformance.checking.golden regenerate):\n" + "\n".join(problems)
    )


@req("GOLD-2")
def test_gold_2_manifest_checksums_match():
    """GOLD-2: every golden file's sha256 is the manifest's; the files are small (a few hundred KB at most)."""
    assert golden.verify_checksums(GOLDEN) == []
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 400_000, f"GOLD-2: golden files take {total} bytes"


@req("GOLD-2")
def test_gold_2_no_case_is_a_near_tie():
    """GOLD-2: every mask decision of magnitude, Wanda and SparseGPT in the golden cases clears
    MIN_MARGIN (relative), so exact mask comparison is fair to a float32 port."""
    import json

    cases = json.loads((GOLDEN / "manifest.json").read_text())["cases"]
    margins = [c["min_margin"] for c in cases if c["kind"] == "prune" and c["min_margin"] is not None]
    assert margins and min(margins) >= golden.MIN_MARGIN


@req("GOLD-3")
def test_gold_3_checker_needs_only_numpy(tmp_path):
    """GOLD-3: golden_check.py runs as a script with torch and scipy unimportable, and accepts the
    reference's outputs."""
    outputs = tmp_path / "reference.npz"
    golden.write_npz(outputs, golden.run_port(Port.load("rac.reference"), GOLDEN))
    blocker = (
        "import sys, runpy; sys.modules['torch'] = None; sys.modules['scipy'] = None; sys.modules['rac'] = None; "
        f"sys.argv = ['golden_check.py', {str(outputs)!r}, '--golden', {str(GOLDEN)!r}]; "
        f"runpy.run_path({golden_check.__file__!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fail 0, missing 0" in proc.stdout


@req("GOLD-3")
@pytest.mark.parametrize(
    "mutant,rule",
    [
        ("off_by_one_count", "CNT-1"),
        ("nm_reads_n_as_pruned", "NM-1"),
        ("wanda_squared_norm", "GOLD-4"),
        ("sparsegpt_wrong_sign", "SGPT-1"),
        ("pruned_not_exactly_zero", "GEN-2"),
        ("hessian_counts_padding", "HES-1"),
    ],
)
def test_gold_3_checker_rejects_broken_outputs(mutant, rule):
    """GOLD-3: the checker rejects the outputs of broken ports, naming the rule."""
    port = Port.load(f"rac.conformance.mutants.ports:{mutant}")
    results = golden_check.check(golden.run_port(port, GOLDEN), GOLDEN, "float64")
    problems = [p for r in results.values() for p in r["problems"]]
    assert any(p.startswith(rule) for p in problems), f"GOLD-3: {mutant} not rejected by {rule}: {problems[:5]}"


@req("GOLD-3")
def test_gold_3_checker_tolerates_a_float32_port():
    """GOLD-3: the reference's outputs rounded to float32 (what a float32 port returns at best) pass
    with --dtype float32 and fail with --dtype float64 for SparseGPT (the tolerance follows the dtype)."""
    outputs = golden.run_port(Port.load("rac.reference"), GOLDEN)
    rounded = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in outputs.items()}
    assert all(r["status"] == "pass" for r in golden_check.check(rounded, GOLDEN, "float32").values())
    strict = golden_check.check(rounded, GOLDEN, "float64")
    assert any(r["status"] == "fail" for name, r in strict.items() if "sparsegpt" in name)
