"""Hypothesis strategies for layers that are hard, not only easy.

A drawn case is a ``Layer``: weights W (out, in), calibration activations X
(in, N) and H = X X^T. Its ``repro`` string rebuilds it exactly with
``make_layer``, so every failure comes with a one-line reproduction.

Kinds (combinable in "mixed"):
- gaussian: W, X standard normal, N >= in (full rank H)
- rank_deficient: N < in tokens, so H is singular
- dead_inputs: some rows of X are exactly zero (inputs that never fire)
- outliers: a few input features 100x larger, as in real LLM activations
- near_duplicate: two inputs equal up to 1e-6 relative noise (ill-conditioned H)
- bf16_weights: W rounded through bfloat16 (many exactly tied magnitudes)
- mixed: rank-deficient + dead + outliers + bf16 together
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from rac.reference import hessian

KINDS = ("gaussian", "rank_deficient", "dead_inputs", "outliers", "near_duplicate", "bf16_weights", "mixed")


@dataclass
class Layer:
    W: torch.Tensor
    X: torch.Tensor
    H: torch.Tensor
    kind: str
    repro: str

    def __repr__(self) -> str:  # what hypothesis prints on failure
        return f"Layer<{self.repro}>"


def make_layer(kind: str, out_features: int, in_features: int, tokens: int, seed: int) -> Layer:
    """Deterministically build a layer of the given kind (the reproduction of a drawn case)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    kinds = {"rank_deficient", "dead_inputs", "outliers", "bf16_weights"} if kind == "mixed" else {kind}
    if "rank_deficient" in kinds:
        tokens = max(1, min(tokens, in_features - 1)) if in_features > 1 else tokens
    X = torch.randn(in_features, tokens, generator=g, dtype=torch.float64)
    W = torch.randn(out_features, in_features, generator=g, dtype=torch.float64)
    picks = torch.randperm(in_features, generator=g)
    if "outliers" in kinds:
        n_out = max(1, in_features // 16)
        X[picks[:n_out]] *= 100.0
    if "dead_inputs" in kinds and in_features > 1:
        n_dead = max(1, in_features // 8)
        X[picks[-n_dead:]] = 0.0
    if "near_duplicate" in kinds and in_features > 1:
        i, j = int(picks[0]), int(picks[1])
        X[j] = X[i] * (1 + 1e-6 * torch.randn(tokens, generator=g, dtype=torch.float64))
    if "bf16_weights" in kinds:
        W = W.to(torch.bfloat16).to(torch.float64)
    repro = f"make_layer({kind!r}, {out_features}, {in_features}, {tokens}, {seed})"
    return Layer(W=W, X=X, H=hessian(X), kind=kind, repro=repro)


@st.composite
def layers(draw, *, kinds=KINDS, max_out: int = 12, min_in: int = 2, max_in: int = 40, in_multiple: int = 1):
    """A Layer with in_features a multiple of ``in_multiple`` (for N:M) in [min_in, max_in]."""
    kind = draw(st.sampled_from(kinds))
    out_features = draw(st.integers(1, max_out))
    lo = max(1, -(-min_in // in_multiple))
    in_features = in_multiple * draw(st.integers(lo, max(lo, max_in // in_multiple)))
    tokens = draw(st.integers(1, 3 * in_features + 8))
    if kind not in ("rank_deficient", "mixed"):
        tokens = max(tokens, in_features + 1)
    seed = draw(st.integers(0, 2**31 - 1))
    return make_layer(kind, out_features, in_features, tokens, seed)


sparsities = st.sampled_from([0.1, 0.25, 0.29, 0.3, 0.5, 0.6, 0.7, 0.9]) | st.floats(0.01, 0.95)
nm_patterns = st.sampled_from(["2:4", "1:4", "3:4", "4:8", "1:2", "2:8"])


def nm_m(pattern: str) -> int:
    return int(pattern.split(":")[1])


@functools.lru_cache(maxsize=None)
def llm_like_layer(size: int):
    """The benchmarks' layer: W (size x size), 0.02 N(0, 1) rounded through bf16 as a checkpoint's
    weights are, and H = X X^T from 2 * size tokens of N(0, 1) with size/64 features 20x larger
    (outliers, as LLM activations have); float64, seed = size, built once per size. The layer and
    llm-compressor benchmarks share it so their figures compare."""
    g = torch.Generator().manual_seed(size)
    W = (0.02 * torch.randn(size, size, generator=g)).to(torch.bfloat16).to(torch.float64)
    X = torch.randn(size, 2 * size, generator=g)
    X[torch.randperm(size, generator=g)[: size // 64]] *= 20.0
    X = X.to(torch.float64)
    return W, X @ X.T
