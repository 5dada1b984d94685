"""All-or-nothing writes: an output is either the complete new one or what was there before.

Every writer of the project (``export_pruned``, ``rac experiment``, ``rac eval --json``,
``rac diagnose``, ``rac calibrate``, ``CalibrationSet.save``)
goes through these two context managers: the content is written under a hidden
temporary name in the destination's folder (same file system, so the final ``os.replace`` is one
atomic rename), and on any error, Ctrl-C included, the temporary is removed and the destination
is left as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def _temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` carrying this process's id, so a later run can tell a stale one."""
    return path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_partials(path: Path) -> None:
    """Remove what a killed run (SIGKILL: no cleanup ran) left beside ``path``: temporaries whose process is gone."""
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        pid = stale.name.rsplit(".partial-", 1)[1].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_directory_target(out, *, overwrite: bool, hint: str = "pass --overwrite") -> Path:
    """``out`` as a Path, or FileExistsError naming ``out`` if it exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"out: {out} already exists; choose another path or {hint}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: {out} exists and is not a directory; it will not be replaced")
    return out


@contextmanager
def atomic_directory(out, *, overwrite: bool = False, hint: str = "pass --overwrite"):
    """Yield an empty temporary directory; on success it becomes ``out`` (an old ``out`` is
    removed only once the new one is in place)."""
    out = check_directory_target(out, overwrite=overwrite, hint=hint)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = _temporary_name(out)
    try:
        tmp.mkdir()
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path):
    """Yield a temporary path in ``path``'s folder to write to; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
