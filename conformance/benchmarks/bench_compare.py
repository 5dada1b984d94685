"""Every comparison through the one harness (harness.py): layers, Phase I, Phase II.

    python conformance/benchmarks/bench_compare.py layer          # nox -s bench: fast vs reference
    python conformance/benchmarks/bench_compare.py llmcompressor  # nox -s bench_llmcompressor: fast vs llm-compressor
    python conformance/benchmarks/bench_compare.py phase1         # nox -s bench: Phase I, fast vs reference
    python conformance/benchmarks/bench_compare.py phase2         # nox -s bench: Phase II vs its bound
    python conformance/benchmarks/bench_compare.py layer --quick  # 64 x 64, 1 round, 1 thread (CI, via a test)

Each case (size, method, setting) runs at every thread count of ``--threads`` (default 1,2), its
implementations interleaved round by round; every case stores its lower bound from bounds.py at the
float32 GEMM rate and copy bandwidth measured around it, each implementation's objective
tr(D H D^T) / tr(W H W^T) (D = W - W_hat, float64) and its weights pruned beyond the spec's count.
What each side is given: rac.fast float32 W and H (its real input), the reference float64, the
llm-compressor adapter float64 (it converts to float32 inside the timed call, as its own code
would). JSON: ``--out`` (nox writes docs/bench/<kind>-cpu-<UTC time>.json); summarise.py reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bounds  # noqa: E402
import harness  # noqa: E402

SETTINGS = {"unstructured": dict(sparsity=0.5), "2:4": dict(pattern="2:4")}
OPTIONS = {"sparsegpt": dict(blocksize=128, dampening=0.01)}
#: (impl, method, size) pairs too slow for a session: the float64 per-column reference at 4096
#: (minutes per round) and the reference ALPS from 1024 (float64 ADMM with a sort per iteration).
TOO_SLOW = {("reference", "sparsegpt", 4096), ("reference", "alps", 1024), ("reference", "alps", 4096),
            ("fast", "alps", 4096), ("reference", "wanda", 4096), ("reference", "magnitude", 4096)}


def objective(W64, H64, weight) -> float:
    D = W64 - weight.detach().cpu().to(torch.float64)
    return float(((D @ H64) * D).sum() / ((W64 @ H64) * W64).sum())


def excess_pruned(mask, method: str, setting: str, blocksize: int = 128) -> int:
    """Weights pruned beyond floor(s |group|) (CNT-1 / NM-1), summed over the comparison groups."""
    out, n = mask.shape
    pruned = ~mask.cpu()
    if setting == "2:4":
        return int((pruned.reshape(out, -1, 4).sum(-1) - 2).clamp(min=0).sum())
    if method != "sparsegpt":  # one group per row (wanda, magnitude per output) or the whole layer: row bound
        return int((pruned.sum(1) - n // 2).clamp(min=0).sum())
    blocks = pruned.reshape(out, -1, min(blocksize, n)).sum((0, 2))
    return int((blocks - out * min(blocksize, n) // 2).clamp(min=0).sum())


def implementations(names: list):
    out = {}
    for name in names:
        if name == "llmcompressor":
            from rac.conformance.adapters import llmcompressor as adapter

            out[name] = (adapter.prune_layer, torch.float64)
        elif name == "fast":
            import rac.fast

            out[name] = (rac.fast.prune_layer, torch.float32)
        elif name == "reference":
            import rac.reference

            out[name] = (rac.reference.prune_layer, torch.float64)
    return out


def run_case(size: int, method: str, setting: str, impls: dict, threads: int, rounds: int, quick: bool = False) -> dict:
    from rac.conformance.checking.strategies import llm_like_layer

    W64, H64 = llm_like_layer(size)
    kwargs = dict(method=method, **SETTINGS[setting], **OPTIONS.get(method, {}))
    calls = {}
    for label, (prune, dtype) in impls.items():
        if (label, method, size) in TOO_SLOW:
            continue
        W, H = W64.to(dtype), H64.to(dtype)
        calls[label] = (lambda prune=prune, W=W, H=H: prune(W, H, **kwargs)[:2])
    slow = any(label != "fast" for label in calls) and size >= 4096
    if slow and "fast" in calls:
        # No warm-up round for these cases (the other side's would take minutes), so run rac.fast once on a small
        # layer with the same options: a compiled kernel (fast/numba_sweep.py) is built once per process and
        # dtype, a cost of the process's first call (seconds), not of a layer's
        w, h = llm_like_layer(64)
        impls["fast"][0](w.float(), h.float(), **kwargs)
    case = harness.compare(
        f"{method} {setting} {size}x{size}", calls, threads=threads, rounds=rounds,
        gemm_size=256 if quick else min(max(size, 1024), 2048), warmup=not slow, rate_repeats=1 if quick else 3,
        meta=dict(kind="layer", method=method, setting=setting, out=size, n=size),
    )
    results = case.pop("results")
    case["objective_relative"] = {k: objective(W64, H64, r[0]) for k, r in results.items()}
    case["excess_pruned"] = {k: excess_pruned(r[1], method, setting) for k, r in results.items()}
    flops = bounds.sparsegpt_flops(size, size) if method == "sparsegpt" else {}
    nbytes = bounds.layer_bytes(size, size, 4)
    case["bound"] = {
        "flops": flops, "bytes": nbytes,
        "seconds": bounds.bound_seconds(sum(flops.values()), case["rates"]["gemm_float32"], nbytes,
                                        case["rates"]["copy_bytes_per_s"]),
        "of": "problem minimum in float32 (bounds.py)" if flops else "bytes only (bounds.py)",
    }
    return case


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["layer", "llmcompressor", "phase1", "phase2"])
    p.add_argument("--sizes", default=None)
    p.add_argument("--methods", default=None)
    p.add_argument("--settings", default="unstructured,2:4")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per case: default 3 (layers), 5 (phase1), 1 (phase2)")
    p.add_argument("--quick", action="store_true", help="64 x 64, 1 round, 1 thread: the harness runs, untimed")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.kind in ("phase1", "phase2"):
        return phases(args, argv)
    if args.kind == "layer":
        from rac.reference.contract import registry

        names = ["fast", "reference"]
        methods = args.methods.split(",") if args.methods else list(registry.with_implementation("fast"))
        sizes = args.sizes or "1024,4096"
    else:
        names = ["fast", "llmcompressor"]
        methods = args.methods.split(",") if args.methods else ["sparsegpt", "wanda"]
        sizes = args.sizes or "1024,4096"
    threads = [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or 3
    if args.quick:
        sizes, threads, rounds = "64", [1], 1
    impls = implementations(names)
    report = {"kind": args.kind, **harness.machine(), "command": " ".join([os.path.basename(sys.argv[0])] +
                                                                           (argv or sys.argv[1:])), "cases": []}
    for size in (int(s) for s in sizes.split(",")):
        for method in methods:
            for setting in args.settings.split(","):
                for t in threads:
                    case = run_case(size, method, setting, impls, t, rounds, args.quick)
                    report["cases"].append(case)
                    best = {k: min(harness.times(case, k)) for k in {s["impl"] for s in case["samples"]}}
                    print(f"{case['name']} threads={t}: " + ", ".join(f"{k} {v:.3g} s" for k, v in best.items())
                          + f", bound {case['bound']['seconds']:.3g} s, load {os.getloadavg()[0]:.1f}", flush=True)
                    if args.out:  # after every case: a run stopped early keeps what it measured
                        with open(args.out, "w") as f:
                            json.dump(report, f, indent=1)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def phases(args, argv) -> int:
    """Phase I (fast vs reference on the qwen3 fixture, ``--rounds`` rounds) or Phase II (fast vs its bound on the
    Llama shape, one round unless ``--rounds`` says more) at every thread count of ``--threads``."""
    import cases_phase1
    import cases_phase2

    module = cases_phase1 if args.kind == "phase1" else cases_phase2
    threads = [1] if args.quick else [int(t) for t in args.threads.split(",")]
    rounds = 1 if args.quick else (args.rounds or (5 if args.kind == "phase1" else 1))
    report = {"kind": args.kind, **harness.machine(), "command": " ".join([os.path.basename(sys.argv[0])] +
                                                                           (argv or sys.argv[1:])), "cases": []}
    for t in threads:
        case = module.run_case(t, rounds, args.quick)
        report["cases"].append(case)
        print(module.summary(case), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
