"""Phase I on the qwen3 fixture through the one harness (harness.py): rac.fast against rac.reference.

    python conformance/benchmarks/bench_compare.py phase1 --threads 1     # 1 thread, 5 rounds
    python conformance/benchmarks/bench_compare.py phase1 --threads 1,2 --rounds 7 --out phase1.json
    python conformance/benchmarks/bench_compare.py phase1 --quick         # 4 prompts, 8 tokens, 1 round

The case (formerly bench_model.py's ``test_phase1_fixture``): the first 16 fixture problems, mode "rac",
64 greedy tokens each, ``batch_size`` left at the library default ("auto"), one model shared by
both implementations (neither changes it). rac.fast decodes the prompts in batches with a KV
cache; the reference one prompt, one token, one forward at a time. ``run_case`` returns the
harness's case (every round's seconds and load, the GEMM and copy rates around it) and adds, per
implementation, the generated tokens, tokens per second (best round and every round), and
whether the two implementations' calibration sets are the same (token ids, labels, stops).
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

#: (prompts, new tokens per prompt) of the case, full and quick
FULL = (16, 64)
QUICK = (4, 8)
IMPLS = ("fast", "reference")


def same_calibration(a, b) -> bool:
    """Same sequences (token for token), same source labels, same stops."""
    return (
        len(a.sequences) == len(b.sequences)
        and all(torch.equal(x, y) for x, y in zip(a.sequences, b.sequences))
        and all(torch.equal(x, y) for x, y in zip(a.labels, b.labels))
        and a.meta.get("trace_stops") == b.meta.get("trace_stops")
    )


def run_case(threads: int, rounds: int, quick: bool = False) -> dict:
    """Phase I, fast and reference interleaved for ``rounds`` rounds at ``threads`` torch threads.

    Returns harness.compare's dict (without ``results``) with ``generated_tokens``, ``tokens_per_s``
    (best round), ``tokens_per_s_rounds``, ``ratio_rounds`` (reference seconds / fast seconds, round
    by round), ``traces_equal`` and ``batch_size`` (what "auto" resolved to) added.
    """
    import importlib

    from rac.conformance.checking.fixture_models import fresh, problems, tokenizer

    n, new = QUICK if quick else FULL
    model, tok = fresh("qwen3"), tokenizer("qwen3")
    prompts = list(problems(n))
    calls = {}
    for label in IMPLS:
        collect = importlib.import_module(f"rac.{label}").collect_calibration
        calls[label] = lambda collect=collect: collect(model, tok, prompts, mode="rac", max_new_tokens=new)
    case = harness.compare(
        f"phase1 qwen3 {n} prompts x {new} tokens", calls, threads=threads, rounds=rounds,
        gemm_size=256 if quick else 1024, warmup=True, rate_repeats=1 if quick else 3,
        meta=dict(kind="phase1", model="qwen3", prompts=n, max_new_tokens=new, mode="rac", temperature=0.0,
                  batch_size="auto"),
    )
    results = case.pop("results")
    tokens = {label: int(results[label].count("decode")) for label in IMPLS}
    case["generated_tokens"] = tokens
    case["tokens_per_s_rounds"] = {label: [tokens[label] / t for t in harness.times(case, label)] for label in IMPLS}
    case["tokens_per_s"] = {label: max(v) for label, v in case["tokens_per_s_rounds"].items()}
    case["ratio_rounds"] = harness.ratios(case, "reference", "fast")
    case["traces_equal"] = same_calibration(results["fast"], results["reference"])
    case["batch_size"] = results["fast"].meta["batch_size"]
    return case


def summary(case: dict) -> str:
    best = {label: min(harness.times(case, label)) for label in IMPLS}
    r = case["ratio_rounds"]
    loads = [s["loadavg_1min"] for s in case["samples"]]
    return (
        f"{case['name']} threads={case['threads']}: fast {best['fast']:.3g} s "
        f"({case['tokens_per_s']['fast']:.0f} tok/s), reference {best['reference']:.3g} s "
        f"({case['tokens_per_s']['reference']:.0f} tok/s); best-of ratio {best['reference'] / best['fast']:.2f}, "
        f"per round min {min(r):.2f} median {statistics.median(r):.2f} max {max(r):.2f}; "
        f"traces equal {case['traces_equal']}; load {min(loads):.2f}-{max(loads):.2f}"
    )
