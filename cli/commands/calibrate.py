"""``rac calibrate``: Phase I only, the calibration set written for other tools (spec CAL-13, CAL-14).

    rac calibrate --model DIR --prompts FILE --calibration rac --out DIR

Collects the calibration set exactly as ``rac prune`` does (the same options, model loading,
data, seeds, device and checks: they are ``rac prune``'s own option definitions and preflight),
then writes into ``--out``, all or nothing:

- ``calibration.jsonl``: the set (``CalibrationSet.save``): a header with how it was made, then
  per sequence its token ids, the source label of every token (prompt, decode, ...) and every
  token's weight in H;
- ``dataset/``: the same as a ``datasets`` dataset (``save_to_disk``; columns ``input_ids``,
  ``source``, ``token_weight``);
- ``llmcompressor_recipe.py``: the ``oneshot`` call that calibrates llm-compressor on exactly
  these tokens (every sequence, whole, unshuffled, unpadded); also printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DATASET_DIR = "dataset"
JSONL_NAME = "calibration.jsonl"
RECIPE_NAME = "llmcompressor_recipe.py"

#: ``rac prune``'s options that ``rac calibrate`` shares (Phase I: model and data, calibration, where it runs),
#: taken from ``rac prune``'s parser so both commands define them once.
SHARED_OPTIONS = (
    "model", "prompts", "num_prompts", "traces", "trace_ids", "corpus", "trust_remote_code",
    "calibration", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "token_budget", "window",
    "impl", "device", "dtype", "gen_batch_size", "cache", "no_chat_template", "chat_template", "threads",
    "problem_field",
)
#: ``rac prune``'s Phase II / evaluation options, at the values that mean "none of it" for its preflight.
NOT_HERE = {"checkpoint_dir": None, "eval_problems": None, "num_eval": None, "no_eval": True, "answer_regex": None,
            "answer_field": None,
            "stream_weights": False, "out": None}


def _prune_actions() -> dict:
    """dest -> (argparse action, group title) of ``rac prune``'s parser."""
    from rac.cli.commands import prune

    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    prune.add_parser(scratch)
    parser = scratch.choices["prune"]
    out = {}
    for group in parser._action_groups:
        for action in group._group_actions:
            out[action.dest] = (action, group.title)
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="Phase I only: write the calibration set (JSONL, a datasets dataset) and "
                       "the llm-compressor recipe that uses it faithfully", description=__doc__.split("\n\n")[1])
    actions = _prune_actions()
    groups = {}
    for dest in SHARED_OPTIONS:
        action, title = actions[dest]
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        groups[title]._add_action(action)
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="write calibration.jsonl, dataset/ and llmcompressor_recipe.py here")
    out.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def calibration_inputs(args, bundled: bool) -> tuple:
    """(problems, extra collect_calibration arguments, temperature) from the Phase I options, as ``rac prune``
    reads them: the problems (or the trace-ids file's), --num-prompts, --traces / --trace-ids, --corpus."""
    from rac import fixtures
    from rac.cli.commands.prune import DEFAULT_CALIBRATION_PROMPTS, DEFAULT_WINDOW
    from rac.cli.data import align_traces, read_corpus, read_problems, read_trace_ids

    given = read_trace_ids(args.trace_ids) if args.trace_ids else None
    if given is not None:
        problems = [{"id": r["id"], "problem": r["problem"] or ""} for r in given]
    else:
        problems = read_problems(
            Path(args.prompts) if args.prompts else fixtures.TOY_TRAIN if bundled else fixtures.PROBLEMS,
            problem_field=args.problem_field,
        )
    num_prompts = args.num_prompts if args.num_prompts is not None else (
        DEFAULT_CALIBRATION_PROMPTS if bundled else None)
    if num_prompts is not None:
        if num_prompts < 1:
            raise ValueError(f"--num-prompts must be a positive integer, got {num_prompts}")
        problems = problems[:num_prompts]
    extra, temperature = {}, args.temperature
    if given is not None:
        extra["trace_ids"] = [r["trace"] for r in given[: len(problems)]]
        temperature = float(given[0]["sampling"].get("temperature", 0.0))
        extra["_given"] = given
    elif args.calibration == "offpolicy":
        if not args.traces:
            raise ValueError("--traces FILE (text) or --trace-ids FILE (token ids) is required with "
                             "--calibration offpolicy")
        from rac.cli.data import read_traces

        extra["traces"] = align_traces(problems, read_traces(args.traces))
    if args.calibration == "text":
        extra["corpus"] = read_corpus(Path(args.corpus) if args.corpus else fixtures.CORPUS)
        extra["window"] = args.window if args.window is not None else DEFAULT_WINDOW
    return problems, extra, temperature


def run(args) -> int:
    from rac.cli.options import torch_threads

    with torch_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    import torch

    from rac.cli import faults, preflight
    from rac.cli.data import record_unknown_tokens
    from rac.cli.options import apply_template_options
    from rac.reference.contract.atomic import atomic_directory
    from rac.cli.commands.prune import _bar, _implementation, _preflight, compute_device
    from rac.cli.export import load_model, load_tokenizer

    bundled = args.model is None
    _require_datasets()
    checks = argparse.Namespace(**{**vars(args), **NOT_HERE})
    model_dir, _, _ = _preflight(checks, bundled)  # rac prune's checks of every Phase I option
    out = preflight.writable_directory_target(args.out, "--out", overwrite=args.overwrite)
    problems, extra, temperature = calibration_inputs(args, bundled)
    given = extra.pop("_given", None)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    collect_calibration, _, phase1_extra, _ = _implementation(checks, None, model_dir)
    extra.update(phase1_extra)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load_model(model_dir, dtype=dtype, trust_remote_code=args.trust_remote_code,
                       device=compute_device(checks, model_dir))
    tokenizer = load_tokenizer(model_dir, trust_remote_code=args.trust_remote_code)
    apply_template_options(tokenizer, args, model_dir, needed=args.calibration != "text")  # CLI-5
    bar = None if args.quiet else _bar("Phase I ", "prompts")

    def progress(done, total, detail=""):
        if bar is not None:
            bar(done, total, detail)
        faults.reached("phase1")

    started = time.perf_counter()
    calib = collect_calibration(
        model, tokenizer, [p["problem"] for p in problems], mode=args.calibration,
        max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, token_budget=args.token_budget, progress=progress, **extra,
    )
    calib.activations = None
    record_unknown_tokens(calib, tokenizer)  # CAL-15
    calib.meta["seconds"] = time.perf_counter() - started
    calib.meta["model_dir"] = str(model_dir)
    calib.meta["command"] = sys.argv[1:]
    if given is not None:
        calib.meta["trace_file"] = str(args.trace_ids)
        calib.meta["trace_sampling"] = given[0]["sampling"]
    if args.calibration != "text":  # which problem each sequence is (prompts without a trace are skipped, CAL-8)
        skipped = set(calib.meta.get("skipped") or ())
        ids = [p["id"] for i, p in enumerate(problems) if i not in skipped]
        calib.meta["problem_ids"] = [str(i) for i in ids[: len(calib)]]
    recipe = llmcompressor_recipe(calib)
    preflight.disk_space(out, 4 * (json_size := _estimate_bytes(calib)), "--out", "the calibration set")
    with atomic_directory(out, overwrite=args.overwrite) as tmp:
        write_calibration(calib, tmp)
        (tmp / RECIPE_NAME).write_text(recipe)
        faults.reached("export")
    summary = calib.summary()
    print("calibration set: " + ", ".join(f"{k} {v}" for k, v in summary.items()) +
          f", longest sequence {max((s.numel() for s in calib.sequences), default=0)} tokens")
    print(f"wrote {out} ({JSONL_NAME}, {DATASET_DIR}/, {RECIPE_NAME}; about {json_size / 2**20:.1f} MiB)")
    print(f"\n# {out / RECIPE_NAME}\n{recipe}")
    return 0


def _require_datasets() -> None:
    """ValueError before any work when the ``datasets`` package (for ``--out``'s dataset/) is missing."""
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        raise ValueError("--out: writing the calibration set as a datasets dataset needs the datasets package, "
                         "which is not installed: pip install 'rac-spec[eval]' (or pip install datasets)")


def _estimate_bytes(calib) -> int:
    return 32 * calib.num_tokens + 4096


def write_calibration(calib, directory) -> None:
    """``calibration.jsonl`` and ``dataset/`` of ``calib`` into ``directory`` (the caller makes it atomic)."""
    from datasets import Dataset

    directory = Path(directory)
    calib.save(directory / JSONL_NAME)
    records = calib.records()
    problem_ids = calib.meta.get("problem_ids") or [str(i) for i in range(len(records))]
    Dataset.from_dict({
        "id": problem_ids,
        "input_ids": [r["input_ids"] for r in records],
        "source": [r["labels"] for r in records],
        "token_weight": [r["token_weights"] for r in records],
    }).save_to_disk(str(directory / DATASET_DIR))


def load_dataset_set(directory):
    """The ``CalibrationSet`` held by ``directory/dataset`` (what ``write_calibration`` wrote)."""
    import torch
    from datasets import load_from_disk

    from rac.reference.calibration_set import LABELS, CalibrationSet

    ds = load_from_disk(str(Path(directory) / DATASET_DIR))
    return CalibrationSet([torch.tensor(ids, dtype=torch.long) for ids in ds["input_ids"]],
                          [torch.tensor([LABELS.index(s) for s in src], dtype=torch.long) for src in ds["source"]])


def llmcompressor_recipe(calib) -> str:
    """The python snippet that hands ``calib`` to llm-compressor's ``oneshot`` so that its Hessians are those of
    rac.fast for this set (spec CAL-14): every sequence, whole, in one batch each, never shuffled or padded."""
    longest = max((int(s.numel()) for s in calib.sequences), default=1)
    uniform = all(bool((calib.token_weights(i) == 1).all()) for i in range(len(calib)))
    weights = ("every token has weight 1, as in rac.fast's H: llm-compressor gives each token fed to it weight 1"
               if uniform else "WARNING: the tokens are not uniformly weighted; llm-compressor cannot weight "
               "tokens (LC-7), so this recipe does not reproduce rac's H")
    return f'''"""llm-compressor on RAC's calibration set, faithfully (rac calibrate; docs/ports/llmcompressor.md).

{len(calib)} sequences, {calib.num_tokens} tokens, longest {longest}; {weights}.
H then equals rac.fast's for the same set times 2 / {len(calib)} (their H is a mean over sequences,
SparseGPT's masks do not depend on that scale), within float32 rounding.
"""
from pathlib import Path

from datasets import load_from_disk
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier

HERE = Path(__file__).resolve().parent
dataset = load_from_disk(str(HERE / "{DATASET_DIR}")).select_columns(["input_ids"])  # ids only: nothing to pad

FAITHFUL = dict(
    num_calibration_samples=len(dataset),  # all {len(calib)} sequences (default 512: a random subset of a larger set)
    shuffle_calibration_samples=False,     # (default True) order only changes rounding, but keep it reproducible
    batch_size=1,                          # one sequence per forward: batches are never cut or padded
    data_collator="truncation",            # with batch_size 1 and the limit below, it cuts nothing
    max_seq_length={longest},  # at least the longest sequence: no trace is truncated
    pad_to_max_length=False,               # padding positions would enter H (LC-7)
)


def prune(model, tokenizer, sparsity=0.5, **recipe_options):
    return oneshot(model=model, tokenizer=tokenizer, dataset=dataset,
                   recipe=SparseGPTModifier(sparsity=sparsity, ignore=["re:.*lm_head"], **recipe_options),
                   **FAITHFUL)
'''
