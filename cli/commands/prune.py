"""``rac prune``: Algorithm 1 end to end on a Hugging Face model directory (spec CLI-*).

    rac prune --model DIR --prompts FILE --calibration rac --method sparsegpt --sparsity 0.5 --out DIR

Phase I (calibration) and Phase II (compression) each show a progress bar on stderr;
a summary table ends the run; ``--out`` gets the pruned model (safetensors), its
tokenizer and ``report.json``. With no ``--model`` the bundled toy reasoner is pruned
(calibrated on its training problems, evaluated before and after on held-out ones), so
the command works on a fresh machine with nothing downloaded. ``--eval-problems`` adds
the before/after evaluation (acc@1 with SE, thinking tokens) for any model.

Everything that can be checked before the work starts is checked first (the output
directory, the files, the pattern against every target), so a mistake costs seconds,
not a Phase I.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rac.cli.options import (
    add_answer_option, add_field_options, add_template_options, apply_template_options, check_answer_option,
    torch_threads,
)

#: Defaults with no --model: the bundled toy reasoner, 64 of its training problems for calibration,
#: 100 of its held-out problems for the before/after evaluation.
DEFAULT_CALIBRATION_PROMPTS = 64
DEFAULT_EVAL_PROBLEMS = 100
#: Tokens per corpus window of --calibration text.
DEFAULT_WINDOW = 128


def add_parser(sub) -> None:
    from rac.reference.calibration import MODES
    from rac.reference.contract import registry

    p = sub.add_parser("prune", help="prune a model with RAC (Phase I calibration + Phase II layer-wise pruning)",
                       description=__doc__.split("\n\n")[1])
    src = p.add_argument_group("model and data")
    src.add_argument("--model", help="save_pretrained directory (default: the bundled toy reasoner)")
    src.add_argument("--prompts", help="problems, JSON lines with a 'problem' field (default: the bundled model's "
                                       "training problems, or the fixture problems with --model)")
    src.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help=f"use only the first N problems (default: all; {DEFAULT_CALIBRATION_PROMPTS} with the bundled model)",
    )
    src.add_argument("--traces", help="offpolicy: JSON lines {id, trace} matched to the problems' ids")
    src.add_argument("--trace-ids", default=None,
                     help="rac or offpolicy: traces as token ids from a serving engine (JSON lines with output_ids and "
                          "problem and/or prompt_ids, docs/traces.md); nothing is decoded. With rac the on-policy "
                          "claim is checked")
    src.add_argument("--corpus", help="text: a plain-text corpus (default: the bundled corpus)")
    add_field_options(src)
    src.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    cal = p.add_argument_group("Phase I: calibration")
    cal.add_argument("--calibration", default="rac", choices=MODES)
    cal.add_argument("--max-new-tokens", type=int, default=256, help="T_max: trace length limit (default 256)")
    cal.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    cal.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    cal.add_argument("--top-p", type=float, default=1.0)
    add_template_options(cal)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--token-budget", type=int, default=None, help="total calibration tokens (the paper: 1M)")
    cal.add_argument("--window", type=int, default=None,
                     help=f"text mode: tokens per corpus window (default {DEFAULT_WINDOW})")
    pr = p.add_argument_group("Phase II: pruning")
    pr.add_argument(
        "--method", default="sparsegpt", choices=registry.names(), help="a registered pruner (default: sparsegpt)"
    )
    pr.add_argument(
        "--sparsity", type=float, default=None, help="unstructured sparsity (default 0.5 unless --pattern N:M)"
    )
    pr.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M, N kept of every M, e.g. 2:4")
    pr.add_argument("--propagation", default="sequential", choices=("sequential", "dense"))
    pr.add_argument(
        "--blocks", default=None, help="all | first_third | last_third | first_last_third | comma-separated indices"
    )
    pr.add_argument("--targets", default=None, help="comma-separated module names or kinds, e.g. mlp or q_proj,k_proj")
    pr.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. blocksize=64 or dampening=0.1 (repeatable)",
    )
    pr.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sequences per forward in Phase II (default: the implementation's, reference 1, fast 8)",
    )
    ev = p.add_argument_group("evaluation before and after pruning")
    ev.add_argument(
        "--eval-problems",
        help="held-out problems (JSON lines with problem and answer); default: the "
        "bundled model's test problems, none with --model",
    )
    ev.add_argument(
        "--num-eval",
        type=int,
        default=None,
        help=f"evaluate on the first N (default: all; {DEFAULT_EVAL_PROBLEMS} with the bundled model)",
    )
    ev.add_argument("--eval-max-new-tokens", type=int, default=512, help="reply length limit (default 512)")
    ev.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    add_answer_option(ev)
    impl = p.add_argument_group("implementation")
    impl.add_argument(
        "--impl",
        default="fast",
        choices=("fast", "reference"),
        help="fast: batched decoding, streamed Hessians, one block on the device at a time (default); "
        "reference: float64, one token at a time, everything in memory",
    )
    impl.add_argument("--device", default="auto", help="fast: auto (CUDA if present, else CPU), cuda, cuda:1, cpu")
    impl.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="load the model in this dtype (default: as stored)",
    )
    impl.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    impl.add_argument("--gen-batch-size", default="auto", help="fast Phase I: prompts decoded together (auto or N)")
    impl.add_argument("--checkpoint-dir", default=None, help="fast Phase II: save each block there and resume from it")
    impl.add_argument("--stream-weights", action="store_true",
                      help="fast Phase II for a model larger than host memory: each block is read from the "
                           "safetensors files when it is pruned and written to --out at once (needs --out, a "
                           "calibration that decodes nothing: --trace-ids, prompt, text, offpolicy --traces; "
                           "and --no-eval)")
    impl.add_argument("--cache", default="dynamic", choices=("dynamic", "static"),
                      help="fast Phase I: KV cache of the decoder; static lets transformers compile the decode step "
                           "on CUDA (default dynamic)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="write the pruned model, tokenizer and report.json here")
    out.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--config", default=None, metavar="FILE",
                     help="options from a TOML, YAML or JSON file (a report.json re-runs its job); the command "
                          "line overrides them")
    p.set_defaults(func=run)


def run(args) -> int:
    with torch_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    import torch

    from rac.cli import faults
    from rac.cli.commands.calibrate import calibration_inputs
    from rac.cli.data import record_unknown_tokens
    from rac.cli.export import export_pruned, load_model, load_tokenizer
    from rac.reference.compress import check_compress_arguments

    sparsity, blocks, targets, options = _prune_arguments(args)
    bundled = args.model is None
    model_dir, out, checkpoint_dir = _preflight(args, bundled)
    world = _init_distributed(args)  # torchrun with several processes (DIST-*): rank 0 alone prints and writes
    # the problems (or the trace-ids file's), --num-prompts, --traces / --trace-ids, --corpus: as rac calibrate
    problems, extra, temperature = calibration_inputs(args, bundled)
    given = extra.pop("_given", None)
    held_out = _eval_problems(args, bundled)
    if world is not None and not world.leader:
        held_out = []  # the pruned model is the same on every rank: rank 0 evaluates it

    bars = not args.quiet
    if not bars:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    collect_calibration, compress, phase1_extra, phase2_extra = _implementation(args, checkpoint_dir, model_dir)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.stream_weights:  # the front in memory, every block read from the files when Phase II reaches it
        from rac.fast.streamed import StreamedWeights, return_freed_memory

        return_freed_memory()  # a process that streams weights is one that is short of memory
        weights = StreamedWeights(model_dir, dtype=dtype)
        model = weights.skeleton(trust_remote_code=args.trust_remote_code)
        phase1_extra["check_policy"] = False
    else:
        weights = None
        device = compute_device(args, model_dir)
        # Phase I decodes and the evaluation generates on the chosen device: the whole model goes there
        model = load_model(model_dir, dtype=dtype, trust_remote_code=args.trust_remote_code, device=device)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=args.trust_remote_code)
    own_template = apply_template_options(tokenizer, args, model_dir,  # CLI-5
                                          needed=args.calibration != "text" or bool(held_out))
    prune_args = dict(
        method=args.method,
        sparsity=sparsity,
        pattern=args.pattern,
        propagation=args.propagation,
        targets=targets,
        blocks=blocks,
        **options,
    )
    if args.batch_size is not None:
        prune_args["batch_size"] = args.batch_size
    check_compress_arguments(model, **prune_args)  # before Phase I: a typo costs seconds, not a calibration
    extra.update(phase1_extra)
    before = _evaluate(model, tokenizer, held_out, args, "dense") if held_out else None
    started = time.perf_counter()
    phase1_bar = _bar("Phase I ", "prompts") if bars else None

    def phase1_progress(done, total, detail=""):
        if phase1_bar is not None:
            phase1_bar(done, total, detail)
        faults.reached("phase1")

    calib = collect_calibration(
        model,
        tokenizer,
        [p["problem"] for p in problems],
        mode=args.calibration,
        max_new_tokens=args.max_new_tokens,
        temperature=temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        token_budget=args.token_budget,
        progress=phase1_progress,
        **extra,
    )
    phase1 = time.perf_counter() - started
    record_unknown_tokens(calib, tokenizer)  # CAL-15: warns when the tokenizer cannot write the text
    if given is not None:
        calib.meta["trace_file"] = str(args.trace_ids)
        calib.meta["trace_sampling"] = given[0]["sampling"]
    started = time.perf_counter()
    phase2_bar = _bar("Phase II", "blocks") if bars else None

    def phase2_progress(done, total, detail=""):
        if phase2_bar is not None:
            phase2_bar(done, total, detail)
        faults.reached(f"block:{done - 1}")

    from rac.cli.config import rerunnable
    from rac.cli.main import command_parser

    command = {
        "argv": sys.argv[1:],
        **{k: v for k, v in vars(args).items() if k != "func"},
        "model_dir": str(model_dir),  # where --model resolved (a Hugging Face id: its cached snapshot)
        # CLI-7: every option, the model as resolved: `rac prune --config report.json --out DIR` re-runs the job
        "config": rerunnable(args, command_parser("prune"), **_resolved_defaults(args, bundled, model_dir)),
    }
    if weights is not None:  # blocks are written as Phase II goes, into the export's temporary directory
        from rac.reference.contract.atomic import atomic_directory
        from rac.cli.export import REPORT_NAME, jsonable

        with atomic_directory(out, overwrite=args.overwrite) as tmp:
            faults.reached("phase2")
            model, report = compress(model, calib, progress=phase2_progress, stream=weights.into(tmp), **prune_args,
                                     **phase2_extra)
            faults.reached("phase2-done")
            report["phase_seconds"] = {"calibration": phase1, "compression": time.perf_counter() - started}
            report["command"] = command
            tokenizer.chat_template = own_template  # the export keeps the tokenizer as it was
            weights.finish(model, tokenizer)
            (tmp / REPORT_NAME).write_text(json.dumps(jsonable(report), indent=2) + "\n")
            print(summary_table(report))
            faults.reached("export")
        print(f"wrote {out} (safetensors shards, tokenizer, {out / REPORT_NAME})")
        return 0
    faults.reached("phase2")
    model, report = compress(model, calib, progress=phase2_progress, **prune_args, **phase2_extra)
    faults.reached("phase2-done")
    phase2 = time.perf_counter() - started
    if world is not None:  # the last collective is behind every rank: leave the group before rank 0 evaluates
        from rac.fast import distributed

        distributed.finish()
    report["phase_seconds"] = {"calibration": phase1, "compression": phase2}
    report["command"] = command
    print(summary_table(report))
    if held_out:
        after = _evaluate(model, tokenizer, held_out, args, "pruned")
        report["evaluation"] = {"dense": before, "pruned": after}
        print(evaluation_table(before, after))
    if out is not None and (world is None or world.leader):
        tokenizer.chat_template = own_template  # the export keeps the tokenizer as it was
        export_pruned(model, tokenizer, out, report=report, overwrite=args.overwrite,
                      before_rename=lambda: faults.reached("export"))
        print(f"wrote {out} (safetensors, tokenizer, {out / 'report.json'})")
    return 0


def _init_distributed(args):
    """Under torchrun with WORLD_SIZE > 1: the process group (gloo on the CPU, NCCL on CUDA), stdout and the
    progress bars of ranks other than 0 silenced, RAC_FAULT applied only on rank RAC_FAULT_RANK when that is
    set (the DIST tests kill one rank). None in one process: nothing changes."""
    import os

    import torch

    from rac.fast import distributed

    if not distributed.launched():
        return None
    if args.impl == "reference":
        raise ValueError("--impl reference runs in one process; launch it without torchrun (WORLD_SIZE="
                         f"{os.environ.get('WORLD_SIZE')}) or use --impl fast")
    if args.stream_weights:
        raise ValueError("--stream-weights runs in one process; launch it without torchrun (WORLD_SIZE="
                         f"{os.environ.get('WORLD_SIZE')})")
    device = args.device or "auto"
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    world = distributed.init_from_env("cuda" if cuda else "cpu")
    chosen = os.environ.get("RAC_FAULT_RANK")
    if chosen is not None and chosen != str(world.rank):
        os.environ.pop("RAC_FAULT", None)
    if not world.leader:
        args.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the rest of this process)
    return world


def compute_device(args, model_dir) -> str:
    """Where Phase I, the evaluation and Phase II run: --device, "auto" being CUDA when present (the reference:
    the CPU). A model that cannot fit in the device's free memory is refused before it is loaded."""
    import torch

    from rac.cli import preflight

    if args.impl == "reference":
        return "cpu"
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda":
        need = preflight.model_bytes(model_dir) * (2 if args.dtype == "float32" else 1)
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if need > 0.9 * free:
            raise ValueError(f"--device {device}: the model needs about {need / 2**30:.1f} GiB there for Phase I "
                             f"and the evaluation, {free / 2**30:.1f} GiB are free; use a larger device (Phase II "
                             "alone streams one block at a time: give Phase I's traces from an engine, --trace-ids)")
    return device


def _preflight(args, bundled: bool):
    """Everything that can be checked before the work starts (REL-*): (model dir, --out, --checkpoint-dir)."""
    from rac import fixtures
    from rac.cli import preflight
    from rac.cli.export import check_model_dir, check_tokenizer_files

    preflight.seed(args.seed)
    check_answer_option(args)
    reference = args.impl == "reference"
    preflight.conflict(args.traces is not None and args.calibration != "offpolicy", "--traces",
                       f"--calibration {args.calibration}", "traces are read only by --calibration offpolicy")
    preflight.conflict(args.trace_ids is not None and args.calibration not in ("rac", "offpolicy"), "--trace-ids",
                       f"--calibration {args.calibration}", "traces go with --calibration rac or offpolicy")
    for option, value in (("--traces", args.traces), ("--prompts", args.prompts)):
        preflight.conflict(args.trace_ids is not None and value is not None, option, "--trace-ids",
                           "the traces file holds the problems and their traces")
    preflight.conflict(args.corpus is not None and args.calibration != "text", "--corpus",
                       f"--calibration {args.calibration}", "the corpus is read only by --calibration text")
    preflight.conflict(args.window is not None and args.calibration != "text", "--window",
                       f"--calibration {args.calibration}", "corpus windows exist only in --calibration text")
    for option, given in (("--checkpoint-dir", args.checkpoint_dir is not None),
                          ("--gen-batch-size", args.gen_batch_size != "auto"), ("--device", args.device != "auto"),
                          ("--cache", args.cache != "dynamic")):
        preflight.conflict(reference and given, option, "--impl reference",
                           "the reference holds everything in memory on the CPU and decodes one token at a time")
    for option, given in (("--eval-problems", args.eval_problems is not None),
                          ("--num-eval", args.num_eval is not None)):
        preflight.conflict(args.no_eval and given, option, "--no-eval", "nothing is evaluated")
    if args.stream_weights:
        preflight.conflict(reference, "--stream-weights", "--impl reference", "the reference holds the whole model")
        decodes = args.calibration == "rac" and args.trace_ids is None
        preflight.conflict(decodes, "--stream-weights", "--calibration rac without --trace-ids",
                           "decoding traces needs the whole model: give an engine's traces (--trace-ids)")
        preflight.conflict(not args.no_eval, "--stream-weights", "the evaluation (add --no-eval)",
                           "generating replies needs the whole model; evaluate the export with rac eval")
        if args.out is None:
            raise ValueError("--stream-weights needs --out: the pruned blocks are written there as they are done")
    if not reference:
        preflight.device(args.device)
    model_dir = check_model_dir(Path(args.model) if args.model else fixtures.TOY_REASONER,
                                trust_remote_code=args.trust_remote_code)
    check_tokenizer_files(model_dir)
    for option, value in (("--prompts", args.prompts), ("--traces", args.traces), ("--corpus", args.corpus),
                          ("--trace-ids", args.trace_ids)):
        if value is not None:
            preflight.input_file(value, option)
    if args.eval_problems is not None and Path(args.eval_problems).suffix in (".jsonl", ".json"):
        preflight.input_file(args.eval_problems, "--eval-problems")
    size = preflight.model_bytes(model_dir) * (2 if args.dtype == "float32" else 1)
    out = None
    if args.out is not None:
        out = preflight.writable_directory_target(args.out, "--out", overwrite=args.overwrite)
        preflight.disk_space(out, size, "--out", "the pruned model")
    checkpoint_dir = None
    if args.checkpoint_dir is not None:
        checkpoint_dir = preflight.checkpoint_directory(args.checkpoint_dir)
        preflight.disk_space(checkpoint_dir, size, "--checkpoint-dir", "the pruned blocks")
    return model_dir, out, checkpoint_dir


def _resolved_defaults(args, bundled: bool, model_dir) -> dict:
    """The values the run used where an option was left to a default that depends on the model being the
    bundled one (its problems, their counts): a re-run from the config names the model, so it must name
    these too (CLI-7)."""
    from rac import fixtures

    out = {"model": str(model_dir)}
    if args.trace_ids is None:
        out["prompts"] = str(args.prompts or (fixtures.TOY_TRAIN if bundled else fixtures.PROBLEMS))
        if args.num_prompts is None and bundled:
            out["num_prompts"] = DEFAULT_CALIBRATION_PROMPTS
    if not args.no_eval and bundled:
        if args.eval_problems is None:
            out["eval_problems"] = str(fixtures.TOY_TEST)
        if args.num_eval is None:
            out["num_eval"] = DEFAULT_EVAL_PROBLEMS
    return out


def _eval_problems(args, bundled: bool):
    """The held-out problems of the before/after evaluation, or None."""
    from rac import fixtures
    from rac.cli.eval_data import load_problems

    if args.no_eval or (args.eval_problems is None and not bundled):
        return None
    problems = load_problems(args.eval_problems or fixtures.TOY_TEST, problem_field=args.problem_field,
                             answer_field=args.answer_field)
    n = args.num_eval if args.num_eval is not None else (DEFAULT_EVAL_PROBLEMS if bundled else None)
    if n is not None:
        if n < 1:
            raise ValueError(f"--num-eval must be a positive integer, got {n}")
        problems = problems[:n]
    if args.eval_max_new_tokens < 1:
        raise ValueError(f"--eval-max-new-tokens must be a positive integer, got {args.eval_max_new_tokens}")
    return problems


def _evaluate(model, tokenizer, problems, args, what: str) -> dict:
    """acc@1 (SE), thinking tokens and the rest of ``rac eval``'s summary, greedy."""
    from rac.cli.evaluate import evaluate

    result = evaluate(
        model,
        tokenizer,
        problems,
        max_new_tokens=args.eval_max_new_tokens,
        answer_regex=args.answer_regex,
        progress=_bar(f"eval {what:<6}", "problems") if not args.quiet else None,
    )
    summary = result.summary()
    summary.pop("settings", None)
    return summary


def evaluation_table(before: dict, after: dict) -> str:
    """Accuracy and thinking length of the dense and the pruned model on the same held-out problems."""
    rows = [f"{'held-out problems':<18} {'acc@1 (SE)':>15} {'answered':>9} {'thinking tokens':>16} {'hit limit':>10}"]
    for name, s in (("dense", before), ("pruned", after)):
        rows.append(
            f"{name:<18} {s['acc@1']:>8.3f} ({s['se']:.3f}) {s['answered']:>9.3f} "
            f"{s['thinking_tokens_mean']:>16.1f} {s['stopped_at_limit']:>10}"
        )
    return "\n".join([f"evaluation on {before['problems']} held-out problems (greedy):", *rows])


def _implementation(args, checkpoint_dir, model_dir):
    """(collect_calibration, compress, extra Phase I arguments, extra Phase II arguments) of --impl."""
    if args.impl == "reference":
        from rac.reference import collect_calibration, compress

        return collect_calibration, compress, {}, {}
    from rac.fast import collect_calibration, compress

    gen = args.gen_batch_size
    if gen != "auto":
        try:
            gen = int(gen)
        except ValueError:
            raise ValueError(f"--gen-batch-size must be 'auto' or a positive integer, got {gen!r}") from None
    phase2 = {"device": args.device, "checkpoint_dir": checkpoint_dir}
    if checkpoint_dir is not None:
        phase2["fingerprint_extra"] = {"tokenizer": _tokenizer_digest(model_dir)}
    return collect_calibration, compress, {"batch_size": gen, "cache": args.cache}, phase2


def _tokenizer_digest(model_dir) -> str:
    """SHA-256 of the tokenizer files next to the model: a resume must see the same tokenizer."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*token*")) + sorted(Path(model_dir).glob("*.model")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _prune_arguments(args):
    """sparsity, blocks, targets and method options from the command line (checked by compress)."""
    sparsity = args.sparsity
    if sparsity is None and args.pattern == "unstructured":
        sparsity = 0.5
    blocks = args.blocks
    if blocks is not None and blocks not in ("all", "first_third", "last_third", "first_last_third"):
        try:
            blocks = [int(b) for b in blocks.split(",")]
        except ValueError:
            raise ValueError(
                f"--blocks must be a scope name or comma-separated integers, got {args.blocks!r}"
            ) from None
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option must look like KEY=VALUE, got {item!r}")
        options[key.strip()] = _number(value.strip())
    return sparsity, blocks, targets, options


def _number(text: str):
    """'64' -> 64, '0.1' -> 0.1, anything else stays a string (e.g. on_cholesky_failure=raise)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _bar(title: str, unit: str):
    """The commands' progress bar (``rac.cli.progress.bar``: tqdm, with the rate and the time left)."""
    from rac.cli.progress import bar

    return bar(title, unit)


def summary_table(report: dict) -> str:
    """The end-of-run table: one row per pruned linear, then totals (objectives relative to ||WX||^2)."""
    cal = report["calibration"]
    lines = [
        f"RAC {report['method']} {report['pattern']}"
        + (f" sparsity {report['sparsity']}" if report["sparsity"] is not None else "")
        + f", {report['propagation']} propagation, calibration {cal.get('meta', {}).get('mode', '?')}: "
        + f"{cal['sequences']} sequences, {cal['tokens']} tokens "
        + _trace_source(cal.get("meta", {}))
        + "("
        + ", ".join(f"{k} {cal[k]}" for k in ("text", "prompt", "decode", "offpolicy") if cal.get(k))
        + ")",
        f"{'block':>5} {'module':<18} {'shape':>11} {'sparsity':>8} {'rel. obj.':>10} {'prompt':>10} "
        f"{'decode':>10} {'time s':>7}",
    ]
    for row in report["layers"]:
        rel = row["relative_objective_by_source"]
        lines.append(
            f"{row['block']:>5} {row['name'][-18:]:<18} {'x'.join(map(str, row['shape'])):>11} {row['sparsity']:>8.3f} "
            f"{row['relative_objective']:>10.3e} {_fmt(rel.get('prompt')):>10} {_fmt(rel.get('decode')):>10} "
            f"{row['time_s']:>7.2f}"
        )
    total_zero = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in report["layers"])
    total = sum(r["shape"][0] * r["shape"][1] for r in report["layers"])
    seconds = report.get("phase_seconds", {})
    lines.append(
        f"{len(report['layers'])} linears, {total_zero / max(total, 1):.3f} of their weights zero; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    )
    return "\n".join(lines)


def _trace_source(meta: dict) -> str:
    """Where the traces of the calibration came from, for the summary's header."""
    source = meta.get("trace_source")
    mode = meta.get("mode")
    if mode not in ("rac", "offpolicy"):
        return ""
    if source == "token ids":
        text = f"[traces: token ids from {meta.get('trace_file', 'the caller')}"
        check = meta.get("policy_check") or {}
        if "greedy_agreement" in check:
            text += f", greedy agreement with the model {check['greedy_agreement']:.3f}"
        elif check:
            text += f", mean log-prob per token under the model {check['mean_logprob']:.3f}"
        return text + "] "
    if source == "traces":
        return "[traces: text from a file] "
    if source == "trace_model":
        return "[traces: decoded by another model] "
    return "[traces: decoded by the model itself] "


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3e}"
