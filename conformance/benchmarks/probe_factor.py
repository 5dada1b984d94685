"""The float64 Cholesky of rac.fast's SparseGPT factor: torch.linalg.cholesky_ex against fast/factor.py's
blocked_cholesky_, with its panel solve in place (what ships) and copied (``solve_panel_copied``, the schedule
before it), interleaved through harness.py (quoted in fast/factor.py and docs/benchmarks.md).

    python conformance/benchmarks/probe_factor.py [size] [threads] [rounds]     # default 4096, 1, 3

J H_d J of ``llm_like_layer(size)`` (dampening 0.01), ``rounds`` rounds each (default 3), interleaved; prints
every round, the load, each implementation's best, and the largest difference of each blocked factor from
cholesky_ex's relative to the largest entry.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

from rac.conformance.checking.strategies import llm_like_layer  # noqa: E402
from rac.fast.factor import blocked_cholesky_, damping, solve_panel_copied  # noqa: E402


def main(size: int = 4096, threads: int = 1, rounds: int = 3) -> None:
    _, H = llm_like_layer(size)
    A = H.flip(0, 1).contiguous()
    A.diagonal().add_(damping(H, 0.01))
    case = harness.compare(
        "float64 Cholesky", {
            "cholesky_ex": lambda: torch.linalg.cholesky_ex(A)[0],
            "blocked, solve copied": lambda: blocked_cholesky_(A.clone(), panel_solve=solve_panel_copied),
            "blocked_cholesky_": lambda: blocked_cholesky_(A.clone()),
        }, threads=threads, rounds=rounds, gemm_size=min(size, 2048))
    L_ref = case["results"]["cholesky_ex"]
    here = harness.machine()
    print(f"{size} x {size}, {threads} thread(s), {here['device']}, torch {here['torch']}, commit "
          f"{here['commit'][:10]}, {here['created_utc']}")
    for s in case["samples"]:
        print(f"  round {s['round']} {s['impl']:22s} {s['seconds']:.3f} s  load {s['loadavg_1min']:.1f}")
    for impl in case["results"]:
        line = f"  {impl:22s} best {min(harness.times(case, impl)):.3f} s"
        if impl != "cholesky_ex":
            L = case["results"][impl].tril()
            line += f"; max |L - L_ref| / max |L_ref| = {float((L - L_ref).abs().max() / L_ref.abs().max()):.2g}"
        print(line)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
