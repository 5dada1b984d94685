"""``rac eval``: acc@1 and thinking length of a causal LM on math problems (spec EVAL-*).

    rac eval --model DIR --problems FILE [--max-new-tokens N] [--samples K] [--out FILE]

Prints acc@1 with its standard error, the answered fraction (and how many replies never
closed ``</think>`` or never boxed an answer), mean and median thinking tokens, tokens/s
and wall time; ``--out`` also writes them, the settings and every generation as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from rac.cli.options import (
    add_answer_option, add_field_options, add_template_options, apply_template_options, check_answer_option,
    torch_threads,
)
from rac.reference.contract.atomic import atomic_file

DTYPES = ("float32", "bfloat16", "float16")


def format_summary(s: dict) -> str:
    c = s["counts"]
    lines = [
        f"problems {s['problems']} x samples {s['samples']}",
        f"acc@1          {s['acc@1']:.3f} (SE {s['se']:.3f})",
        f"answered       {s['answered']:.3f}  (correct {c['correct']}, wrong {c['wrong']}, "
        f"never closed </think> {c['no_think_close']}, no \\boxed{{}} {c['no_boxed']}; "
        f"{s['stopped_at_limit']} hit max-new-tokens)",
        f"thinking tok   mean {s['thinking_tokens_mean']:.1f}, median {s['thinking_tokens_median']:g}",
        f"throughput     {s['tokens_per_s']:,.1f} generated tokens/s ({s['generated_tokens']:,} tokens)",
        f"wall time      {s['wall_time_s']:.1f} s (generation {s['generation_time_s']:.1f} s)",
    ]
    if "acc@1_by_kind" in s:
        lines.append("by kind        " + ", ".join(f"{k} {v:.3f}" for k, v in s["acc@1_by_kind"].items()))
    return "\n".join(lines)


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file in the same folder, so an
    interrupted run never leaves a half-written file."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def run(args) -> int:
    import torch

    from rac.cli import preflight
    from rac.cli.eval_data import load_problems
    from rac.cli.export import check_model_dir, load_model, load_tokenizer

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    if args.out is not None:
        if not str(args.out).strip():
            raise ValueError("--out must be a file path, got an empty string")
        if args.out.is_dir():
            raise ValueError(f"--out {args.out} is a directory; give a file path for the JSON")
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it")
        preflight.writable_directory_target(args.out.parent / ".rac-probe", "--out", must_be_new=False)
    preflight.seed(args.seed)
    check_answer_option(args)
    device = preflight.device(args.device)
    model_dir = check_model_dir(args.model, trust_remote_code=args.trust_remote_code)  # before reading problems
    problems = load_problems(args.problems, split=args.split, limit=args.limit, problem_field=args.problem_field,
                             answer_field=args.answer_field)
    tokenizer = load_tokenizer(args.tokenizer or model_dir, trust_remote_code=args.trust_remote_code,
                               option="--tokenizer" if args.tokenizer else "--model")
    apply_template_options(tokenizer, args, args.tokenizer or model_dir)
    if device == "auto":  # as rac prune: CUDA when present
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # EVAL-10: the stored dtype unless --dtype says otherwise (a bfloat16 7B is not doubled to float32)
    model = load_model(model_dir, dtype=getattr(torch, args.dtype) if args.dtype else None,
                       trust_remote_code=args.trust_remote_code,
                       device=device)
    with torch_threads(args.threads):
        return _evaluate_and_report(args, model, tokenizer, problems, model_dir)


def _evaluate_and_report(args, model, tokenizer, problems, model_dir) -> int:
    from rac.cli.evaluate import evaluate

    from rac.cli.progress import bar

    progress = None if args.quiet else bar("rac eval", "replies")

    result = evaluate(model, tokenizer, problems, max_new_tokens=args.max_new_tokens, samples=args.samples,
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                      chat_template=not args.no_chat_template, instruction=args.instruction,
                      use_math_verify=False if args.no_math_verify else None, answer_regex=args.answer_regex,
                      progress=progress)
    summary = result.summary()
    summary["settings"].update({"model": str(model_dir), "problems": str(args.problems), "split": args.split,
                                "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device)})
    print(format_summary(summary))
    if args.out is not None:
        write_json_atomic(args.out, {"summary": summary, "generations": result.records()})
        print(f"wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="acc@1 (SE), thinking tokens and throughput of a model on math problems")
    p.add_argument("--model", required=True, help="Hugging Face model directory (config, weights, tokenizer)")
    p.add_argument("--problems", required=True,
                   help="problems: a .jsonl/.json file, or (with the datasets package) a parquet/csv file, a "
                        "save_to_disk directory, or hf:NAME for a Hugging Face dataset")
    p.add_argument("--split", default="test", help="dataset split for dataset sources (default: test)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="generation limit per reply (default 2048)")
    p.add_argument("--samples", type=int, default=1, help="replies per problem; acc@1 is their mean (default 1)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); R1 distills are evaluated at 0.6 with --top-p 0.95")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed; batch b uses seed + b")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--instruction", default=None,
                   help="text appended to every problem after a blank line, e.g. 'Please reason step by step, "
                        "and put your final answer within \\boxed{}.'")
    add_template_options(p)
    add_answer_option(p)
    add_field_options(p)
    p.add_argument("--no-math-verify", action="store_true",
                   help="grade by exact match after normalisation even if math-verify is installed")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU; default), cpu, cuda, cuda:N")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model that needs its own code (off by default: it is refused, never prompted for)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="load the weights in this dtype (default: as stored in the checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write the summary and every generation as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)
