"""``rac layer``: prune one synthetic layer with every registered method and print what each reaches.

    rac layer [--out 64] [--in 256] [--tokens 512] [--kind outliers] [--sparsity 0.5 | --pattern 2:4]

The layer comes from ``rac.fixtures.layers.make_layer`` (the generator of the conformance
suite's hypothesis strategies), so the demo is reproducible from its arguments.
"""

from __future__ import annotations

import time


def run(args) -> int:
    """Prune one random layer (outlier features, as in real LLM activations) with every method."""
    import torch

    from rac.fixtures.layers import make_layer
    from rac.reference import objective, prune_layer, refit
    from rac.reference.contract import registry
    from rac.reference.contract.patterns import parse_pattern

    torch.set_default_dtype(torch.float64)
    layer = make_layer(args.kind, args.out_features, args.in_features, args.tokens, args.seed)
    pattern = parse_pattern(args.pattern, args.in_features, name="--pattern")
    sparsity = None if pattern.kind == "nm" else args.sparsity
    energy = float(((layer.W @ layer.X) ** 2).sum())
    if energy == 0:
        raise ValueError("the drawn layer has ||W X|| = 0: nothing to measure objectives against (change --seed)")
    print(f"layer {args.out_features}x{args.in_features}, {args.tokens} calibration tokens ({args.kind}), "
          f"pattern {pattern}, sparsity {sparsity if sparsity is not None else 1 - pattern.n / pattern.m:g}")
    print(f"{'method':<10} {'kept':>7} {'objective / ||WX||^2':>21} {'refit on its mask':>18} {'time (s)':>9}")
    for method in registry.with_implementation("reference"):
        start = time.perf_counter()
        result = prune_layer(layer.W, layer.H, method=method, sparsity=sparsity, pattern=str(pattern))
        elapsed = time.perf_counter() - start
        obj = objective(layer.W, result.weight, layer.H) / energy
        best = objective(layer.W, refit(layer.W, result.mask, layer.H), layer.H) / energy
        kept = float(result.mask.double().mean())
        print(f"{method:<10} {kept:>7.3f} {obj:>21.6f} {best:>18.6f} {elapsed:>9.3f}")
    return 0


def add_parser(sub) -> None:
    from rac.fixtures.layers import KINDS

    layer = sub.add_parser("layer", help="prune one random layer with every method and print the report",
                           description=__doc__.split("\n\n")[0])
    layer.add_argument("--out", dest="out_features", type=int, default=64)
    layer.add_argument("--in", dest="in_features", type=int, default=256)
    layer.add_argument("--tokens", type=int, default=512)
    layer.add_argument("--kind", default="outliers", choices=KINDS, help="layer kind (default: outliers)")
    layer.add_argument("--sparsity", type=float, default=0.5)
    layer.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M such as 2:4")
    layer.add_argument("--seed", type=int, default=0)
    layer.set_defaults(func=run)
