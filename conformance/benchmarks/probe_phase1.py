"""What each part of rac.fast's Phase I decode loop saves (quoted in fast/calibration.py, ``decode_batch``).

    python conformance/benchmarks/probe_phase1.py [rounds]     # CPU, 1 thread, default 15 rounds

The Phase I case of cases_phase1.py (16 qwen3-fixture prompts x 64 greedy tokens, one batch),
rac.fast only, decoded five ways, interleaved round by round: Hugging Face ``generate`` (what
``cache="dynamic"`` ran before ``decode_batch``: ``calibration.hf_generate``), then
``decode_batch`` with its parts switched on one at a time (the 4-D padding mask, the preallocated
KV cache, inference mode) by patching the module's helpers. Prints best and median wall and CPU
seconds per variant and the per-round ratio to ``generate``; checks that every variant decodes the
same traces. Then one KV-cache update of one layer, ``DynamicCache``'s concatenation against the
preallocated buffer's in-place write, at the fixture's shape and at a Qwen2-7B-like one.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import rac.fast.calibration as fc
from rac.conformance.checking.fixture_models import fresh, problems, tokenizer

PROMPTS, NEW = 16, 64


def main(rounds: int = 15) -> None:
    torch.set_num_threads(1)
    model, tok = fresh("qwen3"), tokenizer("qwen3")
    prompts = list(problems(PROMPTS))
    real = dict(plain=fc._plain_sdpa, pre=fc._preallocated_cache, decode=fc.decode_batch)

    def generate(model, prompts, streams, max_new_tokens, eos_ids, sampling):
        return fc.hf_generate(model, prompts, streams, max_new_tokens, eos_ids, sampling, static=False)

    def variant(decode, plain, pre, inference):
        def run():
            fc.decode_batch = decode
            fc._plain_sdpa = real["plain"] if plain else (lambda m: False)
            fc._preallocated_cache = real["pre"] if pre else (lambda m, c: None)
            if inference:
                model.__dict__.pop("_hf_hook", None)
            else:  # decode_batch stays in no_grad for models with accelerate hooks
                model.__dict__["_hf_hook"] = None
            try:
                return fc.collect_calibration(model, tok, prompts, mode="rac", max_new_tokens=NEW)
            finally:
                fc.decode_batch, fc._plain_sdpa, fc._preallocated_cache = real["decode"], real["plain"], real["pre"]
                model.__dict__.pop("_hf_hook", None)
        return run

    variants = {
        "generate": variant(generate, False, False, False),
        "loop": variant(real["decode"], False, False, False),
        "loop + 4-D mask": variant(real["decode"], True, False, False),
        "loop + 4-D mask + preallocated": variant(real["decode"], True, True, False),
        "loop + all + inference mode": variant(real["decode"], True, True, True),
    }
    first = None
    for name, run in variants.items():
        result = run()
        first = first or result
        assert all(torch.equal(a, b) for a, b in zip(first.sequences, result.sequences)), f"{name}: other traces"
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            t, c = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    print(f"Phase I, {PROMPTS} prompts x {NEW} tokens, qwen3 fixture, 1 thread, {rounds} interleaved rounds")
    for name in variants:
        ratio = statistics.median(a / b for a, b in zip(wall["generate"], wall[name]))
        print(f"{name:32s} wall best {min(wall[name]):.4f} median {statistics.median(wall[name]):.4f} s; "
              f"cpu best {min(cpu[name]):.4f} median {statistics.median(cpu[name]):.4f} s; "
              f"generate / this per round (median) {ratio:.2f}")
    print(f"load {os.getloadavg()}")
    kv_update()


def _best_us(fn, inner: int) -> float:
    """Best of 5 repetitions of ``inner`` calls, microseconds per call."""
    fn()
    out = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        out = min(out, (time.perf_counter() - t) / inner)
    return out * 1e6


def kv_update() -> None:
    """One layer's key update at step ``length``: torch.cat of the whole cache vs a write into a buffer."""
    for batch, heads, length, dim in ((16, 2, 128, 32), (16, 4, 2048, 128)):
        cache = torch.randn(batch, heads, length, dim)
        new = torch.randn(batch, heads, 1, dim)
        buffer = torch.empty(batch, heads, length + 1, dim)
        inner = 200 if length < 1024 else 5
        cat = _best_us(lambda c=cache, n=new: torch.cat([c, n], dim=-2), inner)
        write = _best_us(lambda b=buffer, n=new, at=length: b[:, :, at:at + 1].copy_(n), inner)
        print(f"KV update [{batch}, {heads}, {length}, {dim}] float32: cat {cat:.1f} us, in-place write {write:.1f} us")

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
