"""Loading a model to prune and exporting the pruned one (spec EXP-*).

- ``load_model(path)``: ``AutoModelForCausalLM.from_pretrained`` from safetensors only
  (never a pickle checkpoint), ``trust_remote_code`` off unless asked; clear errors for
  a missing directory, missing weights or an architecture with no decoder blocks.
- ``export_pruned(model, tokenizer, out, report=...)``: a ``save_pretrained`` directory
  (config, safetensors, tokenizer) plus ``report.json``. It is written to a temporary
  directory beside ``out`` and renamed into place at the end, so an interrupted run
  never leaves a directory that looks complete. An existing ``out`` is refused unless
  ``overwrite=True``.

Pruned weights are stored dense with their zeros in place: that is what every engine
loads (vLLM removed its dedicated 2:4 kernels in 2026, PR #36799, and compressed-tensors 0.19 no
longer writes sparse formats); the masks are the zeros, and ``report.json`` says which pattern and
sparsity produced them.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from rac.reference.contract.atomic import atomic_directory
from rac.reference.contract.models import decoder_blocks

REPORT_NAME = "report.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


#: a Hugging Face repository id: "org/name" (letters, digits, ., _, -), optionally written hf:org/name
_REPO_ID = re.compile(r"^(hf:)?([A-Za-z0-9][\w.-]*/[\w.-]+)$")


def resolve_model(value, option: str = "--model") -> Path:
    """A local directory as given, or a Hugging Face repository id ("org/name" or "hf:org/name") resolved
    through the local Hugging Face cache (``HF_HUB_CACHE``, else the default cache), offline: nothing is
    downloaded. FileNotFoundError naming the option when it is neither."""
    path = Path(value)
    if path.exists():
        return path
    match = _REPO_ID.match(str(value))
    if match is None:
        raise FileNotFoundError(f"{option} {value}: no such directory")
    repo_id = match.group(2)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(repo_id=repo_id, local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        where = cache or "the default Hugging Face cache"
        raise FileNotFoundError(
            f"{option} {value}: not a local directory, and {repo_id} is not in {where}; nothing is downloaded at "
            f"run time: fetch it first (e.g. `huggingface-cli download {repo_id}`) or give its directory"
        ) from None


def check_model_dir(path, *, trust_remote_code: bool = False, option: str = "--model") -> Path:
    """A save_pretrained directory that can be loaded safely, checked before anything is loaded (REL-*):
    it exists (a Hugging Face id is looked up in the local cache: ``resolve_model``) and is a directory,
    its config.json is valid JSON, it holds ``*.safetensors`` weights whose headers read (pickle
    checkpoints are refused: loading one can run arbitrary code), and it needs no code of its own
    unless ``trust_remote_code``. Each error names the file."""
    path = resolve_model(path, option)
    if not path.is_dir():
        raise ValueError(f"{option} {path} is not a directory (expected a save_pretrained directory)")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{option} {path} has no config.json (expected a save_pretrained directory)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ValueError(f"{config_path} is not valid JSON{where}: the model's config is damaged") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object")
    if "auto_map" in config and not trust_remote_code:
        raise ValueError(f"{config_path} names code of the model's own (auto_map): it is not run unless you "
                         "trust it, with --trust-remote-code")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f"; it has {found}: convert them to safetensors first (pickle checkpoints are never loaded)"
        hint = hint if found else ""
        raise ValueError(f"{option} {path} holds no *.safetensors weights{hint}")
    from safetensors import safe_open

    for file in weights:
        try:
            size, expected = file.stat().st_size, _safetensors_end(file)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ValueError(f"{file} is not a safetensors file (its header does not read: {exc})") from None
        if size < expected:
            raise ValueError(f"{file} is truncated ({size:,} of {expected:,} bytes); copy or download it again")
        try:
            with safe_open(str(file), framework="pt") as f:
                list(f.keys())
        except Exception as exc:  # safetensors' own error types vary by version
            raise ValueError(f"{file} is not a readable safetensors file ({exc}); the download or copy is "
                             "incomplete or damaged") from None
    return path


def check_tokenizer_files(path, option: str = "--model") -> Path:
    """ValueError naming the directory when it holds no tokenizer files."""
    path = Path(path)
    if path.is_dir() and not any((path / n).is_file() for n in TOKENIZER_FILES):
        raise ValueError(f"{option} {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                         "tokenizer next to the model")
    return path


def _safetensors_end(file: Path) -> int:
    """The size a safetensors file must have: 8 + header length + the largest data offset of its header."""
    with file.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n < 100_000_000:
            raise ValueError(f"header length {n}")
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def load_model(path, *, dtype=None, device=None, trust_remote_code: bool = False):
    """The causal LM in directory ``path``, loaded from its safetensors weights.

    dtype: e.g. torch.float32 or torch.bfloat16 (default: the checkpoint's own, as stored).
    Checked first by ``check_model_dir`` (a missing directory, a damaged config.json, no or truncated
    *.safetensors, code of its own without ``trust_remote_code``: errors naming the file); ValueError
    if the model has no decoder blocks. Never asks a question on the terminal.
    """
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, trust_remote_code=trust_remote_code)
    kwargs = {"use_safetensors": True, "trust_remote_code": bool(trust_remote_code)}
    import transformers

    # transformers 5 calls it dtype and loads the stored dtype by default; 4.x calls it torch_dtype and
    # loads float32 unless asked for "auto" (found by nox -s minimums: rac eval evaluated bf16 as float32)
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kwargs[key] = dtype if dtype is not None else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--model {path}: transformers cannot load it ({str(exc).splitlines()[0]})") from None
    decoder_blocks(model)  # ValueError when the architecture has no recognisable decoder blocks
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(path, *, trust_remote_code: bool = False, option: str = "--model"):
    """The tokenizer saved beside the model (AutoTokenizer, local files only); ValueError naming the
    directory when it has no tokenizer files."""
    from transformers import AutoTokenizer

    path = check_tokenizer_files(path, option)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=bool(trust_remote_code))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{option} {path}: the tokenizer cannot be loaded ({str(exc).splitlines()[0]})") from None


def export_pruned(model, tokenizer, out, *, report=None, overwrite: bool = False, before_rename=None) -> Path:
    """Write ``model`` (+ ``tokenizer`` and ``report``) as a save_pretrained directory at ``out``.

    All files are first written to a hidden temporary directory next to ``out`` and moved into
    place by one rename; on any error the temporary directory is removed and ``out`` is left as
    it was. ``out`` existing is a FileExistsError unless ``overwrite``; then the old directory is
    replaced only once the new one is complete.
    """
    with atomic_directory(out, overwrite=overwrite, hint="pass overwrite=True (--overwrite)") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            (tmp / REPORT_NAME).write_text(json.dumps(jsonable(report), indent=2) + "\n")
        if before_rename is not None:  # the reliability tests' fault point (rac.cli.faults)
            before_rename()
    return Path(out)


def jsonable(obj, nonfinite=str):
    """``obj`` with strict-JSON types only: tuples as lists, keys as strings, other objects as
    strings, and NaN/Inf (which strict JSON has not) replaced by ``nonfinite(value)``: a string
    by default (report.json), or e.g. ``lambda v: None`` (rac experiment's results.json)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, nonfinite) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return nonfinite(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
