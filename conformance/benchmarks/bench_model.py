"""Model-level benchmarks that are not comparisons between implementations: Phase II on the fixture, and
Phase II's peak memory against N.

    nox -s bench                                               # with the harness cases, JSON under docs/bench/
    pytest conformance/benchmarks/bench_model.py --benchmark-json=out.json
    RAC_BENCH_QUICK=1 pytest conformance/benchmarks/bench_model.py --benchmark-disable    # tiny shapes, seconds

Phase I (fast against the reference) and Phase II at the Llama shape (against its bound) run through
the interleaved harness instead: ``bench_compare.py phase1`` / ``phase2`` (cases_phase1.py,
cases_phase2.py). Cases here (each stores what it is measured against in ``extra_info``):

- ``test_phase2_fixture[impl]``: SparseGPT 50 % of the qwen3 fixture on 16 traces of 64 tokens.
- ``test_phase2_memory[N]``: peak resident memory of a fresh process that runs Phase II at
  N = 10k and 200k tokens with the same model (256 hidden): the block-input store grows with N
  (N x hidden x 4 bytes, reported), the rest must not (``working_bytes`` = peak - baseline -
  store).

Device: CUDA when available (then peak memory is ``torch.cuda.max_memory_allocated``), else CPU.
``RAC_BENCH_THREADS`` sets torch's CPU threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

QUICK = os.environ.get("RAC_BENCH_QUICK") == "1"
DEVICE = torch.device(os.environ.get("RAC_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
if os.environ.get("RAC_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["RAC_BENCH_THREADS"]))
warnings.filterwarnings("ignore", category=UserWarning, module="rac.fast.compress")

#: token counts of test_phase2_memory, and the model width there
MEMORY_TOKENS = (1024, 8192) if QUICK else (10_000, 200_000)
MEMORY_SHAPE = (64, 176, 2) if QUICK else (256, 704, 2)
SEQ_LEN = 256 if QUICK else 512


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def random_model(hidden: int, intermediate: int, blocks: int, seed: int = 0):
    """cases_phase2.random_model: a random LlamaForCausalLM, float32, eval (one definition for every benchmark)."""
    return _cases_phase2().random_model(hidden, intermediate, blocks, seed)


def random_calibration(tokens: int, seq_len: int = SEQ_LEN, seed: int = 0):
    """cases_phase2.random_calibration: random ids, the first quarter of each sequence labelled prompt."""
    return _cases_phase2().random_calibration(tokens, seq_len, seed)


def _cases_phase2():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import cases_phase2
    finally:
        sys.path.pop(0)
    return cases_phase2


def phase2_flops(model, tokens: int, seq_len: int, propagation: str = "sequential") -> dict:
    """Phase II's minimum by part: bounds.phase2_flops (Hessians as symmetric rank-N updates, N in^2; the
    Cholesky once per distinct input, in^3 / 3; the sweeps out in^2; two forward passes per block, one for
    the last)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import bounds
    finally:
        sys.path.pop(0)
    return bounds.phase2_flops(model, tokens, seq_len, propagation)


# --------------------------------------------------------------------------- Phase I and II on the fixture


_FIXTURE: dict = {}


def fixture_calibration():
    from rac.conformance.checking.fixture_models import fresh, problems, tokenizer
    from rac.fast import collect_calibration

    if "calib" not in _FIXTURE:
        _FIXTURE["calib"] = collect_calibration(fresh("qwen3"), tokenizer("qwen3"), list(problems(16)), mode="rac",
                                                max_new_tokens=64)
    return _FIXTURE["calib"]


@pytest.mark.benchmark(group="phase2-fixture")
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_phase2_fixture(benchmark, impl):
    import importlib

    from rac.conformance.checking.fixture_models import fresh

    compress = importlib.import_module(f"rac.{impl}").compress
    calib = fixture_calibration()
    benchmark.pedantic(
        lambda: compress(fresh("qwen3"), calib, method="sparsegpt", sparsity=0.5), rounds=1 if QUICK else 3
    )
    benchmark.extra_info.update(
        tokens=calib.num_tokens, device=str(DEVICE), threads=torch.get_num_threads(), load=os.getloadavg()[0]
    )


# --------------------------------------------------------------------------- Phase II memory against N


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (resident peak) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(tokens: int) -> dict:
    """Run in a fresh process: peak memory of Phase II at ``tokens`` calibration tokens.

    CPU: resident memory once the model and the calibration set exist (baseline), then the
    kernel's peak-RSS counter is reset (``5 > /proc/self/clear_refs``) and read after Phase II.
    CUDA: ``torch.cuda.memory_allocated`` before and ``max_memory_allocated`` during.
    """
    from rac.fast import compress

    hidden, inter, blocks = MEMORY_SHAPE
    model = random_model(hidden, inter, blocks).to(DEVICE)
    calib = random_calibration(tokens)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    t = time.perf_counter()
    compress(model, calib, method="sparsegpt", sparsity=0.5, device=DEVICE, batch_size=8, chunk_tokens=4096)
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else _status_bytes("VmHWM")
    store = calib.num_tokens * hidden * 4
    return {
        "tokens": calib.num_tokens,
        "baseline_bytes": base,
        "peak_bytes": peak,
        "store_bytes": store,
        "working_bytes": peak - base - store,
        "seconds": seconds,
        "device": str(DEVICE),
    }


@pytest.mark.benchmark(group="phase2-memory")
@pytest.mark.parametrize("tokens", MEMORY_TOKENS)
def test_phase2_memory(benchmark, tokens):
    def child():
        out = subprocess.run(
            [sys.executable, __file__, "memory", str(tokens)],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(child, rounds=1)
    benchmark.extra_info.update(result)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "memory":
    print(json.dumps(_memory_child(int(sys.argv[2]))))
