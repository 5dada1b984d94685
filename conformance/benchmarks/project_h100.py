"""Lower-bound projection of Phase I and Phase II on one H100 for the design's model shapes.

    python conformance/benchmarks/project_h100.py

Nothing here is measured: it prints what the hardware's datasheet rates allow for the 7B shape of
issue 4 (Qwen2-7B-like: hidden 3584, FFN 18944, 28 blocks, 28 heads / 4 KV heads, bf16) and the
1.5B shape (hidden 1536, FFN 8960, 28 blocks, 12 / 2 heads), so docs/benchmarks.md can say
"projected, not measured" with every input visible. The FLOP count of Phase II is the one
``bench_model.py`` measures against on a CPU (``phase2_flops``), applied to a model built on the
meta device (no memory), plus the float64 factorisations SparseGPT needs per distinct input.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

try:  # run as a script from the repository, or imported by pytest
    from bench_model import phase2_flops
except ImportError:  # pragma: no cover
    from conformance.benchmarks.bench_model import phase2_flops

#: H100 SXM5 datasheet, dense: bf16 tensor cores with fp32 accumulation, fp32 (non-tensor), fp64 tensor
#: cores, HBM3 bandwidth.
H100 = {"bf16": 989e12, "fp32": 67e12, "fp64": 67e12, "hbm": 3.35e12, "memory": 80e9}
#: Assumed cost of one eager decode step of a 28-block Hugging Face model (Python dispatch and
#: kernel launches of ~40 ops per block): an assumption, not a measurement of this project.
EAGER_STEP_S = (0.025, 0.035)

SHAPES = {
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
}
PROMPTS, TRACE, PROMPT_LEN = 128, 8192, 256
#: Llama-3-70B-like, for the several-GPU projection only (issue #18).
SHAPES["70B"] = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                     num_key_value_heads=8, vocab_size=128256)
#: NVLink 4 of an H100 SXM5: 900 GB/s in both directions together, so 450 GB/s into one GPU (datasheet).
NVLINK_IN = 450e9
#: Sequences per Phase II batch (rac.fast's default on an 80 GB GPU is larger; fewer batches, fewer messages).
PHASE2_BATCH = 8


def meta_model(shape: str):
    config = Qwen2Config(**SHAPES[shape], torch_dtype=torch.bfloat16)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def phase2(shape: str) -> dict:
    model = meta_model(shape)
    tokens = PROMPTS * (PROMPT_LEN + TRACE)
    flops = phase2_flops(model, tokens, PROMPT_LEN + TRACE)
    seconds = {
        "hessian": flops["hessian"] / H100["bf16"],  # bf16 activations, fp32 accumulation (PREC-1)
        "forward": flops["forward"] / H100["bf16"],
        "sweep": flops["sweep"] / H100["fp32"],  # full float32, no TF32 (PREC-3)
        # the Cholesky n^3/3 per distinct input (bounds.py; rac.fast's left-looking sweep forms no
        # inverse), at the FP64 tensor-core rate, which equals FP32's on an H100 (PREC-2: float64)
        "factorisation": flops["factor"] / H100["fp64"],
    }
    return {"tokens": tokens, "flops": flops, "seconds": seconds, "lower_bound_s": sum(seconds.values())}


def phase1(shape: str, batch: int) -> dict:
    """Decode: each step reads the weights once and the KV cache of every sequence (mean context =
    prompt + half the trace); generated tokens per second = batch / step time."""
    model = meta_model(shape)
    c = model.config
    weight_bytes = sum(p.numel() for p in model.parameters()) * 2
    head_dim = c.hidden_size // c.num_attention_heads
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2
    kv_bytes = batch * (PROMPT_LEN + TRACE / 2) * kv_per_token
    kv_full = batch * (PROMPT_LEN + TRACE) * kv_per_token
    bandwidth_step = (weight_bytes + kv_bytes) / H100["hbm"]
    return {
        "batch": batch, "weight_GB": weight_bytes / 1e9, "kv_full_GB": kv_full / 1e9,
        "bandwidth_step_ms": 1e3 * bandwidth_step,
        "tokens_per_s_bandwidth": batch / bandwidth_step,
        "tokens_per_s_eager": tuple(batch / max(bandwidth_step, s) for s in reversed(EAGER_STEP_S)),
    }


def distributed(shape: str, ranks: int) -> dict:
    """Phase II on ``ranks`` H100s as rac.fast.distributed does it (spec DIST-2), a lower bound: every rank
    forwards and accumulates 1/ranks of the tokens; each group's H terms go, batch by batch, to its owner
    (one message of in^2 float32 per batch and group, added there in the one-process order); the owners
    factor and sweep their groups, at best ranks at a time, never faster than the largest group; the
    pruned weights are broadcast (bf16). Projected, not measured."""
    one = phase2(shape)
    model = meta_model(shape)
    c = model.config
    blocks, hidden, ffn = c.num_hidden_layers, c.hidden_size, c.intermediate_size
    seconds = one["seconds"]
    parallel = (seconds["hessian"] + seconds["forward"]) / ranks
    # the widest group (down_proj: in = ffn, out = hidden) is one owner's work in every block
    widest = blocks * (hidden * ffn * (ffn - 1) / H100["fp32"] + ffn**3 / 3 / H100["fp64"])  # bounds.py's counts
    owners = max((seconds["sweep"] + seconds["factorisation"]) / ranks, widest)
    batches = -(-PROMPTS // PHASE2_BATCH)
    # the down_proj owner receives the other ranks' share of every batch's ffn x ffn float32 term
    exchange = blocks * batches * (ranks - 1) / ranks * ffn**2 * 4 / NVLINK_IN if ranks > 1 else 0.0
    weights = sum(p.numel() for p in model.model.layers.parameters()) * 2
    broadcast = weights / NVLINK_IN if ranks > 1 else 0.0
    total = parallel + owners + exchange + broadcast
    return {"ranks": ranks, "tokens": one["tokens"], "parallel_s": parallel, "owners_s": owners,
            "exchange_s": exchange, "broadcast_s": broadcast, "lower_bound_s": total,
            "one_gpu_s": one["lower_bound_s"], "model_GB": sum(p.numel() for p in model.parameters()) * 2 / 1e9}


def auto_batch(shape: str) -> int:
    """fast.calibration's batch_size='auto' on an 80 GB GPU: KV cache of prompt + trace in half the
    memory left after the weights, at most 256."""
    model = meta_model(shape)
    c = model.config
    weight_bytes = sum(p.numel() for p in model.parameters()) * 2
    kv_per_seq = (
        2
        * c.num_hidden_layers
        * c.num_key_value_heads
        * (c.hidden_size // c.num_attention_heads)
        * 2
        * (PROMPT_LEN + TRACE)
    )
    return max(1, min(256, int((H100["memory"] - weight_bytes) / 2 // kv_per_seq)))


if __name__ == "__main__":
    print(f"H100 SXM5 datasheet rates: {H100}; {PROMPTS} prompts x ({PROMPT_LEN} + {TRACE}) tokens")
    p2 = phase2("7B")
    print(
        f"Phase II 7B: {p2['tokens']:,} tokens; FLOPs "
        + ", ".join(f"{k} {v:.3g}" for k, v in p2["flops"].items())
    )
    print(
        "  seconds at datasheet rate: "
        + ", ".join(f"{k} {v:.1f}" for k, v in p2["seconds"].items())
        + f"; lower bound {p2['lower_bound_s']:.0f} s"
    )
    for shape in ("1.5B", "7B"):
        b = auto_batch(shape)
        r = phase1(shape, b)
        print(
            f"Phase I {shape}: batch {b} (auto), weights {r['weight_GB']:.1f} GB, KV at full length "
            f"{r['kv_full_GB']:.1f} GB, "
            f"bandwidth-bound step {r['bandwidth_step_ms']:.1f} ms -> {r['tokens_per_s_bandwidth']:,.0f} tok/s; "
            f"with an eager step of {EAGER_STEP_S[0] * 1e3:.0f}-{EAGER_STEP_S[1] * 1e3:.0f} ms: "
            f"{r['tokens_per_s_eager'][0]:,.0f}-{r['tokens_per_s_eager'][1]:,.0f} tok/s"
        )
    for shape in ("7B", "70B"):
        for ranks in (1, 8):
            d = distributed(shape, ranks)
            print(
                f"Phase II {shape} on {ranks} H100(s), {d['tokens']:,} tokens (projected, not measured): forward and "
                f"Hessians {d['parallel_s']:.1f} s, factor and sweep on the owners {d['owners_s']:.1f} s, H terms to "
                f"the owners {d['exchange_s']:.1f} s, weights broadcast {d['broadcast_s']:.1f} s; lower bound "
                f"{d['lower_bound_s']:.0f} s (one GPU: {d['one_gpu_s']:.0f} s); bf16 model {d['model_GB']:.0f} GB held "
                "by every rank's host"
            )
