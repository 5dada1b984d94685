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
from pathlib import Path

from rac.cli.atomic import atomic_directory
from rac.reference.contract.models import decoder_blocks

REPORT_NAME = "report.json"


def load_model(path, *, dtype=None, device=None, trust_remote_code: bool = False):
    """The causal LM in directory ``path``, loaded from its safetensors weights.

    dtype: e.g. torch.float32 or torch.bfloat16 (default: the checkpoint's own, as stored).
    ValueError if ``path`` is not a directory, holds no ``*.safetensors`` (pickle checkpoints
    are refused: loading them can run arbitrary code) or the model has no decoder blocks.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"model: {path} is not a directory (expected a save_pretrained directory)")
    if not (path / "config.json").is_file():
        raise ValueError(f"model: {path} has no config.json (expected a save_pretrained directory)")
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (
            f"; it has {found}: convert them to safetensors first (pickle checkpoints are never loaded)"
            if found
            else ""
        )
        raise ValueError(f"model: {path} holds no *.safetensors weights{hint}")
    kwargs = {"use_safetensors": True, "trust_remote_code": bool(trust_remote_code)}
    if dtype is not None:
        import transformers

        # transformers 5 calls it dtype; 4.x torch_dtype
        kwargs["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    decoder_blocks(model)  # ValueError when the architecture has no recognisable decoder blocks
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(path):
    """The tokenizer saved beside the model (AutoTokenizer, local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(path))


def export_pruned(model, tokenizer, out, *, report=None, overwrite: bool = False) -> Path:
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
