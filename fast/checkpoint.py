"""Phase II checkpoints: the pruned weights and report rows of each finished block, to resume from.

Nothing in a checkpoint is trusted unchecked (spec RES-*, REL-*):

- ``fingerprint``: what a resume must match: the arguments (batch size and chunking included:
  they change how padding falls and so the rounding), the calibration tokens, the model's config
  and a digest of every parameter and buffer of the model *before pruning*, plus anything the
  caller adds (the ``rac`` command adds its tokenizer's files). Another model at the same path,
  other options or another calibration set are refused, naming what differs.
- every block file is written to a temporary name, fsynced and renamed, and its SHA-256 is
  recorded in ``state.json`` (written last, the same way), so a resume verifies each block before
  using it: a flipped bit is an error naming the file, never a silently wrong model;
- a lock file stops two runs from sharing a directory (a lock left by a process that no longer
  exists is taken over); a finished run marks the checkpoint complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from rac.reference.contract.atomic import pid_alive
from rac.reference.contract.models import text_config

STATE = "state.json"
LOCK = "lock"
#: Version of the layout of a checkpoint directory; a directory of another version is refused.
FORMAT = 2


def weights_digest(model) -> str:
    """BLAKE2b of every parameter and buffer of ``model`` (names, dtypes, shapes and bytes), in order.

    About 1 GB/s on one CPU core: seconds for a 7B model, against minutes of Phase II; it is what
    makes a checkpoint unusable by another model saved at the same path.
    """
    h = hashlib.blake2b(digest_size=32)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.device.type == "meta":
            raise ValueError(f"model: parameter {name} is on the meta device (offloaded without its data); "
                             "load the model with its weights to prune it")
        flat = t.reshape(-1).contiguous()
        step = max(1, (64 << 20) // max(1, flat.element_size()))
        for start in range(0, flat.numel(), step):  # 64 MB at a time: a GPU tensor is copied piecewise
            h.update(flat[start:start + step].cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint(model, calibration, args: dict, extra: dict | None = None, weights: str | None = None) -> dict:
    """What a checkpoint must match to be resumed: {part: digest} (so a mismatch can say which part).
    ``weights``: a digest of the weights computed elsewhere (streamed weights: of their files), else
    ``weights_digest(model)``."""
    calib = hashlib.sha256()
    for seq, lab in zip(calibration.sequences, calibration.labels):
        calib.update(seq.numpy().tobytes())
        calib.update(b"|")
        calib.update(lab.numpy().tobytes())
    if getattr(calibration, "weighted", False):  # token weights in H (VAR-1); an unweighted set keeps its digest
        for i in range(len(calibration)):
            calib.update(b"w")
            calib.update(calibration.token_weights(i).numpy().tobytes())
    parts = {
        "arguments": json.dumps(args, sort_keys=True, default=str),
        "calibration": calib.hexdigest(),
        "model config": hashlib.sha256(
            json.dumps(text_config(model).to_dict(), sort_keys=True, default=str).encode()).hexdigest(),
        "model weights": weights if weights is not None else weights_digest(model),
    }
    for key, value in (extra or {}).items():
        parts[str(key)] = json.dumps(value, sort_keys=True, default=str)
    return parts


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename: the file is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


    return True


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used: the message names the file and what to do."""


class Checkpoint:
    """Pruned weights and report rows of finished blocks in ``directory`` (module docstring).

    Use as a context manager (``with Checkpoint(...) as ckpt``): entering takes the lock, leaving
    releases it.
    """

    def __init__(self, directory, fingerprint: dict):
        self.dir = Path(directory)
        if self.dir.exists() and not self.dir.is_dir():
            raise CheckpointError(f"checkpoint_dir {self.dir} is a file, not a directory: choose another path")
        self.fingerprint = fingerprint
        self._locked = False
        self.state = {"format": FORMAT, "fingerprint": fingerprint, "done": [], "rows": [], "sha256": {},
                      "complete": False}

    # ------------------------------------------------------------------ lock

    def __enter__(self) -> "Checkpoint":
        self.state["fingerprint"] = self.fingerprint  # it may have been set after construction
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = self.dir / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and pid_alive(pid):
                    raise CheckpointError(
                        f"checkpoint_dir {self.dir} is in use by process {pid} ({lock}); two runs cannot share a "
                        "checkpoint directory: wait for it, or use another directory") from None
                lock.unlink(missing_ok=True)  # left by a run that no longer exists
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._locked = True
            break
        try:
            self._load_state()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._locked:
            (self.dir / LOCK).unlink(missing_ok=True)
            self._locked = False

    # ------------------------------------------------------------------ state

    def _load_state(self) -> None:
        path = self.dir / STATE
        if not path.exists():
            return
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ValueError(f"not a checkpoint state of format {FORMAT}")
            missing = [key for key in ("fingerprint", "done", "rows", "sha256") if key not in state]
            if missing:
                raise ValueError(f"it has no {', '.join(missing)}")
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{path} is not a readable checkpoint state ({exc}); delete {self.dir} (or use another "
                "checkpoint directory) to start over") from None
        theirs = state["fingerprint"]
        differ = [k for k in sorted(set(theirs) | set(self.fingerprint)) if theirs.get(k) != self.fingerprint.get(k)]
        if differ:
            raise CheckpointError(
                f"checkpoint_dir {self.dir} holds a run with another {', '.join(differ)}; resume only with the "
                "same model, calibration and options, or use another directory (or delete this one)")
        self.state = state

    @property
    def done(self) -> list:
        return list(self.state["done"])

    @property
    def complete(self) -> bool:
        return bool(self.state.get("complete"))

    def rows(self) -> list:
        return list(self.state["rows"])

    def save_block(self, index: int, weights: dict, rows: list) -> None:
        from safetensors.torch import save

        name = f"block-{index}.safetensors"
        data = save({k: v.detach().to("cpu").contiguous() for k, v in weights.items()})
        _write_atomic(self.dir / name, data)
        self.state["sha256"][name] = hashlib.sha256(data).hexdigest()
        self.state["done"].append(index)
        self.state["rows"].extend(rows)
        self._write_state()

    def mark_complete(self) -> None:
        self.state["complete"] = True
        self._write_state()

    def _write_state(self) -> None:
        _write_atomic(self.dir / STATE, json.dumps(self.state, default=str).encode())

    def load_block(self, index: int) -> dict:
        """The saved weights of block ``index``, after checking the file against its recorded SHA-256."""
        from safetensors.torch import load

        name = f"block-{index}.safetensors"
        path = self.dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing although {self.dir / STATE} lists block {index} as done; "
                                  f"delete {self.dir} to start over")
        data = path.read_bytes()
        want = self.state["sha256"].get(name)
        if want is None or hashlib.sha256(data).hexdigest() != want:
            raise CheckpointError(f"{path} does not match the checksum recorded when it was written (the file is "
                                  f"damaged or was replaced); delete {self.dir} to start over")
        try:
            return load(data)
        except Exception as exc:  # a checksummed file that safetensors cannot read: written by another version
            raise CheckpointError(f"{path} cannot be read ({exc}); delete {self.dir} to start over") from None
