"""cases_phase1.py runs in every CI run at its quick size (4 prompts, 8 tokens, 1 round), untimed.

It checks the case's structure (what bench_compare.py and summarise.py read) and that rac.fast's
traces are the reference's; no time is asserted.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rac.conformance.checking.fast_checks import fast_fixture  # noqa: F401

HERE = Path(__file__).resolve().parent


def _cases():
    spec = importlib.util.spec_from_file_location("cases_phase1", HERE / "cases_phase1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phase1_case_runs_interleaved_in_quick_mode(fast):
    cases = _cases()
    case = cases.run_case(threads=1, rounds=1, quick=True)
    assert "results" not in case  # not serialisable; run_case keeps only what it measured from it
    assert case["kind"] == "phase1" and case["threads"] == 1 and case["rounds"] == 1
    assert (case["prompts"], case["max_new_tokens"]) == cases.QUICK and case["batch_size"] >= 1
    assert [s["impl"] for s in case["samples"]] == ["fast", "reference"]  # interleaved, one round
    assert all(s["seconds"] > 0 and s["loadavg_1min"] >= 0 for s in case["samples"])
    assert case["rates"]["gemm_float32"] > 0 and case["rates"]["copy_bytes_per_s"] > 0
    tokens = case["generated_tokens"]
    assert set(tokens) == {"fast", "reference"} and tokens["fast"] == tokens["reference"] > 0
    assert tokens["fast"] <= case["prompts"] * case["max_new_tokens"]
    assert all(v > 0 for v in case["tokens_per_s"].values())
    assert all(len(v) == 1 for v in case["tokens_per_s_rounds"].values()) and len(case["ratio_rounds"]) == 1
    assert case["traces_equal"] is True
    assert "phase1 qwen3 4 prompts x 8 tokens" in cases.summary(case)
