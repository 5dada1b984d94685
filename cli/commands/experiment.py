"""``rac experiment``: the paper's Table 1 / Table 9 grid on one model (spec XP-*).

    rac experiment --out DIR [--calibrations text,prompt,rac] [--methods sparsegpt,wanda,alps]
                   [--sparsities 0.3,0.4,0.5,0.6,0.7] [--patterns 2:4] [--token-budget 16384] ...

With no --model it runs on the bundled toy reasoner: calibration problems from its training
file (a fixed slice, disjoint from the evaluation set), evaluation on its held-out test file,
the ``text`` mode on the fixtures corpus (generic English, the paper's "C4" stand-in).
``--out`` gets results.json (every cell, every graded reply, settings, machine, commit),
results.md (the tables) and results.png (accuracy and thinking tokens against sparsity),
written all at once (temporary directory, then rename).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rac.reference.calibration_set import LABELS
from rac.cli.options import (
    add_answer_option, add_field_options, add_template_options, apply_template_options, check_answer_option,
)

DEFAULT_SPARSITIES = "0.3,0.4,0.5,0.6,0.7"


def source_weights_arg(text):
    """--source-weights prompt=1,decode=2 -> {"prompt": 1.0, "decode": 2.0}; None stays None."""
    if text is None:
        return None
    out = {}
    for item in _items(text, "--source-weights"):
        label, sep, value = item.partition("=")
        try:
            out[label.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--source-weights takes SOURCE=WEIGHT items such as prompt=1,decode=2, got {item!r}")
        if label.strip() not in LABELS:
            raise ValueError(f"--source-weights: unknown source {label.strip()!r}; the sources are {list(LABELS)}")
    return out


def _items(text: str, name: str) -> list:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if text and text.strip().lower() == "none":
        return []
    if text and not items:
        raise ValueError(f"{name} must be a comma-separated list, got {text!r}")
    return items


def _floats(text: str, name: str) -> list:
    out = []
    for item in _items(text, name):
        try:
            out.append(float(item))
        except ValueError:
            raise ValueError(f"{name}: {item!r} is not a number (expected e.g. 0.3,0.5)") from None
    return out


def add_model_and_data_arguments(parser):
    """The model, calibration-problem and held-out-problem options ``rac experiment`` and
    ``rac diagnose`` share (defaults: the bundled toy reasoner and its files); returns the group."""
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", default=None, help="save_pretrained directory (default: the bundled toy reasoner)")
    data.add_argument("--calibration-problems", default=None,
                      help="JSON lines with 'problem' (default: the toy reasoner's train.jsonl)")
    data.add_argument("--calibration-start", type=int, default=0, help="first calibration problem used (default 0)")
    data.add_argument("--calibration-count", type=int, default=4000,
                      help="calibration problems available to Phase I, in file order (default 4000)")
    data.add_argument("--eval-problems", default=None,
                      help="held-out problems with answers (default: the toy reasoner's test.jsonl)")
    add_template_options(data)
    add_field_options(data)
    return data


def add_parser(sub) -> None:
    p = sub.add_parser("experiment", help="the paper's grid: calibration text/prompt/rac x method x sparsity, "
                                          "acc@1 (SE) and thinking tokens per cell, table and plot",
                       description=__doc__.split("\n\n")[1])
    data = add_model_and_data_arguments(p)
    data.add_argument("--num-eval", type=int, default=None, help="evaluate on the first N (default: all)")
    data.add_argument("--corpus", default=None, help="text mode corpus (default: the fixtures corpus)")
    grid = p.add_argument_group("the grid")
    grid.add_argument("--calibrations", default="text,prompt,rac",
                      help="comma-separated: text, prompt, rac, and the variants after RAC (spec VAR-6): "
                           "decode_only, stream_norm, select_short, select_long, regen")
    grid.add_argument("--source-weights", default=None, metavar="SOURCE=W,...",
                      help="stream_norm's weight per token source, e.g. prompt=1,decode=2 (default: 1 each, VAR-3)")
    grid.add_argument(
        "--methods", default="sparsegpt,wanda,alps", help="comma-separated: magnitude, wanda, sparsegpt, alps"
    )
    grid.add_argument("--sparsities", default=DEFAULT_SPARSITIES, help="unstructured sparsities in [0, 1), or none")
    grid.add_argument("--patterns", default="2:4", help="N:M patterns, comma-separated, or none (default 2:4)")
    cal = p.add_argument_group("calibration (Phase I)")
    cal.add_argument("--token-budget", type=int, default=16384, help="tokens per calibration mode, the same for all")
    cal.add_argument("--trace-max-new-tokens", type=int, default=256, help="rac: T_max of a trace (default 256)")
    cal.add_argument("--window", type=int, default=128, help="text: tokens per corpus window (default 128)")
    cal.add_argument("--temperature", type=float, default=0.0, help="rac traces: 0 = greedy (default)")
    cal.add_argument("--top-k", type=int, default=0, help="rac traces: 0 = off (default)")
    cal.add_argument("--top-p", type=float, default=1.0, help="rac traces: nucleus sampling (default 1.0, off)")
    cal.add_argument("--seed", type=int, default=0, help="rac traces' sampling seed (matters with --temperature > 0)")
    ev = p.add_argument_group("evaluation")
    add_answer_option(ev)
    ev.add_argument("--max-new-tokens", type=int, default=320, help="reply length limit (default 320)")
    ev.add_argument("--eval-batch-size", type=int, default=32)
    run = p.add_argument_group("implementation and output")
    run.add_argument("--impl", default="fast", choices=("fast", "reference"))
    run.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--out", required=True, help="directory for results.json, results.md, results.png")
    run.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    run.add_argument("--resume", action="store_true",
                     help="continue the run that OUT.partial.json records (written after the dense row and each "
                          "cell): its finished cells are kept")
    run.add_argument("--no-plot", action="store_true", help="skip results.png (no matplotlib needed)")
    run.add_argument("--quiet", action="store_true", help="no per-cell log lines")
    p.set_defaults(func=run_command)


def partial_path(out: Path) -> Path:
    """Where a run writes its results as they finish (XP-7): next to --out, removed when the run completes."""
    return out.with_name(out.name + ".partial.json")


def write_json_atomically(path: Path, obj) -> None:
    from rac.reference.contract.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def run_command(args) -> int:
    import torch

    from rac import fixtures

    from rac.cli.data import read_corpus, read_problems
    from rac.cli.eval_data import load_problems
    from rac.cli.experiment import calibration_slice, check_grid, run_experiment
    from rac.cli.experiment_report import markdown_tables, write_outputs
    from rac.cli.export import load_model, load_tokenizer

    # everything that can be wrong is checked before the first forward pass
    cells = check_grid(
        _items(args.calibrations, "--calibrations"),
        _items(args.methods, "--methods"),
        _floats(args.sparsities, "--sparsities"),
        _items(args.patterns, "--patterns"),
    )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} already exists; choose another path or add --overwrite")
    check_answer_option(args)
    partial = partial_path(out)
    done = None
    if args.resume:
        if not partial.is_file():
            raise ValueError(f"--resume: {partial} does not exist; there is no interrupted run of --out {out}")
        try:
            done = json.loads(partial.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--resume: {partial} is not the JSON an interrupted run writes ({e})") from None
    elif partial.exists():
        raise FileExistsError(f"{partial} records an interrupted run of --out {out}: pass --resume to continue it, "
                              "or delete it to start again")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    if args.num_eval is not None and args.num_eval < 1:
        raise ValueError(f"--num-eval must be a positive integer, got {args.num_eval}")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError(
                "results.png needs matplotlib (a dependency of rac-spec that is missing here: "
                "pip install matplotlib); or pass --no-plot"
            ) from None
    toy = fixtures.ROOT / "toy-reasoner"
    model_dir = Path(args.model) if args.model else toy
    eval_problems = load_problems(args.eval_problems or toy / "test.jsonl", limit=args.num_eval,
                                  problem_field=args.problem_field, answer_field=args.answer_field)
    calib_problems = calibration_slice(
        read_problems(args.calibration_problems or toy / "train.jsonl", problem_field=args.problem_field),
        args.calibration_start,
        args.calibration_count,
        eval_problems,
    )
    corpus = read_corpus(args.corpus or fixtures.CORPUS)
    model = load_model(model_dir)  # ValueError naming the directory if it is not a loadable model
    tokenizer = load_tokenizer(model_dir)
    apply_template_options(tokenizer, args, model_dir)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model.to(device)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, flush=True))
    settings = {
        "model": str(model_dir),
        "model_name": model_dir.name,
        "argv": sys.argv[1:],
        "calibration_problems": str(args.calibration_problems or toy / "train.jsonl"),
        "calibration_start": args.calibration_start,
        "calibration_count": args.calibration_count,
        "eval_problems": str(args.eval_problems or toy / "test.jsonl"),
        "num_eval": args.num_eval,
        "corpus": str(args.corpus or fixtures.CORPUS),
        "threads": torch.get_num_threads(),
        "chat_template": ("raw text" if args.no_chat_template else args.chat_template or "the tokenizer's"),
        "problem_field": args.problem_field,
        "answer_field": args.answer_field,
    }
    try:
        results = run_experiment(
            model,
            tokenizer,
            calibration_problems=calib_problems,
            eval_problems=eval_problems,
            corpus=corpus,
            cells=cells,
            token_budget=args.token_budget,
            max_new_tokens=args.max_new_tokens,
            trace_max_new_tokens=args.trace_max_new_tokens,
            stream_weights=source_weights_arg(args.source_weights),
            window=args.window,
            seed=args.seed,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            impl=args.impl,
            device=device,
            eval_batch_size=args.eval_batch_size,
            answer_regex=args.answer_regex,
            settings=settings,
            log=log,
            done=done,
            on_cell=lambda partial_results: write_json_atomically(partial, partial_results),
        )
    finally:
        torch.set_num_threads(threads)  # it may run inside another program (tests)
    write_outputs(results, out, overwrite=args.overwrite, plot=not args.no_plot)
    partial.unlink(missing_ok=True)  # the run is complete: results.json holds everything it held
    if not args.quiet:
        print(markdown_tables(results))
    print(
        f"wrote {out} (results.json, results.md{'' if args.no_plot else ', results.png'}); "
        f"{results['wall_time_s']:.0f} s"
    )
    return 0
