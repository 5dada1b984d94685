"""The float64 Cholesky of rac.fast's SparseGPT factor: torch.linalg.cholesky_ex against fast/factor.py's
blocked_cholesky_, interleaved through harness.py (quoted in fast/factor.py and docs/benchmarks.md).

    python conformance/benchmarks/probe_factor.py [size] [threads]     # default 4096, 1

J H_d J of ``llm_like_layer(size)`` (dampening 0.01), 3 rounds each, interleaved; prints every round, the
load, and the largest difference of the two factors relative to the largest entry.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

from rac.conformance.checking.strategies import llm_like_layer  # noqa: E402
from rac.fast.factor import blocked_cholesky_, damping  # noqa: E402


def main(size: int = 4096, threads: int = 1) -> None:
    _, H = llm_like_layer(size)
    A = H.flip(0, 1).contiguous()
    A.diagonal().add_(damping(H, 0.01))
    case = harness.compare(
        "float64 Cholesky", {
            "cholesky_ex": lambda: torch.linalg.cholesky_ex(A)[0],
            "blocked_cholesky_": lambda: blocked_cholesky_(A.clone()),
        }, threads=threads, rounds=3, gemm_size=min(size, 2048))
    L_ref, L = case["results"]["cholesky_ex"], case["results"]["blocked_cholesky_"].tril()
    print(f"{size} x {size}, {threads} thread(s), {harness.machine()['device']}")
    for s in case["samples"]:
        print(f"  round {s['round']} {s['impl']:18s} {s['seconds']:.3f} s  load {s['loadavg_1min']:.1f}")
    print(f"  max |L - L_ref| / max |L_ref| = {float((L - L_ref).abs().max() / L_ref.abs().max()):.2g}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
