"""Layer-level probes of rac.fast's SparseGPT parts (sweep schedules, factorisation recipes).

Comparisons between implementations (rac.fast, rac.reference, llm-compressor) are in
bench_compare.py, through the one interleaved harness (harness.py), with the problem's bounds
from bounds.py; this file times single parts, each against its own FLOP count.

    nox -s bench                                             # all sizes, JSON under docs/bench/
    pytest conformance/benchmarks/bench_layer.py --benchmark-json=out.json
    RAC_BENCH_QUICK=1 pytest conformance/benchmarks/bench_layer.py --benchmark-disable   # 64 x 64, seconds

Every case stores in ``extra_info`` what it is measured against:

- FLOPs (counted from the algorithm as implemented, ``*_flops`` below) over the
  GEMM rate measured in the same run on the same device (square GEMM of the
  layer's size, best of 3, float32 and float64), and
- bytes that must move at least (read W, write weight and mask) over the copy
  bandwidth measured in the same run (best of 3),

the larger of the two as ``lower_bound_s``, and the device, thread count and
load average. ``conformance/benchmarks/summarise.py`` turns the JSON into the
tables of docs/benchmarks.md (ratio = measured min / lower bound).

Device: CUDA when available, else CPU (``RAC_BENCH_DEVICE`` overrides); ``RAC_BENCH_ALL=1``
also runs the reference ALPS at 4096 (about 10 minutes per case on this CPU);
``RAC_BENCH_THREADS`` sets torch's CPU threads (the committed CPU figures use 1:
the 2 cores of this machine are shared, and 2-thread BLAS under that load is
erratic). Sizes: ``RAC_BENCH_SIZES`` (default 1024,4096); ``RAC_BENCH_QUICK=1``
runs 64 only, which a conformance test does in every CI run so this file cannot rot.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from rac.conformance.checking.strategies import llm_like_layer
from rac.reference.contract import registry

QUICK = os.environ.get("RAC_BENCH_QUICK") == "1"
SIZES = (64,) if QUICK else tuple(int(s) for s in os.environ.get("RAC_BENCH_SIZES", "1024,4096").split(","))
DEVICE = torch.device(os.environ.get("RAC_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
if os.environ.get("RAC_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["RAC_BENCH_THREADS"]))
METHODS = registry.with_implementation("fast")
SETTINGS = {"unstructured": dict(sparsity=0.5), "2:4": dict(pattern="2:4")}

#: Reference runs that take far longer than a benchmark session should (float64 ADMM with a sorted
#: projection every iteration): run only with RAC_BENCH_ALL=1 (docs/benchmarks.md says when it was).
REFERENCE_TOO_SLOW = set() if os.environ.get("RAC_BENCH_ALL") == "1" else {("alps", 4096)}

_RATES: dict = {}


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


layer = llm_like_layer  # the shared recipe (rac.conformance.checking.strategies)


def best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_rate(size: int, dtype: torch.dtype) -> float:
    """FLOP/s of a square GEMM of the layer's size on DEVICE (full precision: TF32 off), best of 3.

    At least 1024 x 1024: smaller GEMMs do not reach the device's rate, and a bound from a rate
    the device can beat would not be a lower bound.
    """
    key = ("gemm", size, dtype)
    if key not in _RATES:
        n = max(size, 1024)
        a = torch.randn(n, n, dtype=dtype, device=DEVICE)
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            a @ a  # warm-up
            _RATES[key] = 2 * n**3 / best_time(lambda: a @ a)
        finally:
            torch.set_float32_matmul_precision(previous)
    return _RATES[key]


def bandwidth() -> float:
    """Bytes/s of a 256 MiB device copy (read + write), best of 3."""
    if "bw" not in _RATES:
        src = torch.empty(64 * 2**20, dtype=torch.float32, device=DEVICE).fill_(1.0)
        dst = torch.empty_like(src)
        dst.copy_(src)
        _RATES["bw"] = 2 * src.numel() * 4 / best_time(lambda: dst.copy_(src))
    return _RATES["bw"]


# ----------------------------------------------------------------------------- FLOP and byte counts


def sparsegpt_flops(out: int, n: int, impl: str, chunk: int = 32) -> dict:
    """FLOPs by dtype. fast: reversed Cholesky n^3/3 + triangular solve n^3 (float64); sweep: the trailing
    GEMMs sum 2 out P (n - b) ~ out n^2, chunk GEMMs and rank-1 updates ~ 2 out n chunk (float32).
    reference: Cholesky, potri and Cholesky again, 4/3 n^3, and the per-column rank-1 sweep out n^2 (float64)."""
    if impl == "fast":
        return {"float64": n**3 / 3 + n**3, "float32": out * n**2 + 2 * out * n * chunk}
    return {"float64": 4 * n**3 / 3 + out * n**2}


def alps_flops(out: int, n: int, info: dict, impl: str) -> dict:
    """eigh (tridiagonalisation 4/3 n^3 + eigenvector back-transformation 2 n^3, a lower estimate), one
    GEMM 2 out n^2 per ADMM iteration, (H + rho I)^{-1} rebuilt ~ every 3rd iteration (2 n^3),
    2 GEMMs per CG iteration; all float64 in both implementations (PREC-5)."""
    iters, cg = info.get("iterations", 0), info.get("cg_iterations", 0)
    return {"float64": 10 * n**3 / 3 + iters * 2 * out * n**2 + (iters // 3 + 1) * 2 * n**3 + (cg + 2) * 2 * out * n**2}


def min_bytes(out: int, n: int, itemsize: int, method: str) -> int:
    """What any implementation of the interface moves: read W and H (GEN-5 checks all of H: finite,
    symmetric), write the weight and the bool mask."""
    return out * n * (2 * itemsize + 1) + n * n * itemsize


def lower_bound(flops: dict, nbytes: int, size: int) -> float:
    t_flops = sum(f / gemm_rate(size, getattr(torch, dt)) for dt, f in flops.items())
    return max(t_flops, nbytes / bandwidth())


# ----------------------------------------------------------------------------- the benchmarks


def inputs(size: int, impl: str):
    """What each side is given: fast gets float32 on DEVICE (its real input), the reference float64 on the CPU."""
    W, H = layer(size)
    if impl == "fast":
        return W.to(DEVICE, torch.float32), H.to(DEVICE, torch.float32)
    return W, H


# ----------------------------------------------------------------------------- SparseGPT sweep variants


def compiled_chunk_fn():
    """The in-chunk column loop as one torch.compile'd function of a fixed chunk width (unstructured).

    Not used by rac.fast: on this CPU it was slower than the eager loop (docs/benchmarks.md);
    benchmarked so a GPU run measures it too.
    """
    def columns(WT, U, pruneF):
        errs = []
        rows = torch.arange(WT.shape[0], device=WT.device)
        for i in range(WT.shape[0]):
            e = WT[i] * pruneF[i] / U[i, i]
            WT = WT - (U[i].unsqueeze(1) * e) * (rows > i).unsqueeze(1)
            errs.append(e)
        return WT * (1 - pruneF), torch.stack(errs)

    compiled = torch.compile(columns, dynamic=False)

    def chunk_fn(WT, U, keepT, errT, j0, j1, d, dead, nm, pruneF):
        WT[j0:j1], errT[j0:j1] = compiled(WT[j0:j1], U[j0:j1, j0:j1].contiguous(), pruneF[j0:j1])

    return chunk_fn


SWEEP_VARIANTS = {
    "one-level (original: rank-1 updates over the 128-column panel)": dict(panel=128, chunk=128),
    "two-level, chunk 32 (rac.fast default)": dict(panel=128, chunk=32),
    "two-level, chunk 8": dict(panel=128, chunk=8),
    "two-level, chunk 32, compiled column loop": dict(panel=128, chunk=32, compiled=True),
}


@pytest.mark.parametrize("variant", list(SWEEP_VARIANTS))
@pytest.mark.parametrize("size", SIZES)
def test_bench_sweep_variants(benchmark, size, variant):
    """The float32 sweep alone (factor precomputed), unstructured 50%: what each in-panel schedule costs."""
    from rac.fast.factor import factor_with_recovery
    from rac.fast.sparsegpt import dead_inputs, sparsegpt_sweep
    from rac.reference import parse_pattern

    opts = dict(SWEEP_VARIANTS[variant])
    if opts.pop("compiled", False):
        if QUICK:
            pytest.skip("compiling takes tens of seconds; not in quick mode")
        opts["chunk_fn"] = compiled_chunk_fn()
    W, H = inputs(size, "fast")
    U, _ = factor_with_recovery(H, 0.01, "raise")
    dead = dead_inputs(H)
    pattern = parse_pattern("unstructured")
    if "chunk_fn" in opts:  # compile (shape-specialised) outside the timing
        sparsegpt_sweep(W.clone(), U, dead, pattern, 0.5, 128, **opts)

    def run():
        sparsegpt_sweep(W.clone(), U, dead, pattern, 0.5, 128, **opts)
        sync()

    benchmark.pedantic(run, rounds=1 if size > 1024 else 3, iterations=1)
    flops = {"float32": W.shape[0] * W.shape[1] ** 2 + 2 * W.shape[0] * W.shape[1] * opts["chunk"]}
    benchmark.extra_info.update(
        variant=variant, size=size, device=str(DEVICE), torch_threads=torch.get_num_threads(),
        loadavg_1min=os.getloadavg()[0], flops=flops, gemm_flops_per_s={"float32": gemm_rate(size, torch.float32)},
        lower_bound_s=lower_bound(flops, 0, size),
    )


# ----------------------------------------------------------------------------- SparseGPT factorisation


@pytest.mark.parametrize("recipe", ["reversed Cholesky (rac.fast)", "Cholesky, inverse, Cholesky (original)"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", SIZES)
def test_bench_factor(benchmark, size, recipe, dtype):
    """U with U^T U = H_d^{-1}: the two recipes of fast/factor.py's docstring, in float64 (rac.fast) and float32."""
    from rac.fast.factor import damping, inverse_cholesky_upper

    _, H = layer(size)
    H_d = H.to(DEVICE, getattr(torch, dtype))
    H_d.diagonal().add_(damping(H_d, 0.01))
    if recipe.startswith("reversed"):
        def run():
            inverse_cholesky_upper(H_d)
            sync()
        flops = size**3 / 3 + size**3
    else:
        def run():
            torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H_d)), upper=True)
            sync()
        flops = 4 * size**3 / 3
    benchmark.pedantic(run, rounds=1 if size > 1024 else 3, iterations=1)
    benchmark.extra_info.update(
        recipe=recipe, dtype=dtype, size=size, device=str(DEVICE), torch_threads=torch.get_num_threads(),
        loadavg_1min=os.getloadavg()[0], flops={dtype: flops},
        gemm_flops_per_s={dtype: gemm_rate(size, getattr(torch, dtype))},
        lower_bound_s=lower_bound({dtype: flops}, 0, size),
    )
