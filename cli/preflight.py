"""Checks that run before any expensive step of a ``rac`` command (spec REL-*).

A mistake must cost seconds, not a Phase I: every path the run will read or write, the device,
option conflicts and the free disk space the outputs need are checked first, and each error names
the option (or the two options that conflict) and says what was expected.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Room kept on top of an estimate of what a run writes (tokenizer, report, rounding of the estimate).
DISK_MARGIN = 64 << 20


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def writable_directory_target(value, option: str, *, overwrite: bool = False, must_be_new: bool = True) -> Path:
    """A directory the run will create (or replace with ``overwrite``): not empty, not the current
    directory or one of its ancestors, not a file, not under a file, on a writable file system."""
    if value is None:
        raise ValueError(f"{option} is required")
    if not str(value).strip():
        raise ValueError(f"{option} must be a directory path, got an empty string")
    path = Path(value).expanduser()
    resolved = path.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ValueError(f"{option} {value} is the current directory or contains it; choose a new directory "
                         "(the run replaces its whole content)")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {value} is a file; give a directory path (it is created)")
    if path.exists() and must_be_new and not overwrite:
        raise FileExistsError(f"{option} {value} already exists; choose another path or add --overwrite")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise ValueError(f"{option} {value} is under {base}, which is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {value}: {base} is not writable")
    return path


def checkpoint_directory(value, option: str = "--checkpoint-dir") -> Path:
    """A checkpoint directory (new or existing, to resume): not a file, not under a file, writable."""
    if not str(value).strip():
        raise ValueError(f"{option} must be a directory path, got an empty string")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {value} is a file; give a directory path (it is created, or resumed from)")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ValueError(f"{option} {value} is under {base}, which is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {value}: {base} is not writable")
    return path


def disk_space(path: Path, needed: int, option: str, what: str) -> None:
    """OSError naming ``option`` when the file system of ``path`` has less than ``needed`` + a margin free."""
    free = shutil.disk_usage(_nearest_existing(path)).free
    if free < needed + DISK_MARGIN:
        raise OSError(f"{option} {path}: {what} needs about {(needed + DISK_MARGIN) / 2**20:,.0f} MiB and only "
                      f"{free / 2**20:,.0f} MiB are free there")


def input_file(value, option: str) -> Path:
    """An existing, readable file (not a directory)."""
    if value is None or not str(value).strip():
        raise ValueError(f"{option} must be a file path, got {value!r}")
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{option} {value}: no such file")
    if path.is_dir():
        raise ValueError(f"{option} {value} is a directory; give a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{option} {value}: the file is not readable")
    return path


def device(value, option: str = "--device") -> str:
    """"auto", "cpu", "cuda" or "cuda:N" that exists here; ValueError otherwise."""
    import torch

    if value in (None, "auto"):
        return "auto"
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {value!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {value}: CUDA is not available on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {value}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"{option} {value!r}: only cpu and cuda devices are supported")
    return str(value)


def seed(value, option: str = "--seed") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{option} must be an integer in [0, 2^63), got {value!r}")
    return value


def conflict(given: bool, option: str, other: str, why: str) -> None:
    """ValueError naming both options when ``option`` is given where ``other`` makes it meaningless."""
    if given:
        raise ValueError(f"{option} cannot be used with {other}: {why}")


def model_bytes(directory: Path) -> int:
    """Bytes of a model directory's safetensors files (what an export of it roughly writes)."""
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
