"""Model-level benchmarks: Phase I and Phase II, rac.fast against rac.reference and against lower bounds.

    nox -s bench                                               # with the layer benchmarks, JSON under docs/bench/
    pytest conformance/benchmarks/bench_model.py --benchmark-json=out.json
    RAC_BENCH_QUICK=1 pytest conformance/benchmarks/bench_model.py --benchmark-disable    # tiny shapes, seconds

Cases (each stores what it is measured against in ``extra_info``):

- ``test_phase1_fixture[impl]``: 16 greedy traces of 64 tokens on the qwen3 fixture: generated
  tokens per second, reference (one token per forward) against fast (batched, KV cache).
- ``test_phase2_fixture[impl]``: SparseGPT 50 % of the qwen3 fixture on those traces.
- ``test_phase2_shape``: Phase II (Hessians + SparseGPT 50 % + sequential propagation) of a
  random Llama-shaped model, 1024 hidden, 2816 FFN, 4 blocks, on 64k calibration tokens (the
  design's CPU target: within 3x of its GEMM-bound lower bound). Lower bound = (Hessian FLOPs
  2 N sum(in^2) + forward FLOPs of two passes per block + the SparseGPT sweeps 2 out in^2)
  over the float32 GEMM rate measured in the same run on the same device.
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

#: (hidden, intermediate, blocks, tokens) of test_phase2_shape
SHAPE = (64, 176, 2, 2048) if QUICK else (1024, 2816, 4, 65536)
#: token counts of test_phase2_memory, and the model width there
MEMORY_TOKENS = (1024, 8192) if QUICK else (10_000, 200_000)
MEMORY_SHAPE = (64, 176, 2) if QUICK else (256, 704, 2)
SEQ_LEN = 256 if QUICK else 512


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def random_model(hidden: int, intermediate: int, blocks: int, seed: int = 0):
    """A random LlamaForCausalLM (head dim 64, 4x fewer KV heads than heads where possible), float32, eval."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), vocab_size=640,
                         max_position_embeddings=4096, pad_token_id=2, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def random_calibration(tokens: int, seq_len: int = SEQ_LEN, seed: int = 0):
    """tokens // seq_len sequences of random ids, the first quarter of each labelled prompt, the rest decode."""
    from rac.reference import LABELS, CalibrationSet

    g = torch.Generator().manual_seed(seed)
    n = max(1, tokens // seq_len)
    seqs = [torch.randint(3, 640, (seq_len,), generator=g) for _ in range(n)]
    labels = []
    for _ in range(n):
        lab = torch.full((seq_len,), LABELS.index("decode"), dtype=torch.long)
        lab[: seq_len // 4] = LABELS.index("prompt")
        labels.append(lab)
    return CalibrationSet(seqs, labels, {"mode": "synthetic"})


def gemm_rate(m: int, k: int, n: int, rounds: int = 5) -> float:
    """Float32 FLOP/s of an (m x k) @ (k x n) product on DEVICE, best of ``rounds``."""
    a = torch.randn(m, k, device=DEVICE)
    b = torch.randn(k, n, device=DEVICE)
    best = float("inf")
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def phase2_flops(model, tokens: int, seq_len: int) -> dict:
    """Phase II's minimum by part: bounds.phase2_flops (Hessians as symmetric rank-N updates, N in^2; the
    Cholesky once per distinct input, in^3 / 3; the sweeps out in^2; two forward passes)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import bounds
    finally:
        sys.path.pop(0)
    return bounds.phase2_flops(model, tokens, seq_len)


# --------------------------------------------------------------------------- Phase I and II on the fixture


_FIXTURE: dict = {}


def fixture_calibration():
    from rac.conformance.checking.fixture_models import fresh, problems, tokenizer
    from rac.fast import collect_calibration

    if "calib" not in _FIXTURE:
        _FIXTURE["calib"] = collect_calibration(fresh("qwen3"), tokenizer("qwen3"), list(problems(16)), mode="rac",
                                                max_new_tokens=64)
    return _FIXTURE["calib"]


@pytest.mark.benchmark(group="phase1-fixture")
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_phase1_fixture(benchmark, impl):
    import importlib

    from rac.conformance.checking.fixture_models import fresh, problems, tokenizer

    collect = importlib.import_module(f"rac.{impl}").collect_calibration
    model, tok = fresh("qwen3"), tokenizer("qwen3")
    prompts = list(problems(4 if QUICK else 16))
    new = 8 if QUICK else 64
    result = benchmark.pedantic(lambda: collect(model, tok, prompts, mode="rac", max_new_tokens=new),
                                rounds=1 if QUICK else 3)
    benchmark.extra_info.update(
        generated_tokens=result.count("decode"),
        prompts=len(prompts),
        device=str(DEVICE),
        threads=torch.get_num_threads(),
        load=os.getloadavg()[0],
    )


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


# --------------------------------------------------------------------------- Phase II at a real width


@pytest.mark.benchmark(group="phase2-shape")
def test_phase2_shape(benchmark):
    from rac.fast import compress

    hidden, inter, blocks, tokens = SHAPE
    model = random_model(hidden, inter, blocks).to(DEVICE)
    calib = random_calibration(tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run():
        model.load_state_dict(state)
        sync()
        compress(model, calib, method="sparsegpt", sparsity=0.5, device=DEVICE, batch_size=16, chunk_tokens=8192)
        sync()

    # the machine is shared: the GEMM rate is measured before and after the run and the best is the
    # bound's rate (a rate measured under a passing load would make the bound too lenient)
    rates = [gemm_rate(8192, hidden, inter), gemm_rate(hidden, 8192, hidden)]
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    rates += [gemm_rate(8192, hidden, inter), gemm_rate(hidden, 8192, hidden)]
    flops = phase2_flops(model, calib.num_tokens, SEQ_LEN)
    rate = max(rates)
    lower = sum(flops.values()) / rate
    benchmark.extra_info.update(
        shape=dict(hidden=hidden, intermediate=inter, blocks=blocks, tokens=calib.num_tokens),
        flops=flops,
        gemm_flops_per_s=rate,
        lower_bound_s=lower,
        device=str(DEVICE),
        threads=torch.get_num_threads(),
        load=os.getloadavg()[0],
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
