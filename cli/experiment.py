"""The paper's experiment (section 5.1, Tables 1, 2 and 9) on one model: calibration data against sparsity.

    run_experiment(model_dir, calibration_problems, eval_problems, ...) -> results (a JSON-able dict)

For every calibration mode (the tables' columns: ``text`` = a generic corpus, the paper's "C4";
``prompt`` = the problem statements only; ``rac`` = prompt + the dense model's own chain of
thought, Algorithm 1) one calibration set is made, with the **same number of tokens** for every
mode (the paper compares modes at an equal budget, 1M tokens there), and shared by every
method and sparsity. Then every cell (calibration, method, sparsity or N:M pattern) prunes a
fresh copy of the dense model with ``compress`` and evaluates it with the harness of ``rac eval``
(``evaluate``: acc@1 with SE sqrt(p(1-p)/n), greedy; thinking tokens, which stand in for the
tables' runtime columns). The dense model is evaluated once, on the same problems.

Nothing here re-implements Phase I, Phase II or the evaluation: they are
``collect_calibration`` / ``compress`` of ``rac.fast`` (default) or ``rac.reference``, and
``rac.cli.evaluate.evaluate``. This module chooses the data, runs the grid, times it
and keeps, per cell, the numbers of the tables plus every graded reply (so the SE can be
re-derived) and the per-source objectives of the compression report.

The ``text`` corpus is the project's fixtures corpus (``rac.fixtures.CORPUS``): generic
English prose, the stand-in for C4 (it holds about 18.6k tokens of the toy tokenizer, so
budgets above that are refused for ``text``).
"""

from __future__ import annotations

import copy
import datetime
import math
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rac.reference.calibration import check_calibration_options, corpus_windows, template_prompt
from rac.reference.calibration_set import LABELS
from rac.reference.variants import VARIANTS, decode_only, regenerate, select_traces, stream_normalised
from rac.reference.contract import registry
from rac.reference.contract.patterns import parse_pattern
from rac.reference.contract.values import check_sparsity
from rac.cli.data import record_unknown_tokens
from rac.cli.evaluate import evaluate
from rac.cli.export import jsonable

#: The calibration columns of Tables 1-3 and 9 (``offpolicy`` is Table 7's, not part of this grid), then the
#: variants that followed RAC (VAR-6, ``rac.reference.variants``).
CALIBRATIONS = ("text", "prompt", "rac") + VARIANTS

#: select_* choose from the rac traces of the first prompts, decoded up to this many times the budget (VAR-4).
SELECT_POOL = 4
IMPLEMENTATIONS = ("fast", "reference")


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a calibration mode, a method and either an unstructured sparsity or an N:M pattern."""

    calibration: str
    method: str
    pattern: str  # "unstructured" or "N:M"
    sparsity: float | None  # None for N:M (fixed by the pattern)

    @property
    def nominal_sparsity(self) -> float:
        if self.sparsity is not None:
            return self.sparsity
        p = parse_pattern(self.pattern)
        return 1 - p.n / p.m

    @property
    def setting(self) -> str:
        """The table row: '50%' or '2:4'."""
        return self.pattern if self.sparsity is None else f"{round(100 * self.sparsity, 6):g}%"


# --------------------------------------------------------------------------- checks (all before any work)


def check_grid(calibrations, methods, sparsities, patterns) -> list:
    """The cells, in table order (method, setting, calibration); ValueError naming the argument."""
    for name, values, choices in (("calibrations", calibrations, CALIBRATIONS), ("methods", methods, registry.names())):
        if isinstance(values, str) or not values:
            raise ValueError(f"{name} must be a non-empty list of {list(choices)}, got {values!r}")
        for v in values:
            if v not in choices:
                raise ValueError(f"{name}: unknown {name[:-1]} {v!r}; expected one of {list(choices)}")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} lists a value twice: {list(values)!r}")
    sparsities, patterns = list(sparsities or []), list(patterns or [])
    for s in sparsities:
        check_sparsity(s, "sparsities")
    for p in patterns:
        if parse_pattern(p, name="patterns").kind != "nm":
            raise ValueError(f"patterns takes N:M patterns such as 2:4 (unstructured runs use sparsities), got {p!r}")
    if not sparsities and not patterns:
        raise ValueError("sparsities and patterns are both empty: nothing to prune")
    if len(set(sparsities)) != len(sparsities) or len(set(patterns)) != len(patterns):
        raise ValueError(f"sparsities / patterns list a value twice: {sparsities!r} / {patterns!r}")
    settings = [("unstructured", float(s)) for s in sorted(sparsities)] + [(p, None) for p in patterns]
    return [Cell(c, m, pat, s) for m in methods for pat, s in settings for c in calibrations]


def _check_int(value, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def calibration_slice(problems: list, start: int, count: int, eval_problems: list) -> list:
    """``problems[start:start + count]``; ValueError if the slice is empty or shares a problem text with
    the evaluation set (calibrating on test problems would not be held-out evaluation)."""
    _check_int(start, "calibration_start", 0)
    _check_int(count, "calibration_count", 1)
    chosen = problems[start:start + count]
    if not chosen:
        raise ValueError(f"calibration_start={start} is past the end of the calibration problems ({len(problems)})")
    held_out = {p["problem"].strip() for p in eval_problems}
    shared = [p["id"] for p in chosen if p["problem"].strip() in held_out]
    if shared:
        raise ValueError(f"calibration_problems and eval_problems share {len(shared)} problem(s) (e.g. id "
                         f"{shared[0]!r}); calibrate on problems disjoint from the evaluation set")
    return chosen


def check_budget(tokenizer, calibrations, problems, corpus, token_budget: int, window: int) -> None:
    """Every mode must reach exactly ``token_budget`` tokens, or the comparison is not at equal tokens:
    ``text`` has what the corpus's full windows hold, ``prompt`` the templated prompts of the slice
    (``rac`` has at least as many: the same prompts plus their traces)."""
    _check_int(token_budget, "token_budget", 1)
    if "text" in calibrations:
        available = sum(w.numel() for w in corpus_windows(tokenizer, corpus, window))
        if available < token_budget:
            raise ValueError(f"token_budget={token_budget} exceeds the text corpus ({available} tokens in windows of "
                             f"{window}); lower --token-budget or give a longer --corpus")
    if any(c not in ("text",) for c in calibrations):  # prompt, rac and every variant (VAR-6) use the prompts
        total = 0
        for p in problems:
            total += template_prompt(tokenizer, p["problem"]).numel()
            if total >= token_budget:
                return
        raise ValueError(f"token_budget={token_budget} exceeds the {total} tokens of the {len(problems)} templated "
                         "calibration prompts (prompt mode); raise --calibration-count or lower --token-budget")


# --------------------------------------------------------------------------- implementation of Phases I and II


def implementation(impl: str, device: str):
    """(collect_calibration, compress, extra Phase I kwargs, extra Phase II kwargs) of ``impl``."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {list(IMPLEMENTATIONS)}, got {impl!r}")
    if impl == "reference":
        from rac.reference import collect_calibration, compress

        return collect_calibration, compress, {}, {}
    from rac.fast import collect_calibration, compress

    return collect_calibration, compress, {"batch_size": "auto"}, {"device": device}


def close_ids(tokenizer) -> list:
    """The token ids of ``</think>`` (VAR-4's closed-trace test)."""
    ids = tokenizer.encode("</think>", add_special_tokens=False)
    if not ids:
        raise ValueError("the tokenizer encodes '</think>' as no tokens; select_* calibrations need it")
    return list(ids)


def make_calibrations(model, tokenizer, problems, corpus, calibrations, *, collect, collect_extra, token_budget,
                      trace_max_new_tokens, window, seed, temperature, top_k=0, top_p=1.0, stream_weights=None,
                      log=print) -> dict:
    """One calibration set per mode, each of exactly ``token_budget`` tokens: {mode: (CalibrationSet, seconds)}.
    ``regen`` has none here (its sets are made per cell, VAR-5); ``decode_only`` and ``stream_norm`` weight the
    rac set (VAR-2, VAR-3); ``select_*`` choose from the rac traces of every prompt (VAR-4)."""
    prompts = [p["problem"] for p in problems]
    out, made = {}, {}
    options = dict(max_new_tokens=trace_max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    def rac(budget):  # the rac set (budget) or the pool of every prompt's trace (None), made once, with its time
        if budget not in made:
            started = time.perf_counter()
            calib = collect(model, tokenizer, prompts, mode="rac", token_budget=budget, **options, **collect_extra)
            made[budget] = (calib, time.perf_counter() - started)
        return made[budget]

    for mode in calibrations:
        if mode == "regen":
            continue
        started = time.perf_counter()
        if mode in ("rac", "decode_only", "stream_norm"):
            base, base_s = rac(token_budget)
            calib = {"rac": lambda c: c, "decode_only": decode_only,
                     "stream_norm": lambda c: stream_normalised(c, stream_weights)}[mode](base)
        elif mode in ("select_short", "select_long"):
            base, base_s = rac(SELECT_POOL * token_budget)
            calib = select_traces(base, token_budget, close_ids(tokenizer),
                                  rule="shortest" if mode == "select_short" else "longest")
        else:
            base_s = 0.0
            extra = dict(corpus=corpus, window=window) if mode == "text" else {}
            calib = collect(model, tokenizer, prompts, mode=mode, token_budget=token_budget, **options, **extra)
        seconds = time.perf_counter() - started + (base_s if mode != "rac" else 0.0)
        record_unknown_tokens(calib, tokenizer)  # CAL-15
        if calib.num_tokens != token_budget:  # short of the budget: the comparison would not be at equal tokens
            raise ValueError(f"calibration {mode!r} has {calib.num_tokens} tokens, not token_budget={token_budget}")
        out[mode] = (calib, seconds)
        log(f"calibration {mode:<12} {calib.num_tokens} tokens in {len(calib)} sequences "
            f"({', '.join(f'{k} {v}' for k, v in calib.summary().items() if k in LABELS and v)}), {seconds:.1f} s")
    return out


# --------------------------------------------------------------------------- one cell


def evaluation_record(model, tokenizer, problems, *, max_new_tokens, batch_size, answer_regex=None) -> dict:
    """``evaluate`` (greedy) as the tables need it: summary numbers, eval time and every graded reply
    (id, status, prediction, thinking / generated tokens, why it stopped, and its text, so that the replies
    can be graded again, with another ``--answer-regex`` say, without generating them again)."""
    started = time.perf_counter()
    result = evaluate(model, tokenizer, problems, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      answer_regex=answer_regex)
    seconds = time.perf_counter() - started
    s = result.summary()
    return {
        "problems": s["problems"], "acc": s["acc@1"], "se": s["se"], "answered": s["answered"],
        "counts": s["counts"], "stopped_at_limit": s["stopped_at_limit"],
        "thinking_mean": s["thinking_tokens_mean"], "thinking_median": s["thinking_tokens_median"],
        "generated_tokens": s["generated_tokens"], "tokens_per_s": s["tokens_per_s"],
        "acc_by_kind": s.get("acc@1_by_kind"), "eval_s": seconds,
        "records": [{"id": g.id, "status": g.status, "prediction": g.prediction, "thinking_tokens": g.thinking_tokens,
                     "generated_tokens": g.generated_tokens, "stopped": g.stopped, "text": g.text}
                    for g in result.generations],
    }


def objective_summary(report: dict) -> dict:
    """The compression report in a few numbers: the mean over pruned linears of the relative objective
    ||(W - W_hat) X||^2 / ||W X||^2, in total and per token source (Eq. 7 split as in P2-7), and the
    fraction of zeros over all pruned weights."""
    layers = report["layers"]
    by_source: dict = {}
    for row in layers:
        for src, value in row["relative_objective_by_source"].items():
            if isinstance(value, float) and math.isfinite(value):
                by_source.setdefault(src, []).append(value)
    weights = sum(r["shape"][0] * r["shape"][1] for r in layers)
    return {
        "relative_objective_mean": statistics.fmean(r["relative_objective"] for r in layers),
        "relative_objective_by_source_mean": {k: statistics.fmean(v) for k, v in by_source.items()},
        "sparsity_reached": sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in layers) / weights,
        "linears": len(layers),
    }


def prune_copy(dense, calib, cell: Cell, *, compress, compress_extra) -> tuple:
    """(pruned model, compression report, seconds): ``compress`` on a fresh copy of ``dense``, which itself
    is never pruned, so every cell starts from the same dense weights."""
    model = copy.deepcopy(dense)
    started = time.perf_counter()
    model, report = compress(model, calib, method=cell.method, sparsity=cell.sparsity, pattern=cell.pattern,
                             **compress_extra)
    return model, report, time.perf_counter() - started


def run_cell(dense, tokenizer, calib, cell: Cell, eval_problems, *, compress, compress_extra, max_new_tokens,
             eval_batch_size, answer_regex=None) -> dict:
    """Prune a fresh copy of ``dense`` for ``cell`` (``prune_copy``), evaluate it, return its record."""
    model, report, prune_s = prune_copy(dense, calib, cell, compress=compress, compress_extra=compress_extra)
    record = {"calibration": cell.calibration, "method": cell.method, "pattern": cell.pattern,
              "sparsity": cell.sparsity, "nominal_sparsity": cell.nominal_sparsity, "setting": cell.setting,
              "prune_s": prune_s, "objective": objective_summary(report)}
    record.update(evaluation_record(model, tokenizer, eval_problems, max_new_tokens=max_new_tokens,
                                    batch_size=eval_batch_size, answer_regex=answer_regex))
    return record


def regen_schedule(cell: Cell) -> list:
    """VAR-5's schedule in the experiment: one halfway unstructured step, then the cell's own setting."""
    if cell.pattern == "unstructured":
        return [("unstructured", cell.sparsity / 2), ("unstructured", cell.sparsity)]
    return [("unstructured", cell.nominal_sparsity / 2), (cell.pattern, None)]


def run_regen_cell(dense, tokenizer, prompts, cell: Cell, eval_problems, *, collect, collect_kwargs, compress,
                   compress_extra, max_new_tokens, eval_batch_size, answer_regex=None) -> dict:
    """A ``regen`` cell (VAR-5): Phase I and II at each step of ``regen_schedule`` on a fresh copy of ``dense``."""
    model = copy.deepcopy(dense)
    started = time.perf_counter()
    model, reports, sets = regenerate(model, tokenizer, prompts, regen_schedule(cell), method=cell.method,
                                      collect=collect, compress=compress, collect_kwargs=collect_kwargs,
                                      compress_kwargs=compress_extra)
    record = {"calibration": cell.calibration, "method": cell.method, "pattern": cell.pattern,
              "sparsity": cell.sparsity, "nominal_sparsity": cell.nominal_sparsity, "setting": cell.setting,
              "prune_s": time.perf_counter() - started, "objective": objective_summary(reports[-1]),
              "regen_steps": [{"schedule_step": list(step), **calib.summary(),
                               "trace_stops": calib.meta.get("trace_stops")}
                              for step, calib in zip(regen_schedule(cell), sets)]}
    record.update(evaluation_record(model, tokenizer, eval_problems, max_new_tokens=max_new_tokens,
                                    batch_size=eval_batch_size, answer_regex=answer_regex))
    return record


# --------------------------------------------------------------------------- the whole grid


def environment(root: Path | None = None) -> dict:
    """Date, commit, versions and machine: what every figure in docs must name."""
    root = root or Path(__file__).resolve().parents[1]
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout
        dirty = bool(status.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        pass
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "worktree_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "cpu": cpu,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_experiment(model, tokenizer, *, calibration_problems, eval_problems, corpus, cells, token_budget,
                   max_new_tokens, trace_max_new_tokens=256, window=128, seed=0, temperature=0.0, top_k=0,
                   top_p=1.0, impl="fast", device="cpu", eval_batch_size=32, answer_regex=None, settings=None,
                   log=print, done=None, on_cell=None, stream_weights=None) -> dict:
    """Run the grid ``cells`` (``check_grid``) on ``model`` (left dense) and return the results dict.

    calibration_problems: dicts with "problem" (``calibration_slice``); eval_problems: dicts with
    "problem" and "answer" (``load_problems``); corpus: the text of the ``text`` mode.
    temperature, top_k, top_p: how rac traces are sampled. answer_regex: the grader (``rac.cli.evaluate``).
    done: the results of an earlier, interrupted run with the same settings (XP-7): its dense row and
    finished cells are kept, not recomputed. on_cell(results so far): called after the dense row and each
    cell, so that they can be written as they finish.
    """
    _check_int(max_new_tokens, "max_new_tokens", 1)
    _check_int(trace_max_new_tokens, "trace_max_new_tokens", 1)
    _check_int(eval_batch_size, "eval_batch_size", 1)
    check_calibration_options("rac", trace_max_new_tokens, temperature, top_k, top_p, token_budget, window, seed)
    calibrations = list(dict.fromkeys(c.calibration for c in cells))
    check_budget(tokenizer, calibrations, calibration_problems, corpus, token_budget, window)
    collect, compress, collect_extra, compress_extra = implementation(impl, device)
    from rac.reference.compress import check_compress_arguments

    for cell in {(c.method, c.pattern, c.sparsity) for c in cells}:  # a bad pattern fails before Phase I
        check_compress_arguments(model, method=cell[0], sparsity=cell[2], pattern=cell[1])
    started = time.perf_counter()
    results = {"settings": dict(settings or {}, token_budget=token_budget, max_new_tokens=max_new_tokens,
                                trace_max_new_tokens=trace_max_new_tokens, window=window, seed=seed,
                                temperature=temperature, top_k=top_k, top_p=top_p, impl=impl, device=str(device),
                                eval_batch_size=eval_batch_size, answer_regex=answer_regex,
                                **({"stream_weights": stream_weights} if stream_weights else {}),
                                calibration_problems_used=len(calibration_problems),
                                eval_problems_used=len(eval_problems)),
               "environment": environment()}
    if done is not None:
        check_resumable(done, results["settings"])
    if done is not None and done.get("dense"):
        dense = done["dense"]
        log("dense: kept from the interrupted run")
    else:
        dense = evaluation_record(model, tokenizer, eval_problems, max_new_tokens=max_new_tokens,
                                  batch_size=eval_batch_size, answer_regex=answer_regex)
        log(f"dense: acc@1 {dense['acc']:.3f} (SE {dense['se']:.3f}), thinking {dense['thinking_mean']:.1f}, "
            f"{dense['eval_s']:.1f} s")
    results["dense"] = dense
    results["cells"] = []
    if on_cell is not None:
        on_cell(_plain(results))
    sets = make_calibrations(model, tokenizer, calibration_problems, corpus, calibrations, collect=collect,
                             collect_extra=collect_extra, token_budget=token_budget,
                             trace_max_new_tokens=trace_max_new_tokens, window=window, seed=seed,
                             temperature=temperature, top_k=top_k, top_p=top_p, stream_weights=stream_weights,
                             log=log)
    results["calibration"] = {
        mode: {**calib.summary(), "seconds": seconds,
               "trace_stops": calib.meta.get("trace_stops"), "meta": _plain(calib.meta)}
        for mode, (calib, seconds) in sets.items()
    }
    finished = {_cell_key(c): c for c in (done or {}).get("cells", [])}
    for i, cell in enumerate(cells, start=1):
        key = (cell.calibration, cell.method, cell.pattern, cell.sparsity)
        if key in finished:
            results["cells"].append(finished[key])
            log(f"[{i}/{len(cells)}] {cell.method} {cell.setting} {cell.calibration}: kept from the interrupted run")
            continue
        if cell.calibration == "regen":
            rec = run_regen_cell(
                model, tokenizer, [p["problem"] for p in calibration_problems], cell, eval_problems,
                collect=collect, compress=compress, compress_extra=compress_extra, max_new_tokens=max_new_tokens,
                eval_batch_size=eval_batch_size, answer_regex=answer_regex,
                collect_kwargs=dict(max_new_tokens=trace_max_new_tokens, temperature=temperature, top_k=top_k,
                                    top_p=top_p, seed=seed, token_budget=token_budget, **collect_extra))
        else:
            rec = run_cell(model, tokenizer, sets[cell.calibration][0], cell, eval_problems, compress=compress,
                           compress_extra=compress_extra, max_new_tokens=max_new_tokens,
                           eval_batch_size=eval_batch_size, answer_regex=answer_regex)
        results["cells"].append(_plain(rec))
        if on_cell is not None:
            on_cell(_plain(results))
        log(f"[{i}/{len(cells)}] {cell.method} {cell.setting} {cell.calibration}: acc@1 {rec['acc']:.3f} "
            f"(SE {rec['se']:.3f}), thinking {rec['thinking_mean']:.1f}, hit limit {rec['stopped_at_limit']}, "
            f"prune {rec['prune_s']:.1f} s, eval {rec['eval_s']:.1f} s")
    results["wall_time_s"] = time.perf_counter() - started
    return _plain(results)


def _cell_key(record: dict) -> tuple:
    return (record["calibration"], record["method"], record["pattern"], record["sparsity"])


#: Settings that may differ between an interrupted run and its resumption (they do not change a cell).
RESUME_FREE = ("argv", "threads", "device", "eval_batch_size")


def check_resumable(done: dict, settings: dict) -> None:
    """ValueError naming the first setting in which the interrupted run ``done`` differs from this one."""
    before = _plain(done.get("settings", {}))
    now = _plain(settings)
    for key in sorted(set(before) | set(now)):
        if key in RESUME_FREE:
            continue
        if before.get(key) != now.get(key):
            raise ValueError(f"--resume: the interrupted run was made with {key}={before.get(key)!r}, this one has "
                             f"{now.get(key)!r}; resume with the same options or start a new --out")


def _plain(obj):
    """``obj`` with strict-JSON types only; NaN and Inf as None (export.jsonable's rules otherwise)."""
    return jsonable(obj, nonfinite=lambda value: None)
