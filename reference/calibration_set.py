"""The output of Phase I: token sequences with a source label per token (spec CAL-*).

Everything Phase II needs from calibration is here: which tokens, in which
sequences (causal context), and where each token came from, so the report can
split the objective into prompt and decode parts (the paper's Figure 2 story).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    """

    sequences: list
    labels: list
    meta: dict = field(default_factory=dict)
    activations: list | None = None

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
