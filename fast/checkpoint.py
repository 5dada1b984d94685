"""Phase II checkpoints: the pruned weights and report rows of each finished block, to resume from.

One safetensors file per block, written to a temporary name and renamed; ``state.json`` last, so
it never names a block whose weights are not complete. A checkpoint is resumed only by a run
whose ``fingerprint`` (arguments, calibration tokens, model config) matches.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rac.reference.contract.models import text_config


def fingerprint(model, calibration, args: dict) -> str:
    """What a checkpoint must match to be resumed: the arguments, the calibration tokens, the model's config
    and its target weights before pruning are not hashed (too costly); the config and arguments are."""
    h = hashlib.sha256()
    h.update(json.dumps(args, sort_keys=True, default=str).encode())
    h.update(json.dumps(text_config(model).to_dict(), sort_keys=True, default=str).encode())
    for seq, lab in zip(calibration.sequences, calibration.labels):
        h.update(seq.numpy().tobytes())
        h.update(lab.numpy().tobytes())
    return h.hexdigest()


class Checkpoint:
    """Pruned weights and report rows of finished blocks in ``directory`` (one safetensors file per
    block, written to a temporary name and renamed; ``state.json`` last, so it never names a block
    whose weights are not complete)."""

    def __init__(self, directory, fingerprint: str):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = {"fingerprint": fingerprint, "done": [], "rows": []}
        path = self.dir / "state.json"
        if path.exists():
            state = json.loads(path.read_text())
            if state.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"checkpoint_dir {self.dir} holds a run with other arguments, calibration or model; "
                    "use another directory or delete it"
                )
            self.state = state

    @property
    def done(self) -> list:
        return list(self.state["done"])

    def rows(self) -> list:
        return list(self.state["rows"])

    def save_block(self, index: int, weights: dict, rows: list) -> None:
        from safetensors.torch import save_file

        tmp = self.dir / f".block-{index}.safetensors.tmp"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp))
        os.replace(tmp, self.dir / f"block-{index}.safetensors")
        self.state["done"].append(index)
        self.state["rows"].extend(rows)
        tmp = self.dir / ".state.json.tmp"
        tmp.write_text(json.dumps(self.state, default=str))
        os.replace(tmp, self.dir / "state.json")

    def load_block(self, index: int) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.dir / f"block-{index}.safetensors"))
