"""Loaders for the calibration inputs of Phase I (spec CAL-9).

Three local file formats, those of ``fixtures/data/``:

- problems, JSON lines ``{"id": "p0001", "problem": "...", "answer": "42"}``;
- traces, JSON lines ``{"id": "p0001", "trace": "<think>\\n...</think>\\n..."}``;
- a generic corpus, plain UTF-8 text (the ``text`` mode, the paper's "C4" column).

Every error is a ``ValueError`` that names the file and, for JSON lines, the
line number, so a user can open the file at the right place.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_text(path, what: str = "file") -> str:
    """The whole file as UTF-8 text; ValueError naming the file and the line of a byte that is not UTF-8,
    or saying that the path is a directory or missing (FileNotFoundError)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; the {what} must be a file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (the {what})")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                         f"save the {what} as UTF-8") from None


def _read_jsonl(path, required: tuple, what: str = "file") -> list:
    """Records of a JSON-lines file; blank lines are skipped; each record must hold ``required`` strings
    (not blank)."""
    path = Path(path)
    records = []
    for lineno, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {lineno} must be a JSON object, got {type(row).__name__}")
        for key in required:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{path}: line {lineno} needs a non-empty string field {key!r}")
        records.append((lineno, row))
    if not records:
        raise ValueError(f"{path}: the file holds no records (expected JSON lines with fields {list(required)})")
    return records


def read_problems(path, problem_field: str | None = None) -> list:
    """Calibration problems, in source order, as dicts with at least "id" and "problem" (spec CAL-9).

    Every source ``rac eval`` reads (``rac.cli.eval_data.load_problems``: JSON lines, a JSON list, parquet,
    CSV, arrow, a ``save_to_disk`` directory, ``hf:NAME``), but no answer is required. The problem is the
    field ``problem_field``, else the first of "problem", "question", "Problem", "prompt" present. In a
    JSON-lines file "id" defaults to the line number as a string and errors name the line; "answer" and
    any other fields are kept as they are. Ids must be unique.
    """
    from rac.cli.eval_data import HUB_PREFIX, PROBLEM_FIELDS, load_problems

    if problem_field is not None and (not isinstance(problem_field, str) or not problem_field.strip()):
        raise ValueError(f"--problem-field must be a non-empty field name, got {problem_field!r}")
    if str(path).startswith(HUB_PREFIX) or Path(path).suffix != ".jsonl":
        return load_problems(path, problem_field=problem_field, require_answer=False)
    fields = (problem_field,) if problem_field else PROBLEM_FIELDS
    problems, seen = [], {}
    for lineno, row in _read_jsonl(path, (), "problems file"):
        key = next((k for k in fields if isinstance(row.get(k), str) and row[k].strip()), None)
        if key is None:
            hint = "" if problem_field else " (or name the field with --problem-field)"
            raise ValueError(f"{path}: line {lineno} needs a non-empty string field "
                             f"{' / '.join(map(repr, fields))}{hint}")
        row = {**row, "id": str(row.get("id", lineno)), "problem": row[key]}
        if row["id"] in seen:
            raise ValueError(f"{path}: line {lineno} repeats id {row['id']!r} of line {seen[row['id']]}")
        seen[row["id"]] = lineno
        problems.append(row)
    return problems


def read_traces(path) -> dict:
    """Off-policy traces of a JSON-lines file as a dict id -> trace text (ids unique)."""
    traces, seen = {}, {}
    for lineno, row in _read_jsonl(path, ("id", "trace"), "traces file"):
        if row["id"] in seen:
            raise ValueError(f"{path}: line {lineno} repeats id {row['id']!r} of line {seen[row['id']]}")
        seen[row["id"]] = lineno
        traces[row["id"]] = row["trace"]
    return traces


def align_traces(problems: list, traces: dict) -> list:
    """One entry per problem: its trace from ``traces`` (id -> text), or None where there is none.

    This is the ``traces`` argument of ``collect_calibration(mode="offpolicy")``.
    """
    return [traces.get(p["id"]) for p in problems]


def read_corpus(path) -> str:
    """The generic corpus of the ``text`` mode: the whole file as UTF-8 text (must not be blank)."""
    path = Path(path)
    text = read_text(path, "corpus")
    if not text.strip():
        raise ValueError(f"{path}: the corpus file is empty")
    return text


def _token_ids(row: dict, key: str, where: str, *, required: bool):
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: {key!r} must be a list of integer token ids")
    return value


def read_trace_ids(path) -> list:
    """Traces from a serving engine as token ids, JSON lines (docs/traces.md), in file order:
    [{"id", "problem" (or None), "trace": GivenTrace, "sampling": dict}]. Each line holds
    ``output_ids`` (a list of ints) and ``problem`` (the problem text) and/or ``prompt_ids`` (the templated
    prompt the engine was given); ``id`` defaults to the line number, ``sampling`` to {}. ValueError naming the
    file and line otherwise."""
    import torch

    from rac.reference import GivenTrace

    out, seen = [], {}
    for lineno, row in _read_jsonl(path, (), "trace-ids file"):
        where = f"{path}: line {lineno}"
        output = _token_ids(row, "output_ids", where, required=True)
        prompt = _token_ids(row, "prompt_ids", where, required=False)
        problem = row.get("problem")
        if problem is not None and (not isinstance(problem, str) or not problem.strip()):
            raise ValueError(f"{where}: 'problem' must be a non-empty string")
        if problem is None and prompt is None:
            raise ValueError(f"{where}: needs 'problem' (the text) or 'prompt_ids' (the templated prompt's ids)")
        sampling = row.get("sampling", {})
        if not isinstance(sampling, dict):
            raise ValueError(f"{where}: 'sampling' must be an object such as {{\"temperature\": 0.6, \"top_p\": 0.95}}")
        rid = str(row.get("id", lineno))
        if rid in seen:
            raise ValueError(f"{where} repeats id {rid!r} of line {seen[rid]}")
        seen[rid] = lineno
        trace = GivenTrace(torch.tensor(output, dtype=torch.long),
                           None if prompt is None else torch.tensor(prompt, dtype=torch.long))
        out.append({"id": rid, "problem": problem, "trace": trace, "sampling": sampling})
    temperatures = {float(r["sampling"].get("temperature", 0.0)) for r in out}
    if len(temperatures) > 1:
        raise ValueError(f"{path}: the traces were sampled at several temperatures {sorted(temperatures)}; give one "
                         "setting per file")
    return out


class UnknownTokensWarning(UserWarning):
    """Much of the calibration text maps to the tokenizer's unknown token: calibration sees no real text."""


#: Above this fraction of unknown tokens the calibration set is mostly not the text it was made from (CAL-15).
UNKNOWN_TOKENS_FRACTION = 0.01


def record_unknown_tokens(calib, tokenizer) -> dict | None:
    """Count the tokenizer's unknown token in ``calib`` (every source: a corpus in another alphabet, prompts
    with characters a small vocabulary lacks), store {"unk_token", "count", "fraction"} in
    ``calib.meta["unknown_tokens"]`` (report.json keeps it) and warn (UnknownTokensWarning) above
    UNKNOWN_TOKENS_FRACTION. None for a tokenizer without an unknown token (byte-level BPE cannot have any)."""
    import warnings

    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or calib.num_tokens == 0:
        return None
    count = int(sum(int((seq == unk).sum()) for seq in calib.sequences))
    entry = {"unk_token": tokenizer.unk_token, "count": count, "fraction": count / calib.num_tokens}
    calib.meta["unknown_tokens"] = entry
    if entry["fraction"] > UNKNOWN_TOKENS_FRACTION:
        by_source = {name: int(sum(int(((seq == unk) & (lab == code)).sum())
                                   for seq, lab in zip(calib.sequences, calib.labels)))
                     for code, name in enumerate(_label_names())}
        where = ", ".join(f"{n} {c}" for n, c in by_source.items() if c)
        warnings.warn(UnknownTokensWarning(
            f"{count} of the {calib.num_tokens} calibration tokens ({entry['fraction']:.1%}; {where}) are the "
            f"unknown token {tokenizer.unk_token!r}: this tokenizer cannot write much of the calibration text "
            "(a corpus in another script or alphabet?); give a corpus or problems in the model's own vocabulary"
        ), stacklevel=2)
    return entry


def _label_names() -> tuple:
    from rac.reference.calibration_set import LABELS

    return LABELS
