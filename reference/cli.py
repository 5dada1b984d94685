"""The ``rac`` command: one subcommand per module, so each concern stays in its own file.

    rac layer      prune one random layer with every method, print the report   (this file)
    rac prune      Algorithm 1 on a Hugging Face model, export the pruned model (cli_prune.py)
    rac eval       acc@1 (SE) and thinking tokens of a model on math problems   (cli_eval.py)
    rac experiment the paper's calibration x method x sparsity grid, table, plot (cli_experiment.py)
    rac diagnose   Figure 2: token-wise error ratio prompt-only / RAC, heatmap  (cli_diagnose.py)

Every subcommand module has ``add_parser(subparsers)``, which adds its parser and
sets ``func`` (args -> exit code). Heavy imports happen inside ``func``, so
``rac --help`` stays fast. Errors of the user's making (ValueError, TypeError,
FileNotFoundError, FileExistsError) print one line and exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

#: Modules that contribute a subcommand, in the order ``rac --help`` lists them.
COMMAND_MODULES = (
    "rac.reference.cli",
    "rac.reference.cli_prune",
    "rac.reference.cli_eval",
    "rac.reference.cli_experiment",
    "rac.reference.cli_diagnose",
)


def _layer_report(args) -> int:
    """Prune one random layer (outlier features, as in real LLM activations) with every method."""
    import torch

    from rac.conformance.strategies import make_layer  # the suite's generator, so the demo is reproducible

    from . import METHODS, objective, prune_layer, refit
    from ._validate import parse_pattern

    torch.set_default_dtype(torch.float64)
    layer = make_layer(args.kind, args.out_features, args.in_features, args.tokens, args.seed)
    pattern = parse_pattern(args.pattern, args.in_features)
    sparsity = None if pattern.kind == "nm" else args.sparsity
    energy = float(((layer.W @ layer.X) ** 2).sum())
    print(f"layer {args.out_features}x{args.in_features}, {args.tokens} calibration tokens ({args.kind}), "
          f"pattern {pattern}, sparsity {sparsity if sparsity is not None else 1 - pattern.n / pattern.m:g}")
    print(f"{'method':<10} {'kept':>7} {'objective / ||WX||^2':>21} {'refit on its mask':>18} {'time (s)':>9}")
    for method in METHODS:
        start = time.perf_counter()
        result = prune_layer(layer.W, layer.H, method=method, sparsity=sparsity, pattern=str(pattern))
        elapsed = time.perf_counter() - start
        obj = objective(layer.W, result.weight, layer.H) / energy
        best = objective(layer.W, refit(layer.W, result.mask, layer.H), layer.H) / energy
        kept = float(result.mask.double().mean())
        print(f"{method:<10} {kept:>7.3f} {obj:>21.6f} {best:>18.6f} {elapsed:>9.3f}")
    return 0


def add_parser(sub) -> None:
    layer = sub.add_parser("layer", help="prune one random layer with every method and print the report")
    layer.add_argument("--out", dest="out_features", type=int, default=64)
    layer.add_argument("--in", dest="in_features", type=int, default=256)
    layer.add_argument("--tokens", type=int, default=512)
    layer.add_argument("--kind", default="outliers", help="layer kind of the conformance strategies (default: outliers)")
    layer.add_argument("--sparsity", type=float, default=0.5)
    layer.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M such as 2:4")
    layer.add_argument("--seed", type=int, default=0)
    layer.set_defaults(func=_layer_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rac", description="Reasoning-Aware Compression (RAC) of reasoning LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        print(f"rac {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
