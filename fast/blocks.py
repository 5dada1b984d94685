"""Phase II's data path: calibration chunks, the model's front, one block's Hessians, propagation.

- ``make_chunks``: right-padded sequences, at most ``batch_size`` and ``chunk_tokens`` per chunk;
- ``block_zero_inputs`` / ``ChunkKwargs``: the hidden states entering block 0 and the keyword
  arguments every block gets, from the model's own forward (no architecture-specific code);
- ``onloaded``: modules on the compute device for a while, then back (one block at a time);
- ``StreamedBlockHessians``: float32 H per input group and token source, streamed chunk by chunk;
- ``propagate``: every chunk of the block-input store through one block.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rac.reference.calibration_set import LABELS
from rac.reference.compress import InputGroups, calibration_weighted, nonfinite_input_message, run_block

from . import alloc
from .hessian import HessianAccumulator


class _StopForward(Exception):
    pass


@dataclass
class Chunk:
    """Right-padded sequences run through a block together (CPU tensors)."""

    ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T], 1 = real token
    labels: torch.Tensor  # [B, T], index into LABELS, -1 = padding
    weights: torch.Tensor | None = None  # [B, T] float64 w_t of each token in H (VAR-1); None: all 1


def make_chunks(calibration, batch_size: int, chunk_tokens: int, pad_id: int) -> list:
    """Sequences in calibration order, at most ``batch_size`` per chunk and at most ``chunk_tokens``
    padded positions per chunk (a longer sequence gets a chunk of its own)."""
    chunks, current = [], []
    weighted = calibration_weighted(calibration)

    def flush():
        width = max(s.numel() for s, _, _ in current)
        ids = torch.full((len(current), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(current), width), dtype=torch.long)
        labels = torch.full((len(current), width), -1, dtype=torch.long)
        weights = torch.zeros((len(current), width), dtype=torch.float64) if weighted else None
        for row, (s, lab, i) in enumerate(current):
            ids[row, : s.numel()], mask[row, : s.numel()], labels[row, : s.numel()] = s, 1, lab
            if weighted:
                weights[row, : s.numel()] = calibration.token_weights(i)
        chunks.append(Chunk(ids, mask, labels, weights))
        current.clear()

    for i, (seq, lab) in enumerate(zip(calibration.sequences, calibration.labels)):
        width = max([seq.numel()] + [s.numel() for s, _, _ in current])
        if current and (len(current) >= batch_size or width * (len(current) + 1) > chunk_tokens):
            flush()
        current.append((seq, lab, i))
    if current:
        flush()
    return chunks


def front_modules(model, blocks) -> list:
    """The decoder's children that run before block 0 or are shared by all blocks (embeddings, rotary),
    i.e. every child of the module holding the blocks except the blocks themselves."""
    holder = next(m for m in model.modules() if any(child is blocks for child in m.children()))
    return [child for child in holder.children() if child is not blocks]


def block_zero_inputs(model, blocks, chunk: Chunk, device) -> tuple:
    """(hidden states entering block 0, the keyword arguments every block gets) for one chunk:
    the model's own forward, stopped at block 0 by a pre-hook."""
    captured = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured["hidden"] = hidden.detach()
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=chunk.ids.to(device), attention_mask=chunk.attention_mask.to(device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["hidden"], captured["kwargs"]


@contextlib.contextmanager
def onloaded(modules, device):
    """Move ``modules`` to ``device`` for the duration (no-op where they already are), then back."""
    homes = [next((p.device for p in m.parameters()), None) or next((b.device for b in m.buffers()), device)
             for m in modules]
    moved = [m for m, home in zip(modules, homes) if home != device]
    for m in moved:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(modules, homes):
            if m in moved:
                m.to(home)



class StreamedBlockHessians:
    """Float32 H per (input group, token source) of one block's target linears, streamed (P2-3, P2-4).

    The grouping of linears that receive the very same input tensor (q/k/v; gate/up) is the
    reference's (``rac.reference.compress.InputGroups``); what differs from the reference's
    ``BlockHessians`` is the accumulation: a float32 ``HessianAccumulator`` per group and source on
    the device, fed the chunk's rows of that source, instead of float64 sums on the CPU.
    """

    def __init__(self, block_index: int, linears: dict, device):
        self.block_index = block_index
        self.linears = linears
        self.inputs = InputGroups(linears)
        self.device = device
        self.tokens: dict = {}  # label code -> number of tokens
        self.acc: dict = {}  # (leader, label code) -> HessianAccumulator
        self._labels = None
        self._weights = None
        self._gather: dict = {}  # (width, dtype, device) -> reused buffer of ``_rows_of``

    @property
    def group_of(self) -> dict:
        return self.inputs.group_of

    def set_batch(self, chunk: Chunk) -> None:
        labels = chunk.labels
        for code in range(len(LABELS)):
            self.tokens[code] = self.tokens.get(code, 0) + int((labels == code).sum())
        self._labels = labels.to(self.device)
        self._weights = None if chunk.weights is None else chunk.weights.to(self.device)
        if self._weights is not None and type(self).accumulate is not StreamedBlockHessians.accumulate:
            # a subclass (the several-rank path's per-chunk terms) that would drop the weights
            raise ValueError("a weighted calibration set (VAR-1) is not supported with several ranks; run one process")
        self.inputs.new_batch()

    def hook(self, name):
        def fn(module, args):
            x = args[0]
            if self.inputs.leader(name, x) is None:
                self.accumulate(name, x)

        return fn

    def accumulate(self, leader: str, x: torch.Tensor) -> None:
        for code in torch.unique(self._labels).tolist():
            if code < 0:  # padding
                continue
            if (leader, code) not in self.acc:
                self.acc[leader, code] = HessianAccumulator(x.shape[-1], device=self.device)
            rows = self._labels == code
            if self._weights is None:
                self.acc[leader, code].add(self._rows_of(x, rows))
            else:  # sum_t w_t x_t x_t^T (VAR-1); weight-0 tokens are dropped by the accumulator
                self.acc[leader, code].add(x[rows], token_weights=self._weights[rows])

    def _rows_of(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """x[rows] (tokens x in) gathered into one buffer per width and dtype, reused for every chunk and source
        of the block: x[rows] allocated a fresh (tokens x in) tensor per source and chunk, and fresh memory
        page-faults on its first write (about half of the gather's time at 8,192 x 2,816 on this CPU)."""
        x2 = x.reshape(-1, x.shape[-1])
        index = rows.reshape(-1).nonzero().squeeze(1)
        key = (x2.shape[1], x2.dtype, x2.device)
        buf = self._gather.get(key)
        if buf is None or buf.shape[0] < index.numel():
            buf = self._gather[key] = alloc.empty((x2.shape[0], x2.shape[1]), x2.dtype, x2.device)
        out = buf[: index.numel()]
        torch.index_select(x2, 0, index, out=out)
        return out

    def by_source(self, leader: str) -> dict:
        """{label: float32 H} of a group; FloatingPointError naming block and module if any is not finite."""
        out = {}
        for (name, code), acc in self.acc.items():
            if name == leader:
                try:
                    out[LABELS[code]] = acc.H
                except ValueError:
                    raise FloatingPointError(nonfinite_input_message(self.block_index, leader)) from None
        return out

    def groups(self) -> dict:
        """leader -> [linear names] in the block's order."""
        return self.inputs.groups()


class ChunkKwargs:
    """kwargs[i]: the keyword arguments of every block for chunk i, made on demand by the model's front."""

    def __init__(self, model, blocks, chunks, device):
        self.model, self.blocks, self.chunks, self.device = model, blocks, chunks, device

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        return block_zero_inputs(self.model, self.blocks, self.chunks[i], self.device)[1]


def propagate(block, store, kwargs, device) -> None:
    """store[i] <- block(store[i]) for every chunk (the next block's inputs)."""
    for i in range(len(store)):
        out = run_block(block, store[i].to(device, non_blocking=True), kwargs[i])
        store[i].copy_(out)
