"""Probe behind SGPT-1's tolerance (tolerances.replay_rtol): how close a correct float32 SparseGPT comes to
it, and how often two plausible bugs exceed it.

    python conformance/benchmarks/probe_tolerances.py [--layers 400]

On generated layers (every kind of ``rac.fixtures.layers``, 8 to 300 inputs, dampening 0.001 to 1,
blocksize 8, or 128 above 128 inputs) three float32 SparseGPTs written as the original code is
(float32 Cholesky, inverse, Cholesky; lazy block updates) are replayed through the reference OBS
sweep with their own masks: a correct one, one whose H is rounded through bfloat16 (a perturbed
Hessian) and one that forgets the lazy update after each block. Prints, over the layers, the
largest error of the correct one as a fraction of the bound, and the share of layers on which
each buggy one exceeds the bound. Layers whose bound exceeds MAX_REPLAY_RTOL are counted apart
(the suite does not use them).
"""

from __future__ import annotations

import argparse
import random

import torch

from rac.conformance.checking.oracles import sparsegpt_replay
from rac.conformance.checking.tolerances import MAX_REPLAY_RTOL, replay_rtol
from rac.fixtures.layers import KINDS, make_layer
from rac.reference.contract.patterns import Pattern, pruned_count
from rac.reference.masks import prune_lowest


def sparsegpt32(W, H, sparsity, blocksize, dampening, bf16_h=False, lazy=True):
    """Unstructured SparseGPT in float32, the original code's recipe."""
    W, H = W.to(torch.float32).clone(), H.to(torch.float32)
    if bf16_h:
        H = H.to(torch.bfloat16).to(torch.float32)
    n = W.shape[1]
    dead = torch.diagonal(H) == 0
    mean = float(torch.diagonal(H).mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(
        H + dampening * (mean if mean > 0 else 1.0) * torch.eye(n))), upper=True)
    mask = torch.ones_like(W, dtype=torch.bool)
    for a in range(0, n, blocksize):
        b = min(a + blocksize, n)
        block, Ub, err = W[:, a:b].clone(), U[a:b, a:b], torch.zeros(W.shape[0], b - a)
        scores = (block.square() / torch.diagonal(Ub).square()).masked_fill(dead[a:b], 0.0)
        k = pruned_count(sparsity, scores.numel())
        mask[:, a:b] = prune_lowest(scores.double().reshape(-1), k).reshape(scores.shape)
        for i in range(b - a):
            w = block[:, i]
            q = w.masked_fill(~mask[:, a + i], 0.0)
            err[:, i] = (w - q) / Ub[i, i]
            block[:, i:] -= err[:, i : i + 1] * Ub[i, i:].unsqueeze(0)
            block[:, i] = q
        W[:, a:b] = block
        if lazy:
            W[:, b:] -= err @ U[a:b, b:]
    return W.double(), mask


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    eps = float(torch.finfo(torch.float32).eps)
    worst, exceeded, counted, unused = 0.0, {"bf16": 0, "nolazy": 0}, {"bf16": 0, "nolazy": 0}, 0
    for _ in range(args.layers):
        kind, n = rng.choice(KINDS), rng.choice([8, 16, 24, 40, 160, 300])
        tokens = rng.randint(1, 3 * n + 8)
        if kind not in ("rank_deficient", "mixed"):
            tokens = max(tokens, n + 1)
        d, s = rng.choice([0.001, 0.01, 0.1, 1.0]), rng.choice([0.3, 0.5, 0.7])
        layer = make_layer(kind, rng.randint(1, 12), n, tokens, rng.randint(0, 10**6))
        rtol = replay_rtol(eps, layer.H, d)
        if rtol > MAX_REPLAY_RTOL:
            unused += 1
            continue
        bs = 128 if n > 128 else 8
        for variant in ("ok", "bf16", "nolazy"):
            try:
                w, m = sparsegpt32(layer.W, layer.H, s, bs, d, bf16_h=variant == "bf16", lazy=variant != "nolazy")
                replay = sparsegpt_replay(layer.W, layer.H, m, Pattern("unstructured"), s, bs, d, rtol=1.0)
            except Exception:  # a float32 Cholesky that fails: no result to compare
                continue
            err = float((w - replay).abs().max()) / max(1.0, float(replay.abs().max()))
            if variant == "ok":
                worst = max(worst, err / rtol)
            elif n > bs or variant == "bf16":
                counted[variant] += 1
                exceeded[variant] += err > rtol
    print(f"{args.layers} layers, {unused} not used (bound above {MAX_REPLAY_RTOL:g})")
    print(f"correct float32 SparseGPT: largest error / bound {worst:.3g}")
    cases = (("bf16", "H rounded through bfloat16"), ("nolazy", "no lazy update (layers of several blocks)"))
    for variant, what in cases:
        print(f"{what}: exceeds the bound on {exceeded[variant]} of {counted[variant]} layers "
              f"({exceeded[variant] / max(counted[variant], 1):.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
