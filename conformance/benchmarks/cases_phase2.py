"""Phase II at a real width through the one harness (harness.py): rac.fast against the problem's bound.

    python conformance/benchmarks/bench_compare.py phase2 --out phase2.json   # 1 and 2 threads, 1 round each
    python conformance/benchmarks/bench_compare.py phase2 --quick             # 64 hidden, 2 blocks, 2,048 tokens

The case (formerly bench_model.py's ``test_phase2_shape``): a random LlamaForCausalLM (1024 hidden, 2816
FFN, 4 blocks, 16 heads and 4 KV heads of 64, fixed seed) and 65,536 calibration tokens (128
sequences of 512, a quarter of each labelled prompt), SparseGPT 50 % of every linear with
sequential propagation (``rac.fast.compress``, batch 16 sequences, 8,192-token chunks). The
reference is not run at this size (float64 Hessians of every token held at once: hours). The bound
is ``bounds.phase2_flops`` (Hessians as symmetric rank-N updates, one Cholesky per distinct input,
the sweeps, two forward passes per block and one for the last) at the best float32 GEMM rate measured around the round.
Every round restores the dense weights first (not timed).
"""

from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bounds  # noqa: E402
import harness  # noqa: E402

#: (hidden, intermediate, blocks, tokens, sequence length), full and quick
FULL = (1024, 2816, 4, 65536, 512)
QUICK = (64, 176, 2, 2048, 256)


def random_model(hidden: int, intermediate: int, blocks: int, seed: int = 0):
    """A random LlamaForCausalLM (head dim 64, 4x fewer KV heads than heads where possible), float32, eval."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), vocab_size=640,
                         max_position_embeddings=4096, pad_token_id=2, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def random_calibration(tokens: int, seq_len: int, seed: int = 0):
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


def run_case(threads: int, rounds: int = 1, quick: bool = False) -> dict:
    """rac.fast's Phase II on the shape above, ``rounds`` rounds at ``threads`` torch threads (no warm-up round:
    a round takes minutes at full size). Adds ``flops`` (by part), ``bound``, ``layers`` and their sparsity range."""
    from rac.fast import compress

    hidden, inter, blocks, tokens, seq_len = QUICK if quick else FULL
    model = random_model(hidden, inter, blocks)
    calib = random_calibration(tokens, seq_len)
    dense = {k: v.clone() for k, v in model.state_dict().items()}

    def run():
        model.load_state_dict(dense)  # not part of Phase II, but inside the timed call (about 0.1 s at full size)
        return compress(model, calib, method="sparsegpt", sparsity=0.5, device="cpu", batch_size=16,
                        chunk_tokens=8192)

    case = harness.compare(
        f"phase2 llama {hidden}/{inter}/{blocks} blocks, {calib.num_tokens} tokens", {"fast": run},
        threads=threads, rounds=rounds, gemm_size=256 if quick else 2048, warmup=quick,
        rate_repeats=1 if quick else 3,
        meta=dict(kind="phase2", hidden=hidden, intermediate=inter, blocks=blocks, tokens=calib.num_tokens,
                  seq_len=seq_len, method="sparsegpt", sparsity=0.5),
    )
    _, report = case.pop("results")["fast"]
    sparsities = [row["sparsity"] for row in report["layers"]]
    flops = bounds.phase2_flops(model, calib.num_tokens, seq_len)
    case["flops"] = flops
    case["bound"] = {"flops": flops, "seconds": bounds.bound_seconds(sum(flops.values()),
                                                                     case["rates"]["gemm_float32"]),
                     "of": "Phase II minimum in float32 (bounds.py)"}
    case["objective_relative"] = {"fast": float("nan")}
    case["layers"] = len(sparsities)
    case["sparsity_min_max"] = [min(sparsities), max(sparsities)]
    return case


def summary(case: dict) -> str:
    ts = harness.times(case, "fast")
    loads = [s["loadavg_1min"] for s in case["samples"]]
    return (f"{case['name']} threads={case['threads']}: fast best {min(ts):.4g} s, bound "
            f"{case['bound']['seconds']:.4g} s ({min(ts) / case['bound']['seconds']:.2f}x), GEMM "
            f"{case['rates']['gemm_float32'] / 1e9:.1f} GFLOP/s, load {min(loads):.2f}-{max(loads):.2f}")
