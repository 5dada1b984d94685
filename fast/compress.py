"""Phase II, fast: the reference's layer-wise compression, streamed and onloaded (spec P2-*, FAST-*).

    compress(model, calibration, *, method, sparsity=None, pattern="unstructured",
             propagation="sequential", targets=None, blocks=None, batch_size=8, **options) -> (model, report)

Same arguments, same result and report as ``rac.reference.compress`` (the suite's model
tests run against both), computed differently:

- **H is streamed** (``HessianAccumulator``): each chunk of calibration tokens adds
  x^T x in float32 to the H of its input group and token source, then is dropped.
  The reference keeps float64 Hessians from activations it holds all at once; here only
  the block inputs of the current block are held (N x hidden, the model's dtype), and
  the peak memory of Phase II does not grow with N beyond that store (benchmarked).
- **one block on the device at a time** (``device``): with the model's weights on the
  CPU and a CUDA device, each decoder block is moved to the device, used, and moved
  back, so a model larger than GPU memory can be pruned; the block inputs stay on the
  device when they fit (else in pinned CPU memory, ``offload_activations``).
- **shared inputs share one H and one factorisation** (q/k/v; gate/up):
  ``rac.fast.prune_shared`` when available, so q, k and v pay for one Cholesky.
- **dense propagation costs one pass per block**: the pass that accumulates H already
  runs the dense block, and its outputs are the next block's dense inputs. Sequential
  propagation needs a second pass with the pruned block (as SparseGPT does).
- **resume**: with ``checkpoint_dir``, the pruned weights and report rows of every
  finished block are saved (atomically) after the block; a later call with the same
  arguments loads them, recomputes the activations up to the next block and goes on
  from there, ending exactly where an uninterrupted run ends.
- **memory is planned before the first block**: if the largest block's Hessians, weights
  and one chunk's working set cannot fit, an ``InsufficientMemoryError`` says how much is
  needed and which option to change, instead of a CUDA out-of-memory traceback midway.

Precision (docs/spec.md, PREC-*): forward passes in the model's dtype, H accumulated in
float32, pruning in float32, weights written back in the model's dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rac.reference._hf import decoder_blocks, text_config
from rac.reference.calibration_set import LABELS
from rac.reference.compress import HessianAccumulator as ReferenceHessians
from rac.reference.compress import (
    _calibration_summary,
    _check_calibration,
    check_compress_arguments,
    run_block,
)

from .hessian import HessianAccumulator


class InsufficientMemoryError(MemoryError):
    """Phase II would not fit in the memory of its device; the message says what to change."""


class CPUNotice(UserWarning):
    """Shown once when ``device="auto"`` finds no CUDA device and Phase II runs on the CPU."""


class _StopForward(Exception):
    pass


# --------------------------------------------------------------------------- chunks of calibration tokens


@dataclass
class Chunk:
    """Right-padded sequences run through a block together (CPU tensors)."""

    ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T], 1 = real token
    labels: torch.Tensor  # [B, T], index into LABELS, -1 = padding

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def make_chunks(calibration, batch_size: int, chunk_tokens: int, pad_id: int) -> list:
    """Sequences in calibration order, at most ``batch_size`` per chunk and at most ``chunk_tokens``
    padded positions per chunk (a longer sequence gets a chunk of its own)."""
    chunks, current = [], []

    def flush():
        width = max(s.numel() for s, _ in current)
        ids = torch.full((len(current), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(current), width), dtype=torch.long)
        labels = torch.full((len(current), width), -1, dtype=torch.long)
        for row, (s, lab) in enumerate(current):
            ids[row, : s.numel()], mask[row, : s.numel()], labels[row, : s.numel()] = s, 1, lab
        chunks.append(Chunk(ids, mask, labels))
        current.clear()

    for seq, lab in zip(calibration.sequences, calibration.labels):
        width = max([seq.numel()] + [s.numel() for s, _ in current])
        if current and (len(current) >= batch_size or width * (len(current) + 1) > chunk_tokens):
            flush()
        current.append((seq, lab))
    if current:
        flush()
    return chunks


# --------------------------------------------------------------------------- devices and memory


def resolve_device(device) -> torch.device:
    """"auto": the first CUDA device, else the CPU with a one-time ``CPUNotice``."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        warnings.warn("rac.fast: no CUDA device found; Phase II runs on the CPU (same results, slower)",
                      CPUNotice, stacklevel=3)
        return torch.device("cpu")
    return torch.device(device)


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` for CUDA, MemAvailable of /proc/meminfo
    for the CPU (where unreadable: unbounded)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


def plan_memory(model, targeted: dict, chunks: list, labels_used: int, dtype: torch.dtype) -> dict:
    """Bytes each part of Phase II needs at its peak (an estimate, stated per part):

    block_weights   the largest block's parameters in the model's dtype
    hessians        float32 H per distinct input and token source of the largest targeted block,
                    plus one float32 copy for the sum and one for the factorisation
    activations     the block-input store: every real and padded calibration position x hidden
    block_kwargs    one chunk's rotary tables and, for a padded chunk, its [B, 1, T, T] mask (they are
                    recomputed per chunk and block, never stored for all chunks: they would grow with N)
    chunk_work      one chunk through a block: ~ 6 x (tokens x max(hidden, intermediate)) values
                    (residual, norm, attention and MLP intermediates), plus attention scores when
                    the chunk is padded (B x heads x T^2 in float32 at worst)
    """
    config = text_config(model)
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    heads = config.num_attention_heads
    itemsize = torch.tensor([], dtype=dtype).element_size()
    blocks = decoder_blocks(model)
    block_weights = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks)
    hessians = 0
    for linears in targeted.values():
        ins = sorted({lin.in_features for lin in linears.values()})
        # shared inputs (q/k/v, gate/up) have the same in_features: one H per distinct size is a lower bound,
        # count each distinct width once per source plus two working copies of the largest
        per_block = sum(n * n * 4 for n in ins) * labels_used + 2 * max(ins) ** 2 * 4
        hessians = max(hessians, per_block)
    positions = sum(c.ids.numel() for c in chunks)
    activations = positions * hidden * itemsize
    worst = max(chunks, key=lambda c: c.ids.numel())
    b, t = worst.ids.shape
    chunk_work = 6 * b * t * max(hidden, inter) * itemsize + b * heads * t * t * 4
    # the keyword arguments every block gets, kept per chunk: rotary cos/sin, and a [B, 1, T, T] mask
    # when the chunk holds sequences of different lengths (a causal chunk of equal lengths needs none)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kwargs = max(2 * c.ids.numel() * head_dim * 4 + (c.ids.shape[0] * c.ids.shape[1] ** 2
                 if bool((c.attention_mask == 0).any()) else 0) for c in chunks)
    return {"block_weights": block_weights, "hessians": hessians, "activations": activations,
            "block_kwargs": kwargs, "chunk_work": chunk_work}


def _check_memory(plan: dict, device: torch.device, store_device: torch.device, onload: bool) -> None:
    free = free_bytes(device)
    on_device = plan["hessians"] + plan["chunk_work"] + plan["block_kwargs"] + (plan["block_weights"] if onload else 0)
    if store_device == device:
        on_device += plan["activations"]
    gib = 2**30
    if on_device > free:
        parts = ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in plan.items())
        advice = [
            "lower batch_size / chunk_tokens (smaller chunk_work)" if plan["chunk_work"] > 0.2 * free else None,
            "offload_activations=True (keep block inputs in CPU memory)"
            if store_device == device and plan["activations"] > 0.2 * free else None,
            "fewer calibration tokens (token_budget)" if plan["activations"] > 0.5 * free else None,
            "a device with more memory, or prune fewer modules per run (targets)"
            if plan["hessians"] > 0.5 * free else None,
        ]
        raise InsufficientMemoryError(
            f"Phase II needs about {on_device / gib:.2f} GiB on {device} but {free / gib:.2f} GiB are free "
            f"({parts}); try: " + "; ".join(a for a in advice if a) + "."
        )
    if store_device != device and store_device.type == "cpu" and plan["activations"] > free_bytes(store_device):
        raise InsufficientMemoryError(
            f"the block-input store needs {plan['activations'] / gib:.2f} GiB of CPU memory, "
            f"{free_bytes(store_device) / gib:.2f} GiB are free: use fewer calibration tokens (token_budget)"
        )


# --------------------------------------------------------------------------- the model's front and its blocks


def _front_modules(model, blocks) -> list:
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


# --------------------------------------------------------------------------- Hessians of one block


class BlockHessians(ReferenceHessians):
    """Float32 H per (input group, token source) of one block's target linears, streamed.

    The grouping of linears that receive the very same input tensor (q/k/v; gate/up) is the
    reference's (``rac.reference.compress.HessianAccumulator``, inherited); what changes is the
    accumulation: a float32 ``HessianAccumulator`` per group and source on the device, fed the
    chunk's rows of that source, instead of float64 sums on the CPU.
    """

    def __init__(self, block_index: int, linears: dict, device):
        super().__init__(block_index, linears)
        self.device = device
        self.acc: dict = {}  # (leader, label code) -> HessianAccumulator

    def set_batch(self, chunk: Chunk) -> None:
        super().set_batch(chunk)
        self._labels = self._labels.to(self.device)

    def accumulate(self, leader: str, x: torch.Tensor) -> None:
        for code in torch.unique(self._labels).tolist():
            if code < 0:  # padding
                continue
            if (leader, code) not in self.acc:
                self.acc[leader, code] = HessianAccumulator(x.shape[-1], device=self.device)
            self.acc[leader, code].add(x[self._labels == code])

    def by_source(self, leader: str) -> dict:
        """{label: float32 H} of a group; ValueError naming block and module if any is not finite."""
        out = {}
        for (name, code), acc in self.acc.items():
            if name == leader:
                try:
                    out[LABELS[code]] = acc.H
                except ValueError:
                    raise FloatingPointError(
                        f"block {self.block_index}, module {leader}: its input holds NaN or Inf (first seen here); "
                        "the calibration forward overflowed (e.g. float16): load the model in bfloat16 or float32"
                    ) from None
        return out

    def groups(self) -> dict:
        """leader -> [linear names] in the block's order."""
        out: dict = {}
        for name in self.linears:
            out.setdefault(self.group_of[name], []).append(name)
        return out


# --------------------------------------------------------------------------- pruning one group


def _prune_group(weights: dict, H: torch.Tensor, **prune_args) -> dict:
    """name -> PruneResult (weight, mask, .info) for linears sharing ``H``: ``rac.fast.prune_shared``,
    one validated H and one factorisation for the group (one stacked sweep where that is exact)."""
    from .prune import prune_shared

    return prune_shared(weights, H, **prune_args)


def _objective(D: torch.Tensor, H: torch.Tensor) -> float:
    """tr(D H D^T): float32 product on the device, summed in float64."""
    return float(((D @ H).double() * D.double()).sum())


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(model, calibration, args: dict) -> str:
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


# --------------------------------------------------------------------------- Phase II


def compress(
    model, calibration, *, method: str, sparsity=None, pattern: str = "unstructured",
    propagation: str = "sequential", targets=None, blocks=None, batch_size: int = 8, chunk_tokens: int = 16384,
    device="auto", offload_activations="auto", checkpoint_dir=None, restore_on_error=True, progress=None, **options,
):
    """Prune ``model`` in place, block by block; returns (model, report) as ``rac.reference.compress``.

    batch_size / chunk_tokens: sequences and padded positions per forward chunk.
    device: "auto" (CUDA if present, else the CPU with a notice), or a torch device. Blocks whose
        weights live elsewhere are moved there one at a time and moved back.
    offload_activations: keep the block inputs in (pinned) CPU memory; "auto" = only when they
        would not fit on the device next to one block's working set.
    checkpoint_dir: save each finished block there and resume from it (see the module docstring).
    restore_on_error: on any error, put back the dense weights of the blocks already pruned
        (keeps a CPU copy of each target weight as it is pruned).
    """
    _check_calibration(calibration)
    targeted = check_compress_arguments(
        model, method=method, sparsity=sparsity, pattern=pattern, propagation=propagation, targets=targets,
        blocks=blocks, batch_size=batch_size, **options,
    )
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    if offload_activations not in ("auto", True, False):
        raise ValueError(f"offload_activations must be 'auto', True or False, got {offload_activations!r}")
    device = resolve_device(device)
    all_blocks = decoder_blocks(model)
    dtype = next(model.parameters()).dtype
    pad_id = getattr(model.config, "pad_token_id", None)
    chunks = make_chunks(calibration, batch_size, chunk_tokens, 0 if pad_id is None else pad_id)
    labels_used = len({int(c) for lab in calibration.labels for c in torch.unique(lab).tolist()})
    plan = plan_memory(model, targeted, chunks, labels_used, dtype)
    onload = any(p.device != device for p in all_blocks.parameters())
    if offload_activations == "auto":
        fits = sum(plan.values()) < 0.9 * free_bytes(device)
        store_device = device if fits else torch.device("cpu")
    else:
        store_device = torch.device("cpu") if offload_activations else device
    _check_memory(plan, device, store_device, onload)

    prune_args = dict(method=method, sparsity=sparsity, pattern=pattern, **options)
    run_args = dict(prune_args, propagation=propagation, targets=targets, blocks=sorted(targeted))
    ckpt = Checkpoint(checkpoint_dir, _fingerprint(model, calibration, run_args)) if checkpoint_dir else None
    report = {
        "implementation": "rac.fast", "method": method, "pattern": pattern, "sparsity": sparsity,
        "propagation": propagation, "options": options, "blocks": sorted(targeted),
        "targets": None if targets is None else list(targets), "calibration": _calibration_summary(calibration),
        "device": str(device), "activations_on": str(store_device), "memory_plan_bytes": plan,
        "chunks": len(chunks), "layers": [],
    }
    originals: dict = {}
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        with torch.no_grad():
            report["layers"], report["resumed_blocks"] = _run(
                model, all_blocks, targeted, chunks, propagation, device, store_device, ckpt,
                originals if restore_on_error else None, progress, prune_args,
            )
    except BaseException as exc:
        with torch.no_grad():
            for linear, weight in originals.items():
                linear.weight.copy_(weight.to(linear.weight.device))
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise InsufficientMemoryError(
                f"CUDA ran out of memory during Phase II ({exc}); the plan was "
                + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in plan.items())
                + ": lower batch_size / chunk_tokens or set offload_activations=True"
            ) from exc
        raise
    finally:
        model.train(was_training)
    report["time_s"] = time.perf_counter() - started
    return model, report


def _run(model, all_blocks, targeted, chunks, propagation, device, store_device, ckpt, originals, progress, prune_args):
    """Algorithm 1 lines 8-10 over streamed chunks; returns (report rows, blocks resumed from a checkpoint)."""
    last = max(targeted)
    front = _front_modules(model, all_blocks)
    store = []
    pin = store_device.type == "cpu" and device.type == "cuda"
    with onloaded(front, device):
        for chunk in chunks:
            hidden, _ = block_zero_inputs(model, all_blocks, chunk, device)
            store.append(hidden.to(store_device).pin_memory() if pin else hidden.to(store_device))
        # The keyword arguments every block gets (rotary tables, the padding mask) are recomputed per chunk by
        # the model's own front (embedding, rotary, mask; cheap next to a block) instead of being kept for all
        # chunks: kept, they grow with N (measured: +12 MB from 8k to 32k tokens at head_dim 64).
        kwargs = _ChunkKwargs(model, all_blocks, chunks, device)
        resumed = ckpt.done if ckpt is not None else []
        rows = ckpt.rows() if ckpt is not None else []
        for index in range(last + 1):
            block = all_blocks[index]
            with onloaded([block], device):
                if index in resumed:
                    _apply_checkpoint(block, targeted[index], ckpt.load_block(index), originals, propagation, store,
                                      kwargs, device)
                elif index in targeted:
                    new_rows, weights = _prune_block(block, index, targeted[index], chunks, store, kwargs, device,
                                                     propagation, originals, prune_args, last)
                    rows += new_rows
                    if ckpt is not None:
                        ckpt.save_block(index, weights, new_rows)
                elif index < last:
                    _propagate(block, store, kwargs, device)
            if progress is not None:
                progress(index + 1, last + 1, f"block {index}")
    return rows, resumed


class _ChunkKwargs:
    """kwargs[i]: the keyword arguments of every block for chunk i, made on demand by the model's front."""

    def __init__(self, model, blocks, chunks, device):
        self.model, self.blocks, self.chunks, self.device = model, blocks, chunks, device

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        return block_zero_inputs(self.model, self.blocks, self.chunks[i], self.device)[1]


def _propagate(block, store, kwargs, device) -> None:
    """store[i] <- block(store[i]) for every chunk (the next block's inputs)."""
    for i in range(len(store)):
        out = run_block(block, store[i].to(device, non_blocking=True), kwargs[i])
        store[i].copy_(out)


def _apply_checkpoint(block, linears, saved, originals, propagation, store, kwargs, device) -> None:
    """Resume: put back a finished block's pruned weights, and bring the store to the next block's inputs
    as the uninterrupted run did (dense: through the dense block, before the pruned weights go in)."""
    if propagation == "dense":
        _propagate(block, store, kwargs, device)
    for name, linear in linears.items():
        if originals is not None:
            originals[linear] = linear.weight.detach().to("cpu", copy=True)
        linear.weight.copy_(saved[name].to(linear.weight.device, linear.weight.dtype))
    if propagation == "sequential":
        _propagate(block, store, kwargs, device)


def _prune_block(block, index, linears, chunks, store, kwargs, device, propagation, originals, prune_args, last):
    """One block: the H pass (which also gives the dense outputs), pruning group by group, then the
    sequential pass with the pruned block. Returns (report rows, {name: stored weight})."""
    hess = BlockHessians(index, linears, device)
    handles = [m.register_forward_pre_hook(hess.hook(n)) for n, m in linears.items()]
    try:
        for i, chunk in enumerate(chunks):
            hess.set_batch(chunk)
            out = run_block(block, store[i].to(device, non_blocking=True), kwargs[i])
            if propagation == "dense" and index < last:
                store[i].copy_(out)
    finally:
        for h in handles:
            h.remove()
    rows, stored = [], {}
    for leader, names in hess.groups().items():
        start = time.perf_counter()
        by_source = hess.by_source(leader)
        H = sum(by_source.values())
        dense = {n: linears[n].weight.detach().to(device, torch.float32, copy=True) for n in names}
        results = _prune_group(dense, H, **prune_args)
        seconds = (time.perf_counter() - start) / len(names)
        for name in names:
            linear = linears[name]
            weight, info = results[name][0], dict(getattr(results[name], "info", {}) or {})
            if originals is not None:
                originals[linear] = linear.weight.detach().to("cpu", copy=True)
            linear.weight.copy_(weight.to(linear.weight.device, linear.weight.dtype))
            W_hat = linear.weight.detach().to(device, torch.float32)
            stored[name] = linear.weight.detach()
            rows.append(_row(index, name, leader, hess, dense[name], W_hat, by_source, info, seconds))
    if propagation == "sequential" and index < last:
        _propagate(block, store, kwargs, device)
    return rows, stored


def _row(index, name, leader, hess, W, W_hat, by_source, info, seconds) -> dict:
    """The reference's report row (P2-7) from float32 Hessians."""
    D = W - W_hat
    per_source = {label: _objective(D, h) for label, h in by_source.items()}
    energy = {label: _objective(W, h) for label, h in by_source.items()}
    objective, total = sum(per_source.values()), sum(energy.values())
    return {
        "block": index, "name": name, "shape": list(W.shape), "hessian_group": leader,
        "tokens": {LABELS[c]: n for c, n in hess.tokens.items() if n},
        "sparsity": float((W_hat == 0).double().mean()),
        "objective": objective, "relative_objective": objective / total if total > 0 else math.nan,
        "objective_by_source": per_source,
        "relative_objective_by_source": {k: per_source[k] / e if e > 0 else math.nan for k, e in energy.items()},
        "time_s": seconds, "info": {k: v for k, v in (info or {}).items() if k != "options"},
    }
