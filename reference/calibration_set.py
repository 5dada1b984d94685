"""The output of Phase I: token sequences with a source label per token (spec CAL-*).

Everything Phase II needs from calibration is here: which tokens, in which
sequences (causal context), and where each token came from, so the report can
split the objective into prompt and decode parts (the paper's Figure 2 story).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: Format tag of ``CalibrationSet.save`` (first line of the JSONL file).
FORMAT = "rac-calibration-set/1"

#: Source labels (design: text = generic corpus windows, prompt = chat-templated
#: problem statement, decode = on-policy trace of the dense model, offpolicy =
#: trace from another model or a file).
LABELS = ("text", "prompt", "decode", "offpolicy")


@dataclass
class CalibrationSet:
    """Token sequences (1-D int64 tensors) and, per token, an index into ``LABELS``.

    sequences[i][t] is token t of sequence i; labels[i][t] its source.
    ``meta`` records how the set was made (mode, seed, budget, sampling).
    ``activations`` (optional, ``collect_calibration(capture=True)``): per sequence a
    tensor [num_blocks, seq_len, hidden], the input of every decoder block at every
    position as computed while the set was made.
    ``weights`` (optional, VAR-1): per sequence a float64 tensor of the weight w_t >= 0 of every token
    in H = sum_t w_t x_t x_t^T (``rac.reference.variants`` makes them); None means 1 for every token.
    A token of weight 0 is still run through the model (it is context for the later tokens) but adds
    nothing to H.
    """

    sequences: list
    labels: list
    meta: dict = field(default_factory=dict)
    activations: list | None = None
    weights: list | None = None

    def __post_init__(self):
        if len(self.sequences) != len(self.labels):
            raise ValueError(f"labels must have one entry per sequence ({len(self.sequences)}), got {len(self.labels)}")
        for i, (ids, lab) in enumerate(zip(self.sequences, self.labels)):
            if ids.ndim != 1 or lab.shape != ids.shape:
                raise ValueError(
                    f"sequence {i}: ids and labels must be 1-D of equal length, got {tuple(ids.shape)} and "
                    f"{tuple(lab.shape)}"
                )
            if ids.dtype != torch.long or lab.dtype != torch.long:
                raise TypeError(f"sequence {i}: ids and labels must be int64 tensors")
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= len(LABELS)):
                raise ValueError(f"sequence {i}: labels must index LABELS {LABELS}")
        if self.activations is not None:
            if len(self.activations) != len(self.sequences):
                raise ValueError(
                    f"activations must have one entry per sequence ({len(self.sequences)}), got {len(self.activations)}"
                )
            for i, (ids, act) in enumerate(zip(self.sequences, self.activations)):
                if act.ndim != 3 or act.shape[1] != ids.numel():
                    raise ValueError(
                        f"sequence {i}: activations must be [num_blocks, {ids.numel()}, hidden], got {tuple(act.shape)}"
                    )

        if self.weights is not None:
            if len(self.weights) != len(self.sequences):
                raise ValueError(
                    f"weights must have one entry per sequence ({len(self.sequences)}), got {len(self.weights)}"
                )
            for i, (ids, w) in enumerate(zip(self.sequences, self.weights)):
                if not isinstance(w, torch.Tensor) or w.shape != ids.shape or not w.is_floating_point():
                    raise ValueError(f"weights: sequence {i} must have a float tensor of shape {tuple(ids.shape)}")
                if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                    raise ValueError(f"weights: sequence {i} has a weight that is negative or not finite")

    @property
    def weighted(self) -> bool:
        """True when some token's weight in H is not 1 (Phase II then weights its rows, VAR-1)."""
        return self.weights is not None and any(bool((w != 1).any()) for w in self.weights)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_tokens(self) -> int:
        return sum(int(s.numel()) for s in self.sequences)

    def count(self, label: str) -> int:
        """Number of tokens with this source label."""
        code = LABELS.index(label)
        return sum(int((lab == code).sum()) for lab in self.labels)

    def summary(self) -> dict:
        return {"sequences": len(self), "tokens": self.num_tokens, **{label: self.count(label) for label in LABELS}}

    def token_weights(self, i: int) -> torch.Tensor:
        """Weight of each token of sequence ``i`` in H: ``weights[i]`` (float64) when the set has weights
        (VAR-1), else 1 for every token (Phase II sums x x^T over every real token, whatever its source; the
        labels only split the report, P2-3). Padding is never a token of the set, so it has no weight at all."""
        if self.weights is not None:
            return self.weights[i].to(torch.float64)
        return torch.ones(self.sequences[i].numel(), dtype=torch.float64)

    def records(self) -> list:
        """One JSON-able dict per sequence: ``input_ids``, ``labels`` (the source name of every token) and
        ``token_weights``."""
        return [
            {"input_ids": ids.tolist(), "labels": [LABELS[c] for c in lab.tolist()],
             "token_weights": self.token_weights(i).tolist()}
            for i, (ids, lab) in enumerate(zip(self.sequences, self.labels))
        ]

    def save(self, path) -> Path:
        """Write the set to ``path`` as JSON lines, all or nothing (the project's atomic writer: on any error
        ``path`` is left as it was): a header ``{"format", "labels", "meta"}``, then one line per sequence
        (``records``). Activations are not saved (Phase II recomputes them from the tokens, CAL-1)."""
        from rac.reference.contract.atomic import atomic_file

        path = Path(path)
        header = {"format": FORMAT, "labels": list(LABELS), "meta": _jsonable(self.meta)}
        with atomic_file(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
                for record in self.records():
                    f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return path

    @classmethod
    def load(cls, path) -> "CalibrationSet":
        """The set ``save`` wrote; ValueError naming the file and line if it is not one."""
        path = Path(path)
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{path}: line 1 must be the header {{\"format\": \"{FORMAT}\", ...}} of a saved "
                             "calibration set")
        sequences, labels, weights = [], [], []
        for lineno, line in enumerate(lines[1:], start=2):
            try:
                row = json.loads(line)
                ids = torch.tensor(row["input_ids"], dtype=torch.long)
                lab = torch.tensor([LABELS.index(name) for name in row["labels"]], dtype=torch.long)
                weights.append(torch.tensor(row.get("token_weights", [1.0] * len(row["input_ids"])),
                                            dtype=torch.float64))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: line {lineno}: not a calibration sequence ({exc})") from None
            sequences.append(ids)
            labels.append(lab)
        weighted = any(bool((w != 1).any()) for w in weights)
        return cls(sequences, labels, meta=header.get("meta", {}), weights=weights if weighted else None)


def _jsonable(value):
    """meta as JSON: tensors as lists, anything else unknown as its str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
