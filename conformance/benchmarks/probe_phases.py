"""Where rac.fast's SparseGPT spends its time on one layer, by phase, and what a float32 factorisation would save
(issue #15: "within 1.5x of the float32 problem bound"; quoted in docs/benchmarks.md).

    python conformance/benchmarks/probe_phases.py [size] [rounds]     # default 4096, 4; 1 and 2 threads

For ``llm_like_layer(size)`` (2:4 and 50 % unstructured, blocksize 128, dampening 0.01) it runs the steps of
``rac.fast.prune_layer`` one by one, timing each:

    validate   checked_weight + checked_hessian (GEN-5/6: H checked symmetric and symmetrised)
    factor     left_panel_factor (the reversed Cholesky and the panels the sweep reads) + dead_inputs
    sweep      sparsegpt_sweep_left
    results    the copies into W's layout and dtype, and the finiteness post-condition (REL)

twice per round, interleaved through harness.py: with the factorisation in float64 (what ships, PREC-2) and
in float32 (``rac.fast.factor.FACTOR_DTYPE`` switched for the call: what PREC-2 rules out; here only to
measure what it would save). Prints every round, the best total against both bounds of bounds.py (the
problem minimum, and the same with the triangular inverse that issue #15's first statement counted), and
each phase's median. The float64 result is checked equal to ``rac.fast.prune_layer``'s, so the steps
timed here are the ones the pruner runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bounds  # noqa: E402
import harness  # noqa: E402

import rac.fast  # noqa: E402
from rac.conformance.checking.strategies import llm_like_layer  # noqa: E402
from rac.fast import alloc, factor  # noqa: E402
from rac.fast._validate import check_result, checked_hessian, checked_weight  # noqa: E402
from rac.fast.sparsegpt import dead_inputs, left_panel_factor, left_panels, sparsegpt_sweep_left  # noqa: E402
from rac.reference.contract.patterns import Pattern  # noqa: E402

SETTINGS = {"2:4": (Pattern("nm", 2, 4), None, dict(pattern="2:4")),
            "unstructured": (Pattern("unstructured"), 0.5, dict(sparsity=0.5))}


def phased(W, H, pattern, sparsity, dtype, log: list):
    """prune_layer(method="sparsegpt") for one W, step by step, with the factorisation in ``dtype``."""
    marks = [time.perf_counter()]
    shipped = factor.FACTOR_DTYPE
    factor.FACTOR_DTYPE = dtype
    try:
        W = checked_weight(W)
        H = checked_hessian(H, W)
        marks.append(time.perf_counter())
        panels = left_panels(H.shape[0], pattern, 128)
        F, _ = left_panel_factor(H, 0.01, "raise", panels)
        dead = dead_inputs(H)
        marks.append(time.perf_counter())
        weight, mask = sparsegpt_sweep_left(W, F, panels, dead, pattern, sparsity, 128)
        marks.append(time.perf_counter())
        weight, mask = check_result(alloc.copy(weight, W.dtype), W, "sparsegpt"), alloc.copy(mask)
        marks.append(time.perf_counter())
    finally:
        factor.FACTOR_DTYPE = shipped
    log.append([b - a for a, b in zip(marks, marks[1:])])
    return weight, mask


def main(size: int = 4096, rounds: int = 4) -> None:
    W64, H64 = llm_like_layer(size)
    W, H = W64.float(), H64.float()
    here = harness.machine()
    print(f"{size} x {size}, {here['device']}, torch {here['torch']}, commit {here['commit'][:10]}, "
          f"{here['created_utc']}")
    for setting, (pattern, sparsity, kwargs) in SETTINGS.items():
        shipped = rac.fast.prune_layer(W, H, method="sparsegpt", blocksize=128, dampening=0.01, **kwargs)
        for threads in (1, 2):
            logs = {"float64": [], "float32": []}
            case = harness.compare(f"{setting} {threads}", {
                dt: (lambda dt=dt, p=pattern, s=sparsity, log=logs[dt]: phased(W, H, p, s, getattr(torch, dt), log))
                for dt in logs
            }, threads=threads, rounds=rounds, gemm_size=min(size, 2048))
            weight, mask = case["results"]["float64"]
            assert torch.equal(weight, shipped[0]) and torch.equal(mask, shipped[1]), "phases drifted"
            flops = bounds.sparsegpt_flops(size, size)
            rate = case["rates"]["gemm_float32"]
            bound = sum(flops.values()) / rate
            bound_inv = sum(bounds.sparsegpt_flops(size, size, inverse=True).values()) / rate
            print(f"\n{setting}, {threads} thread(s): GEMM fp32 {rate / 1e9:.1f} GFLOP/s, bound {bound:.3g} s "
                  f"({bound_inv:.3g} s with the triangular inverse)")
            for s in case["samples"]:
                print(f"  round {s['round']} {s['impl']} factorisation, whole call {s['seconds']:.3f} s  "
                      f"load {s['loadavg_1min']:.1f}")
            for dt, log in logs.items():
                log = log[-rounds:]  # the timed rounds (harness.compare's warm-up call is first)
                best = min(sum(phase) for phase in log)
                medians = [statistics.median(p[i] for p in log) for i in range(4)]
                print(f"  {dt} factor: best {best:.3f} s = {best / bound:.2f}x the bound "
                      f"({best / bound_inv:.2f}x with the inverse); median by phase: validate {medians[0]:.3f} / "
                      f"factor {medians[1]:.3f} / sweep {medians[2]:.3f} / results {medians[3]:.3f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
