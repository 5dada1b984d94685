"""The benchmarks run in every CI run, at small shapes with timing disabled, so they cannot rot.

Runs ``conformance/benchmarks/bench_layer.py`` (64 x 64) and ``bench_model.py`` (a 2-block,
64-wide model) in a fresh pytest process exactly as ``nox -s bench`` does (same files, same
fixtures, same extra_info bookkeeping), with ``RAC_BENCH_QUICK=1`` and ``--benchmark-disable``
(each case once, untimed): about 6 s and 20 s. The FLOP count both the CPU lower bound and the
H100 projection use is checked against a count by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rac.conformance.checking.fast_checks import fast_fixture  # noqa: F401

HERE = Path(__file__).resolve().parent


def _run_quick(bench: str, tmp_path) -> None:
    env = dict(os.environ, RAC_BENCH_QUICK="1", RAC_BENCH_DEVICE="cpu")
    cmd = [sys.executable, "-m", "pytest", str(HERE / bench), "-q", "-p", "no:cacheprovider", "--benchmark-disable",
           f"--report-dir={tmp_path}", "--import-mode=importlib"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"{bench} failed in quick mode:\n{tail}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail


def test_layer_benchmarks_run_in_quick_mode(fast, tmp_path):
    """Every case of bench_layer.py passes at 64 x 64 (the compiled-sweep variant is skipped in quick mode)."""
    _run_quick("bench_layer.py", tmp_path)


def test_model_benchmarks_run_in_quick_mode(fast, tmp_path):
    """Every case of bench_model.py (Phase I, Phase II, memory at two token counts) passes at its quick shapes."""
    _run_quick("bench_model.py", tmp_path)


def test_phase2_flop_count_matches_a_count_by_hand(fast):
    """phase2_flops on the 7B shape (meta device) equals the count written out from the architecture."""
    sys.path.insert(0, str(HERE))
    try:
        from project_h100 import PROMPT_LEN, PROMPTS, TRACE, meta_model
        from bench_model import phase2_flops
    finally:
        sys.path.remove(str(HERE))
    d, f, L, kv = 3584, 18944, 28, 4 * 128  # hidden, FFN, blocks, K/V width (4 KV heads of 128)
    N, T = PROMPTS * (PROMPT_LEN + TRACE), PROMPT_LEN + TRACE
    flops = phase2_flops(meta_model("7B"), N, T)
    linears = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]  # (in, out): q k v o gate up down
    assert flops["hessian"] == L * 2 * N * (3 * d * d + f * f)  # four distinct inputs: qkv, o, gate/up, down
    assert flops["forward"] == L * (2 * 2 * N * sum(i * o for i, o in linears) + 2 * 2 * N * T * d)
    assert flops["sweep"] == L * sum(2 * o * i * i for i, o in linears)
