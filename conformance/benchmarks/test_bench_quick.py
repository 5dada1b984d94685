"""The layer benchmarks run in every CI run, at 64 x 64 with timing disabled, so they cannot rot.

Runs ``conformance/benchmarks/bench_layer.py`` in a fresh pytest process exactly as
``nox -s bench`` does (same file, same fixtures, same extra_info bookkeeping), with
``RAC_BENCH_QUICK=1`` and ``--benchmark-disable`` (each case once, untimed): about 6 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rac.conformance._fast import fast_fixture  # noqa: F401

BENCH = Path(__file__).resolve().parent / "bench_layer.py"


def test_layer_benchmarks_run_in_quick_mode(fast, tmp_path):
    """Every case of bench_layer.py passes at 64 x 64 (the compiled-sweep variant is skipped in quick mode)."""
    env = dict(os.environ, RAC_BENCH_QUICK="1", RAC_BENCH_DEVICE="cpu")
    cmd = [sys.executable, "-m", "pytest", str(BENCH), "-q", "-p", "no:cacheprovider", "--benchmark-disable",
           f"--report-dir={tmp_path}", "--import-mode=importlib"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"bench_layer.py failed in quick mode:\n{tail}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail
