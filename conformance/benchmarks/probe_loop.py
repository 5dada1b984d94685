"""SparseGPT's in-panel column loop on a CPU: the numpy loop (fast/cpu_sweep.py) against the numba kernel
(fast/numba_sweep.py), quoted in fast/numba_sweep.py and docs/benchmarks.md.

    python conformance/benchmarks/probe_loop.py [out] [rounds]     # default 4096 outputs, 20 rounds

One 128-column panel of ``out`` outputs in 32-column chunks (the pruner's PANEL and CHUNK), the chunk
loop alone (no chunk GEMMs), 2:4 and unstructured (a given random mask), at 1 and 2 threads. The two
loops alternate round by round; printed: the best round, times 32 (the panels of a 4096-input layer).
Needs numba (the ``cpu-kernel`` extra).
"""

from __future__ import annotations

import sys
import time

import torch

from rac.fast.cpu_sweep import sweep_chunk_cpu
from rac.fast.numba_sweep import sweep_chunk_numba
from rac.reference.contract.patterns import Pattern


def main(out: int = 4096, rounds: int = 20) -> None:
    width, chunk = 128, 32
    g = torch.Generator().manual_seed(0)
    A = torch.randn(width, width, dtype=torch.float64, generator=g)
    U = torch.linalg.cholesky(A @ A.T + width * torch.eye(width, dtype=torch.float64)).T.contiguous().float()
    d, dead = torch.diagonal(U).clone(), torch.zeros(width, dtype=torch.bool)
    W0 = torch.randn(width, out, generator=g)
    loops = {"numpy": sweep_chunk_cpu, "numba": sweep_chunk_numba}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, nm in (("2:4", Pattern("nm", 2, 4)), ("unstructured", None)):
            keep0 = torch.ones(width, out, dtype=torch.bool)
            if nm is None:
                keep0 = torch.rand(width, out, generator=g) > 0.5
            best, results = {k: float("inf") for k in loops}, {}
            for _ in range(rounds):
                for label, fn in loops.items():
                    WT, K = W0.clone(), keep0.clone()
                    E, P = torch.empty_like(WT), torch.logical_not(K).float()
                    t = time.perf_counter()
                    for j0 in range(0, width, chunk):
                        fn(WT, U, K, E, j0, j0 + chunk, d, dead, nm, P)
                    best[label] = min(best[label], time.perf_counter() - t)
                    results[label] = (WT, K)
            same_mask = torch.equal(results["numpy"][1], results["numba"][1])
            dw = float((results["numpy"][0] - results["numba"][0]).abs().max())
            print(f"{name}, {threads} thread(s), {out} outputs: " + ", ".join(
                f"{k} {v * 1e3:.2f} ms a panel ({v * 32e3:.0f} ms for 32)" for k, v in best.items())
                + f"; masks equal {same_mask}, max |dW| {dw:.3g}", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
