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
