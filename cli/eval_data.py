"""Loading evaluation problems: local JSON lines, local dataset files, Hugging Face datasets (spec EVAL-*).

    load_problems(source, split="test", ...) -> [{"id", "problem", "answer", ...}, ...]

``source`` is one of

- a ``.jsonl`` file, one JSON object per line (the project's own format, and MATH-500 as
  ``HuggingFaceH4/MATH-500`` ships it: ``problem``, ``solution``, ``answer``, ``unique_id``);
- a ``.json`` file holding a list of such objects;
- a parquet, csv or arrow file, or a directory written by ``save_to_disk``, read with ``datasets``
  (an optional package);
- ``hf:NAME``, a Hugging Face dataset such as ``hf:HuggingFaceH4/MATH-500``, through
  ``datasets.load_dataset`` (from its cache, or downloaded). Only with the prefix: a path that does
  not exist is a FileNotFoundError, never a request to the Hub.

Every record becomes a dict with a str ``id``, ``problem`` and ``answer``; other fields stay.
The problem is the first of ``problem``, ``question``, ``Problem``, ``prompt`` present (or
``problem_field``); the answer the first of ``answer``, ``final_answer``, ``Answer`` (or
``answer_field``), else the last ``\\boxed{}`` of ``solution``. Numbers are written as str;
a GSM8K-style answer "...#### 42" gives "42". A record with no problem, no answer, or an answer
that is empty or has no ``\\boxed{}`` in its solution is a ValueError naming the record.
"""

from __future__ import annotations

import json
from pathlib import Path

from rac.cli.answers import extract_boxed
from rac.cli.data import read_text

PROBLEM_FIELDS = ("problem", "question", "Problem", "prompt")
#: A Hugging Face dataset is read only when its name carries this prefix (a typo is never sent to the Hub).
HUB_PREFIX = "hf:"
ANSWER_FIELDS = ("answer", "final_answer", "Answer")
ID_FIELDS = ("id", "unique_id", "idx")


def load_problems(source, *, split: str = "test", problem_field: str | None = None,
                  answer_field: str | None = None, limit: int | None = None, require_answer: bool = True) -> list:
    """Problems of ``source`` (module docstring), in source order, at most ``limit`` of them.
    ``require_answer=False`` (calibration problems): a record without an answer is kept, with none."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise ValueError(f"source must be a file, a directory or a dataset name, got {source!r}")
    if str(source).startswith(HUB_PREFIX):
        name = str(source)[len(HUB_PREFIX):]
        rows, where = _load_dataset(name, Path(name), split, hub=True), f"{name} (split {split!r})"
        return _finish(rows, where, limit, problem_field, answer_field, require_answer)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such file or directory (a Hugging Face dataset is read only when "
                                f"named as {HUB_PREFIX}NAME, e.g. {HUB_PREFIX}HuggingFaceH4/MATH-500)")
    if path.is_file() and path.suffix == ".jsonl":
        rows, where = _read_jsonl(path), str(path)
    elif path.is_file() and path.suffix == ".json":
        rows, where = _read_json_list(path), str(path)
    else:
        rows, where = _load_dataset(source, path, split), f"{source} (split {split!r})"
    return _finish(rows, where, limit, problem_field, answer_field, require_answer)


def _finish(rows, where, limit, problem_field, answer_field, require_answer=True) -> list:
    if limit is not None:
        rows = rows[:limit]
    problems = [normalize_record(row, i, where, problem_field, answer_field, require_answer)
                for i, row in enumerate(rows)]
    if not problems:
        raise ValueError(f"{where}: no problems")
    seen = {}
    for i, p in enumerate(problems):
        if p["id"] in seen:
            raise ValueError(f"{where}: record {i} repeats id {p['id']!r} of record {seen[p['id']]}")
        seen[p["id"]] = i
    return problems


def normalize_record(row, index: int, where: str, problem_field=None, answer_field=None,
                     require_answer: bool = True) -> dict:
    """One record as {"id", "problem", "answer", ...}; ValueError naming ``where`` and the record.
    ``require_answer=False``: a record with no answer field at all has none (its other checks stay)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: record {index} must be an object, got {type(row).__name__}")
    problem_key = _first_key(row, (problem_field,) if problem_field else PROBLEM_FIELDS)
    if problem_key is None or not isinstance(row[problem_key], str) or not row[problem_key].strip():
        wanted = problem_field or " / ".join(PROBLEM_FIELDS)
        raise ValueError(f"{where}: record {index} has no problem text (a non-empty str field {wanted})")
    missing = _first_key(row, (answer_field,) if answer_field else ANSWER_FIELDS) is None and not (
        answer_field is None and isinstance(row.get("solution"), str))
    if missing and not require_answer:
        id_key = _first_key(row, ID_FIELDS)
        return {**row, "id": str(row[id_key]) if id_key is not None else str(index), "problem": row[problem_key]}
    answer = _answer(row, index, where, answer_field)
    id_key = _first_key(row, ID_FIELDS)
    pid = str(row[id_key]) if id_key is not None else str(index)
    return {**row, "id": pid, "problem": row[problem_key], "answer": answer}


def _first_key(row: dict, keys) -> str | None:
    return next((k for k in keys if k in row and row[k] is not None), None)


def _answer(row: dict, index: int, where: str, answer_field) -> str:
    key = _first_key(row, (answer_field,) if answer_field else ANSWER_FIELDS)
    if key is not None:
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: record {index} field {key!r} must be a str or a number, got {value!r}")
        text = str(value).strip()
        if "####" in text:  # GSM8K: worked solution, then "#### answer"
            text = text.rsplit("####", 1)[1].strip()
        if not text:
            raise ValueError(f"{where}: record {index} has an empty answer in field {key!r}")
        return text
    if answer_field is None and isinstance(row.get("solution"), str):
        boxed = extract_boxed(row["solution"])
        if boxed is None or not boxed:
            raise ValueError(f"{where}: record {index} has no answer field and its solution has no \\boxed{{}} answer")
        return boxed
    wanted = answer_field or " / ".join(ANSWER_FIELDS) + " (or a solution with \\boxed{})"
    raise ValueError(f"{where}: record {index} has no answer (expected field {wanted})")


def _read_jsonl(path: Path) -> list:
    rows = []
    for lineno, line in enumerate(read_text(path, "problems file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    return rows


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(read_text(path, "problems file"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json problems file must hold a list of objects, got {type(data).__name__}")
    return data


_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow", ".txt": "text"}


def _load_dataset(source, path: Path, split: str, hub: bool = False) -> list:
    """Records through ``datasets.load_dataset``: a data file by its builder, a directory or a name as is."""
    try:
        import datasets
    except ImportError:
        kind = "file" if path.is_file() else "directory" if path.is_dir() else "dataset name"
        raise ValueError(
            f"source {str(source)!r} ({kind}) needs the optional 'datasets' package (pip install datasets); "
            "without it only .jsonl and .json problem files can be read"
        ) from None
    if path.is_file():
        builder = _BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"source {str(path)!r}: unknown file type {path.suffix!r} (use .jsonl, .json, "
                             f"{', '.join(_BUILDERS)} or a dataset directory)")
        ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
    elif path.is_dir() and (path / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(path))  # a Dataset or DatasetDict saved with save_to_disk
        if isinstance(ds, datasets.DatasetDict):
            ds = _pick_split(ds, split, source)
    else:  # a dataset repository checked out on disk, or (hub=True) a name
        try:
            ds = datasets.load_dataset(str(source), split=split)
        except ValueError as exc:  # an unknown split names the ones there are
            raise ValueError(f"source {str(source)!r}: {exc}") from None
    return [dict(r) for r in ds]


def _pick_split(ds, split: str, source):
    if split not in ds:
        raise ValueError(f"source {str(source)!r} has no split {split!r} (it has {sorted(ds)})")
    return ds[split]
