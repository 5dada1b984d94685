"""The benchmarks run in every CI run, at small shapes with timing disabled, so they cannot rot.

Runs ``bench_compare.py --quick`` (the interleaved harness: layers, Phase I, Phase II), ``bench_layer.py`` (64 x 64)
and ``bench_model.py`` (a 2-block, 64-wide model) in a fresh pytest process exactly as
``nox -s bench`` does (same files, same
fixtures, same extra_info bookkeeping), with ``RAC_BENCH_QUICK=1`` and ``--benchmark-disable``
(each case once, untimed): about 6 s and 20 s. The bounds (bounds.py) that every benchmark and
the H100 projection use are checked against counts by hand.
"""

from __future__ import annotations

import math
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


def test_layer_probes_run_in_quick_mode(fast, tmp_path):
    """Every case of bench_layer.py (sweep schedules, factorisations) passes at 64 x 64 (compiled sweep skipped)."""
    _run_quick("bench_layer.py", tmp_path)


def test_compare_harness_runs_interleaved_in_quick_mode(fast, tmp_path):
    """bench_compare.py --quick (64 x 64, 1 round, 1 thread) writes the JSON summarise.py reads: every case ran
    fast and reference in the same round, with threads, load, rates before/after and the bound recorded."""
    import json

    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, str(HERE / "bench_compare.py"), "layer", "--quick", "--methods",
                           "sparsegpt,wanda", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads(out.read_text())
    assert report["commit"] and report["device"].startswith("cpu") and len(report["cases"]) == 4
    for case in report["cases"]:
        assert case["threads"] == 1 and case["rounds"] == 1
        assert [s["impl"] for s in case["samples"]] == ["fast", "reference"]  # interleaved, one round
        assert all(s["loadavg_1min"] >= 0 and s["seconds"] > 0 for s in case["samples"])
        assert case["rates"]["gemm_float32"] == max(case["rates_before"]["gemm_float32"],
                                                    case["rates_after"]["gemm_float32"])
        assert case["bound"]["seconds"] > 0 and set(case["objective_relative"]) == {"fast", "reference"}
    summary = subprocess.run([sys.executable, str(HERE / "summarise.py"), str(out)], capture_output=True, text=True)
    assert summary.returncode == 0, summary.stderr[-2000:]
    assert "| sparsegpt 2:4 64x64 | 1 | reference |" in summary.stdout, summary.stdout[-2000:]


def test_phase_cases_run_through_the_harness_in_quick_mode(fast, tmp_path):
    """bench_compare.py phase1 / phase2 --quick write the harness JSON and summarise.py makes their tables: Phase I
    with both implementations in one round and the same traces; Phase II with its bound taken from bounds.py at
    the case's measured GEMM rate, and every linear of the model pruned."""
    import json

    for kind in ("phase1", "phase2"):
        out = tmp_path / f"{kind}.json"
        proc = subprocess.run([sys.executable, str(HERE / "bench_compare.py"), kind, "--quick", "--out", str(out)],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        report = json.loads(out.read_text())
        assert report["kind"] == kind and report["commit"] and len(report["cases"]) == 1
        case = report["cases"][0]
        assert case["threads"] == 1 and case["rounds"] == 1
        if kind == "phase1":
            assert [s["impl"] for s in case["samples"]] == ["fast", "reference"] and case["traces_equal"] is True
        else:
            assert [s["impl"] for s in case["samples"]] == ["fast"]
            flops = case["flops"]
            assert set(flops) == {"hessian", "factor", "sweep", "forward"} and all(v > 0 for v in flops.values())
            assert math.isclose(case["bound"]["seconds"], sum(flops.values()) / case["rates"]["gemm_float32"])
            assert case["layers"] == 7 * case["blocks"] and case["sparsity_min_max"][0] >= 0.5
        summary = subprocess.run([sys.executable, str(HERE / "summarise.py"), str(out)], capture_output=True,
                                 text=True)
        assert summary.returncode == 0, summary.stderr[-2000:]
        assert ("10x held?" if kind == "phase1" else "1.5x held?") in summary.stdout, summary.stdout[-2000:]


def test_bounds_match_a_count_by_hand():
    """bounds.py on a 3 x 4 layer: the SparseGPT minimum and the Hessian's syrk written out term by term."""
    sys.path.insert(0, str(HERE))
    try:
        import bounds
    finally:
        sys.path.remove(str(HERE))
    out, n = 3, 4
    # Cholesky of a 4 x 4: column j costs (n - j)^2 multiply-adds in the trailing update ~ sum j^2 ~ n^3 / 3
    # sweep: column j's OBS update of the n - 1 - j later columns in each of the out rows, 2 FLOPs each:
    # 2 * 3 * (3 + 2 + 1 + 0) = 36
    assert bounds.sparsegpt_flops(out, n) == {"cholesky": 64 / 3, "sweep": 36.0}
    assert bounds.sparsegpt_flops(out, n, inverse=True)["triangular_inverse"] == 64 / 3
    # X^T X for 5 tokens of width 4: the 10 entries of the lower triangle, 5 multiply-adds each = 100 FLOPs;
    # the bound counts 5 * 4^2 = 80 (n^2 / 2 entries, 2 FLOPs each), a general GEMM 2 * 5 * 16 = 160
    assert bounds.hessian_flops(5, 4) == 80.0
    assert bounds.layer_bytes(out, n, 4) == 3 * 4 * 9 + 16 * 4
    assert bounds.bound_seconds(100.0, 10.0, 30, 1.0) == 30.0 and bounds.bound_seconds(100.0, 10.0) == 10.0


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
    assert flops["hessian"] == L * N * (3 * d * d + f * f)  # four distinct inputs (qkv, o, gate/up, down): syrk
    # one Cholesky per distinct input; n^3 / 3 is not an integer, so the float sum of 112 terms
    # rounds: 112 additions of relative error <= 2^-53 each, 1e-13 is above that
    assert math.isclose(flops["factor"], L * (3 * d**3 + f**3) / 3, rel_tol=1e-13)
    # two passes per block (dense for H, pruned for the next block's inputs), one for the last block
    assert flops["forward"] == (2 * L - 1) * (2 * N * sum(i * o for i, o in linears) + 2 * N * T * d)
    dense = phase2_flops(meta_model("7B"), N, T, propagation="dense")
    assert dense["forward"] == L * (2 * N * sum(i * o for i, o in linears) + 2 * N * T * d)
    assert flops["sweep"] == L * sum(o * i * (i - 1) for i, o in linears)
