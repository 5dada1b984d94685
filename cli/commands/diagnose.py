"""``rac diagnose``: the paper's Figure 2 on one model (spec DIAG-*).

    rac diagnose --png docs/figure2-toy.png --json docs/figure2-toy.json

Prunes the model twice with the same method, sparsity and token budget, once calibrated on the
prompts only and once with RAC (prompt + the dense model's own traces), then, on held-out
problems, compares each pruned model's last hidden state with the dense model's along the dense
model's greedy rollout: r_t = e_t(prompt) / e_t(RAC) per token, drawn as a heatmap (PNG) and
written with every e_t as JSON (each file through a temporary name, then renamed).
``--with-text`` adds a third model calibrated on the generic corpus and records its e_t too.
With no --model: the bundled toy reasoner, its training problems (a fixed slice) for
calibration and its test problems for the rollouts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rac.cli.options import apply_template_options


def add_parser(sub) -> None:
    from rac.cli.commands.experiment import add_model_and_data_arguments

    p = sub.add_parser("diagnose", help="Figure 2: token-wise error ratio e_prompt / e_rac of the last hidden state "
                                        "along the dense model's rollouts, heatmap PNG + JSON",
                       description=__doc__.split("\n\n")[1])
    data = add_model_and_data_arguments(p)
    data.add_argument(
        "--num-problems", type=int, default=30, help="rows of the heatmap: the first N problems (default 30)"
    )
    data.add_argument(
        "--with-text",
        action="store_true",
        help="also prune with the text calibration (--corpus) and record its e_t (the heatmap stays prompt-only / RAC)",
    )
    data.add_argument("--corpus", default=None, help="text corpus for --with-text (default: the fixtures corpus)")
    data.add_argument("--window", type=int, default=128, help="text: tokens per corpus window (default 128)")
    pr = p.add_argument_group("pruning (the same for both calibrations)")
    pr.add_argument("--method", default="sparsegpt", help="magnitude, wanda, sparsegpt or alps (default sparsegpt)")
    pr.add_argument("--sparsity", type=float, default=None, help="unstructured sparsity (default 0.6 unless --pattern)")
    pr.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M such as 2:4")
    pr.add_argument(
        "--token-budget", type=int, default=16384, help="calibration tokens, each calibration (default 16384)"
    )
    pr.add_argument("--trace-max-new-tokens", type=int, default=256, help="rac: T_max of a trace (default 256)")
    pr.add_argument("--temperature", type=float, default=0.0, help="rac traces: 0 = greedy (default)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--max-new-tokens", type=int, default=320, help="dense rollout length limit (default 320)")
    run = p.add_argument_group("implementation and output")
    run.add_argument("--impl", default="fast", choices=("fast", "reference"))
    run.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--png", default=None, help="write the heatmap here")
    run.add_argument("--json", default=None, help="write the numbers here")
    run.add_argument(
        "--save-models",
        default=None,
        help="also export the pruned models to DIR/prompt, DIR/rac (and DIR/text) (safetensors)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace existing output files")
    run.add_argument("--quiet", action="store_true", help="only the lines that say what was written")
    p.set_defaults(func=run_command)


def _check_outputs(args) -> list:
    outputs = [Path(x) for x in (args.png, args.json) if x]
    if not outputs:
        raise ValueError("give --png FILE and/or --json FILE: nothing would be written")
    if args.png and args.json and Path(args.png).resolve() == Path(args.json).resolve():
        raise ValueError("--png and --json name the same file")
    if args.save_models:
        outputs.append(Path(args.save_models))
    for path in outputs:
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} already exists; choose another path or add --overwrite")
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--png needs matplotlib (a dependency of rac-spec that is missing here: "
                             "pip install matplotlib)") from None
    for name, value in (("--num-problems", args.num_problems), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    return outputs


def run_command(args) -> int:
    import torch

    from rac import fixtures

    from rac.cli.commands.eval import write_json_atomic
    from rac.cli.data import read_corpus, read_problems
    from rac.cli.diagnose import dense_rollouts, plot_heatmap, reconstruction_errors
    from rac.cli.eval_data import load_problems
    from rac.reference.contract import registry
    from rac.reference.contract.patterns import parse_pattern
    from rac.reference.contract.values import check_choice, check_sparsity
    from rac.cli.experiment import (
        Cell,
        calibration_slice,
        check_budget,
        environment,
        implementation,
        make_calibrations,
        objective_summary,
        prune_copy,
    )
    from rac.cli.export import export_pruned, load_model, load_tokenizer

    _check_outputs(args)
    check_choice(args.method, registry.names(), "--method")
    if parse_pattern(args.pattern, name="--pattern").kind == "unstructured":
        sparsity = check_sparsity(0.6 if args.sparsity is None else args.sparsity, "--sparsity")
    elif args.sparsity is not None:
        raise ValueError(f"--sparsity must not be given with --pattern {args.pattern}: N:M fixes the sparsity")
    else:
        sparsity = None
    modes = ["prompt", "rac"] + (["text"] if args.with_text else [])
    cells = {mode: Cell(mode, args.method, args.pattern, sparsity) for mode in modes}
    corpus = read_corpus(args.corpus or fixtures.CORPUS) if args.with_text else ""
    toy = fixtures.ROOT / "toy-reasoner"
    model_dir = Path(args.model) if args.model else toy
    problems = load_problems(args.eval_problems or toy / "test.jsonl", limit=args.num_problems,
                             problem_field=args.problem_field, answer_field=args.answer_field)
    calib_problems = calibration_slice(
        read_problems(args.calibration_problems or toy / "train.jsonl", problem_field=args.problem_field),
        args.calibration_start,
        args.calibration_count,
        problems,
    )
    dense = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    own_template = apply_template_options(tokenizer, args, model_dir)  # CLI-5
    log = (lambda *a, **k: None) if args.quiet else print
    check_budget(tokenizer, modes, calib_problems, corpus, args.token_budget, args.window)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dense.to(device)
    from rac.reference.compress import check_compress_arguments

    check_compress_arguments(dense, method=args.method, sparsity=cells["rac"].sparsity, pattern=args.pattern)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        collect, compress, collect_extra, compress_extra = implementation(args.impl, device)
        sets = make_calibrations(
            dense,
            tokenizer,
            calib_problems,
            corpus,
            modes,
            collect=collect,
            collect_extra=collect_extra,
            token_budget=args.token_budget,
            trace_max_new_tokens=args.trace_max_new_tokens,
            window=args.window,
            seed=args.seed,
            temperature=args.temperature,
            log=log,
        )
        pruned, reports = {}, {}
        for mode, cell in cells.items():
            pruned[mode], reports[mode], seconds = prune_copy(
                dense, sets[mode][0], cell, compress=compress, compress_extra=compress_extra
            )
            log(f"pruned with {mode} calibration: {cell.method} {cell.setting}, {seconds:.1f} s", flush=True)
        rollouts = dense_rollouts(dense, tokenizer, problems, max_new_tokens=args.max_new_tokens)
        result = reconstruction_errors(dense, pruned, rollouts)
    finally:
        torch.set_num_threads(threads)
    setting = cells["rac"].setting
    result["settings"] = {
        "model": str(model_dir),
        "argv": sys.argv[1:],
        "method": args.method,
        "pattern": args.pattern,
        "sparsity": cells["rac"].sparsity,
        "token_budget": args.token_budget,
        "trace_max_new_tokens": args.trace_max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "impl": args.impl,
        "device": str(device),
        "calibration_problems": str(args.calibration_problems or toy / "train.jsonl"),
        "calibration_start": args.calibration_start,
        "calibration_count": args.calibration_count,
        "eval_problems": str(args.eval_problems or toy / "test.jsonl"),
        "num_problems": len(problems),
        "calibrations": modes,
        "corpus": str(args.corpus or fixtures.CORPUS) if args.with_text else None,
        "tensor": "x_t^(L) = input of the LM head (last block output after the final norm); *_last_block: before it",
        "ratio": "r_t = e_t(prompt) / e_t(rac), e_t = ||x_dense,t - x_pruned,t||_2; boundary = prompt length T_in",
    }
    result["environment"] = {**environment(), "torch_threads": args.threads or threads}  # the count the run used
    result["calibration"] = {mode: {**calib.summary(), "seconds": s} for mode, (calib, s) in sets.items()}
    result["objective"] = {mode: objective_summary(reports[mode]) for mode in reports}
    summary = result["summary"]
    for part in ("prompt_positions", "decode_positions"):
        p = summary[part]
        log(
            f"{part:<17} geomean r {p['geomean_ratio']:.3f}, RAC lower error at {100 * p['fraction_rac_better']:.1f}% "
            f"of {p['positions']} positions; mean e: " + ", ".join(f"{k} {v:.4f}" for k, v in p["mean_e"].items())
        )
    if args.save_models:
        root = Path(args.save_models)
        tokenizer.chat_template = own_template  # the exports keep the tokenizer as it was
        for mode, model in pruned.items():
            export_pruned(model.to("cpu"), tokenizer, root / mode, report=reports[mode], overwrite=args.overwrite)
    if args.json:
        write_json_atomic(Path(args.json), result)
        print(f"wrote {args.json}")
    if args.png:
        title = (
            f"{model_dir.name}, {args.method} {setting}, {args.token_budget} calibration tokens each: "
            "r_t = e_t(prompt-only) / e_t(RAC); blue = RAC closer to the dense model"
        )
        plot_heatmap(result, args.png, title=title)
        print(f"wrote {args.png}")
    return 0
