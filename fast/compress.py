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
- **several ranks** (``torch.distributed`` initialised with K > 1 ranks, e.g. under ``torchrun``;
  fast/distributed.py, spec DIST-*): each rank forwards and propagates its own share of the chunks
  (round-robin), sends each chunk's float32 terms x^T x to one owner rank per input group, which adds
  them in the one-process order (its H is bitwise the one-process H; one H-sized message per chunk and
  group instead of one per rank: the price of a result that does not depend on K); the owner prunes and
  broadcasts the weights and report rows; rank 0 alone writes the checkpoint. With
  one process (no process group) none of this runs and the path is the one described above.
- **memory is planned before the first block**: if the largest block's Hessians, weights
  and one chunk's working set cannot fit, an ``InsufficientMemoryError`` says how much is
  needed and which option to change, instead of a CUDA out-of-memory traceback midway.

Precision (docs/spec.md, PREC-*): forward passes in the model's dtype, H accumulated in
float32, pruning in float32, weights written back in the model's dtype.
"""

from __future__ import annotations

import contextlib
import math
import time
from functools import partial

import torch

from rac.reference.calibration_set import LABELS
from rac.reference.compress import calibration_summary, check_calibration, check_compress_arguments, run_block
from rac.reference.contract.models import decoder_blocks

from .blocks import (
    ChunkKwargs,
    StreamedBlockHessians,
    block_zero_inputs,
    front_modules,
    make_chunks,
    onloaded,
    propagate,
)
from . import alloc, distributed
from .checkpoint import Checkpoint, fingerprint
from .distributed import world
from .hessian import HessianAccumulator
from . import plan as memory
from .plan import InsufficientMemoryError, check_memory, plan_memory, resolve_device
from .prune import prune_shared
from .streamed import check_materialised


#: Column block of ``_objective``'s half of H.
OBJECTIVE_BLOCK = 256


def _objective(D: torch.Tensor, H: torch.Tensor) -> float:
    """tr(D H D^T) for a symmetric H: float32 GEMMs on the device, entries multiplied and summed in float64.

    With H = B + B^T, B = (H's strict lower triangle) + diag(H) / 2, tr(D H D^T) = 2 tr(D B D^T); B is
    taken in column blocks [j0, j1) of ``OBJECTIVE_BLOCK``, each one GEMM D[:, j0:] B[j0:, j0:j1] (B is
    zero above its diagonal): about out in^2 FLOPs instead of the 2 out in^2 of D H. Each product's
    entries times D's are multiplied in float64 (exact products of float32 values) and summed in
    float64, a block at a time (no float64 copy of the whole out x in matrices, which is fresh memory
    that page-faults on first write). In a cProfile of Phase II (1 Llama block of 1024/2816, 16,384
    tokens, 1 thread, 2026-12-02) the report rows' 28 objectives took 3.2 s of 18.4 s with D H and
    whole float64 copies; 2.2 s with D H and float64 by blocks of rows; with B, see docs/benchmarks.md."""
    n = H.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=D.device)
    for j0 in range(0, n, OBJECTIVE_BLOCK):
        j1 = min(j0 + OBJECTIVE_BLOCK, n)
        B = H[j0:, j0:j1].clone()
        B[: j1 - j0].triu_(1).neg_().add_(H[j0:j1, j0:j1]).diagonal().mul_(0.5)  # lower triangle, half diagonal
        P = D[:, j0:] @ B
        total += (P.double() * D[:, j0:j1].double()).sum()
    return float(2 * total)


# --------------------------------------------------------------------------- Phase II


def compress(
    model,
    calibration,
    *,
    method: str,
    sparsity=None,
    pattern: str = "unstructured",
    propagation: str = "sequential",
    targets=None,
    blocks=None,
    batch_size: int = 8,
    chunk_tokens: int = 16384,
    device="auto",
    offload_activations="auto",
    checkpoint_dir=None,
    fingerprint_extra=None,
    stream=None,
    restore_on_error=True,
    progress=None,
    **options,
):
    """Prune ``model`` in place, block by block; returns (model, report) as ``rac.reference.compress``.

    batch_size / chunk_tokens: sequences and padded positions per forward chunk.
    device: "auto" (CUDA if present, else the CPU with a notice), or a torch device. Blocks whose
        weights live elsewhere are moved there one at a time and moved back.
    offload_activations: keep the block inputs in (pinned) CPU memory; "auto" = only when they
        would not fit on the device next to one block's working set.
    checkpoint_dir: save each finished block there and resume from it (see the module docstring);
        a resume must match the model's weights, the calibration and every option (fast/checkpoint.py).
    fingerprint_extra: anything else a resume must match (a dict; the ``rac`` command adds its
        tokenizer's files).
    stream: a ``rac.fast.streamed.StreamedWeights`` (``.into(out_dir)``) for a model built by its
        ``skeleton()``: each block is read from the files just before it is used and written out after,
        so host memory holds one block at a time (restore_on_error does not apply: the files are untouched).
    restore_on_error: on any error, put back the dense weights of the blocks already pruned
        (keeps a CPU copy of each target weight as it is pruned).
    """
    check_calibration(calibration)
    if stream is None:
        check_materialised(model)  # offloaded to meta (a device_map): say what is needed, before any work
    targeted = check_compress_arguments(
        model,
        method=method,
        sparsity=sparsity,
        pattern=pattern,
        propagation=propagation,
        targets=targets,
        blocks=blocks,
        batch_size=batch_size,
        **options,
    )
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    if offload_activations not in ("auto", True, False):
        raise ValueError(f"offload_activations must be 'auto', True or False, got {offload_activations!r}")
    ckpt = Checkpoint(checkpoint_dir, {}) if checkpoint_dir else None  # a file there is refused before any work
    w = world()
    if w is not None and stream is not None:
        raise ValueError("stream (streamed weights, rac prune --stream-weights) is not supported with several ranks "
                         f"(torch.distributed world size {w.size}): run it in one process")
    device = resolve_device(device)
    all_blocks = decoder_blocks(model)
    dtype = next(model.parameters()).dtype
    pad_id = getattr(model.config, "pad_token_id", None)
    chunks = make_chunks(calibration, batch_size, chunk_tokens, 0 if pad_id is None else pad_id)
    labels_used = len({int(c) for lab in calibration.labels for c in torch.unique(lab).tolist()})
    mine = chunks if w is None else [chunks[i] for i in distributed.shard(chunks, w)]  # DIST-2: this rank's chunks
    plan = plan_memory(model, targeted, mine or chunks[:1], labels_used, dtype)  # a rank may have no chunk
    if alloc.retains(device):
        # freed activations the heap keeps for the next op (alloc.retain_freed): at the benchmark's shape the
        # process's peak grew by 250-350 MiB against a chunk_work of 784 MiB (docs/benchmarks.md); half of it
        plan["retained_heap"] = plan["chunk_work"] // 2
    onload = any(p.device != device for p in all_blocks.parameters())
    if offload_activations == "auto":
        fits = sum(plan.values()) < 0.9 * memory.free_bytes(device)
        store_device = device if fits else torch.device("cpu")
    else:
        store_device = torch.device("cpu") if offload_activations else device
    check_memory(plan, device, store_device, onload)

    prune_args = dict(method=method, sparsity=sparsity, pattern=pattern, **options)
    run_args = dict(prune_args, propagation=propagation, targets=targets, blocks=sorted(targeted),
                    batch_size=batch_size, chunk_tokens=chunk_tokens)
    if ckpt is not None:
        ckpt.fingerprint = fingerprint(model, calibration, run_args, fingerprint_extra,
                                       weights=stream.digest() if stream is not None else None)
    report = {
        "implementation": "rac.fast",
        "method": method,
        "pattern": pattern,
        "sparsity": sparsity,
        "propagation": propagation,
        "options": options,
        "blocks": sorted(targeted),
        "targets": None if targets is None else list(targets),
        "calibration": calibration_summary(calibration),
        "device": str(device),
        "activations_on": str(store_device),
        "memory_plan_bytes": plan,
        "chunks": len(chunks),
        "layers": [],
    }
    if w is not None:
        report["world_size"] = w.size
    local = ckpt if w is None or w.leader else None  # several ranks: rank 0 alone holds the lock and writes
    originals: dict = {}
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        # alloc.retain_freed: on a CPU, each op's output reuses freed heap memory instead of fresh pages
        # (one block's forward 2.6-2.9 s -> 2.1-2.5 s at 8,192 tokens, 1024/2816; fast/alloc.py)
        with torch.no_grad(), alloc.retain_freed(device), local if local is not None else contextlib.nullcontext():
            report["layers"], report["resumed_blocks"] = _run(
                model,
                all_blocks,
                targeted,
                mine,
                propagation,
                device,
                store_device,
                local,
                originals if restore_on_error and stream is None else None,
                progress,
                prune_args,
                stream,
                w,
                len(chunks),
            )
            if local is not None:
                local.mark_complete()
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


def _run(model, all_blocks, targeted, chunks, propagation, device, store_device, ckpt, originals, progress, prune_args,
         stream=None, w=None, total=None):
    """Algorithm 1 lines 8-10 over streamed chunks; returns (report rows, blocks resumed from a checkpoint)."""
    last = max(targeted)
    front = front_modules(model, all_blocks)
    store = []
    pin = store_device.type == "cpu" and device.type == "cuda"
    with onloaded(front, device):
        for chunk in chunks:
            hidden, _ = block_zero_inputs(model, all_blocks, chunk, device)
            store.append(hidden.to(store_device).pin_memory() if pin else hidden.to(store_device))
        # The keyword arguments every block gets (rotary tables, the padding mask) are recomputed per chunk by
        # the model's own front (embedding, rotary, mask; cheap next to a block) instead of being kept for all
        # chunks: kept, they grow with N (measured: +12 MB from 8k to 32k tokens at head_dim 64).
        kwargs = ChunkKwargs(model, all_blocks, chunks, device)
        resumed = ckpt.done if ckpt is not None else []
        rows = ckpt.rows() if ckpt is not None else []
        if w is not None:  # rank 0 read the checkpoint: every rank resumes the same blocks
            resumed, rows = distributed.broadcast((resumed, rows), 0, "checkpoint state")
        for index in range(last + 1):
            block = all_blocks[index]
            if stream is not None:
                stream.materialise(block, index)
            with onloaded([block], device):
                if index in resumed:
                    saved = ckpt.load_block(index) if ckpt is not None else None
                    if w is not None:
                        saved = distributed.broadcast(saved, 0, f"checkpointed block {index}")
                    _apply_checkpoint(block, targeted[index], saved, originals, propagation, store, kwargs, device)
                elif index in targeted:
                    new_rows, weights = (_prune_block if w is None else partial(_prune_block_distributed, w, total))(
                        block,
                        index,
                        targeted[index],
                        chunks,
                        store,
                        kwargs,
                        device,
                        propagation,
                        originals,
                        prune_args,
                        last,
                    )
                    rows += new_rows
                    if ckpt is not None:
                        ckpt.save_block(index, weights, new_rows)
                elif index < last:
                    propagate(block, store, kwargs, device)
            if stream is not None:
                stream.release(block, index)
            if progress is not None:
                progress(index + 1, last + 1, f"block {index}")
    return rows, resumed


def _apply_checkpoint(block, linears, saved, originals, propagation, store, kwargs, device) -> None:
    """Resume: put back a finished block's pruned weights, and bring the store to the next block's inputs
    as the uninterrupted run did (dense: through the dense block, before the pruned weights go in)."""
    if propagation == "dense":
        propagate(block, store, kwargs, device)
    for name, linear in linears.items():
        if originals is not None:
            originals[linear] = linear.weight.detach().to("cpu", copy=True)
        linear.weight.copy_(saved[name].to(linear.weight.device, linear.weight.dtype))
    if propagation == "sequential":
        propagate(block, store, kwargs, device)


def _prune_block(block, index, linears, chunks, store, kwargs, device, propagation, originals, prune_args, last):
    """One block: the H pass (which also gives the dense outputs), pruning group by group, then the
    sequential pass with the pruned block. Returns (report rows, {name: stored weight})."""
    hess = StreamedBlockHessians(index, linears, device)
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
        results = prune_shared(dense, H, **prune_args)  # one validated H, one factorisation per group
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
        propagate(block, store, kwargs, device)
    return rows, stored


class _ChunkTerms(StreamedBlockHessians):
    """One chunk's float32 terms x^T x per (group, source), kept apart (``terms``, in the order one process adds
    them to its accumulators) instead of added: each is what ``HessianAccumulator.add`` adds for that chunk."""

    terms: list

    def accumulate(self, leader: str, x: torch.Tensor) -> None:
        for code in torch.unique(self._labels).tolist():
            if code < 0:  # padding
                continue
            one = HessianAccumulator(x.shape[-1], device=self.device)
            one.add(x[self._labels == code])
            self.terms.append(((leader, code), one._sum))


def _prune_block_distributed(w, total, block, index, linears, chunks, store, kwargs, device, propagation, originals,
                             prune_args, last):
    """``_prune_block`` on K ranks (DIST-2): in rounds of K chunks, each rank runs its chunk through the block
    and sends each float32 term x^T x to the owner rank of its input group, which adds the terms in the
    one-process order (so its H is bitwise the one-process H); the owner prunes and computes the report
    rows; the pruned weights and rows are broadcast in the block's group order; then each rank propagates
    its own chunks. ``total``: the number of chunks of all ranks. Returns (report rows, {name: weight})."""
    hess = _ChunkTerms(index, linears, device)
    sums: dict = {}  # (leader, source) -> float32 H this rank owns, keys in the one-process order
    groups = owner = None
    handles = [m.register_forward_pre_hook(hess.hook(n)) for n, m in linears.items()]
    try:
        for j in range(-(-total // w.size)):  # round j: rank r runs global chunk j K + r (shard's round-robin)
            hess.terms = []
            if j < len(chunks):
                hess.set_batch(chunks[j])
                out = run_block(block, store[j].to(device, non_blocking=True), kwargs[j])
                if propagation == "dense" and index < last:
                    store[j].copy_(out)
            if groups is None:  # from the first forward: rank 0 has chunk 0, so it has seen every linear's input
                groups = distributed.broadcast(hess.groups() if w.leader else None, 0, f"block {index} input groups")
                owner = distributed.owners({g: distributed.group_cost(linears, n) for g, n in groups.items()},
                                           w.size)
            listing = distributed.all_gather([key for key, _ in hess.terms], f"block {index} round {j} terms")
            # every term to its group's owner, added in global chunk order (j K + 0, j K + 1, ...) and, within a
            # chunk, in the order one process adds them: the same float32 additions of the same GEMM results
            for src, keys in enumerate(listing):
                for pos, key in enumerate(keys):
                    dst = owner[key[0]]
                    if src != w.rank and dst != w.rank:
                        continue
                    if src == w.rank and dst != w.rank:
                        distributed.send(hess.terms[pos][1], dst, f"block {index} H term of {key[0]}")
                        continue
                    n = linears[key[0]].in_features
                    term = hess.terms[pos][1] if src == w.rank else torch.empty(n, n, device=device)
                    if src != w.rank:
                        distributed.recv(term, src, f"block {index} H term of {key[0]}")
                    if key not in sums:
                        sums[key] = HessianAccumulator(n, device=device)
                    sums[key]._sum += term
    finally:
        for h in handles:
            h.remove()
    hess.terms = []
    hess.acc = sums
    counts = distributed.all_gather(hess.tokens, f"block {index} token counts")
    hess.tokens = {c: sum(t.get(c, 0) for t in counts) for c in range(len(LABELS))}  # exact integer sums
    results, error = {}, None
    for leader, names in groups.items():
        if owner[leader] != w.rank or error is not None:
            continue
        try:
            start = time.perf_counter()
            by_source = hess.by_source(leader)
            H = sum(by_source.values())
            dense = {n: linears[n].weight.detach().to(device, torch.float32, copy=True) for n in names}
            pruned = prune_shared(dense, H, **prune_args)
            seconds = (time.perf_counter() - start) / len(names)
            weights, group_rows = {}, []
            for name in names:
                weights[name] = pruned[name][0].to(linears[name].weight.device, linears[name].weight.dtype)
                info = dict(getattr(pruned[name], "info", {}) or {})
                W_hat = weights[name].to(device, torch.float32)
                group_rows.append(_row(index, name, leader, hess, dense[name], W_hat, by_source, info, seconds))
            results[leader] = (weights, group_rows)
        except Exception as exc:  # sent to every rank with this group's result, raised there
            error = (type(exc).__name__, str(exc))
            results[leader] = (None, None)
    rows, stored = [], {}
    for leader, names in groups.items():
        src = owner[leader]
        weights, group_rows = results.get(leader, (None, None))
        sent = distributed.broadcast((error if src == w.rank and weights is None else None, group_rows), src,
                                     f"block {index} result of {leader}")
        distributed.raise_remote(sent[0], src)
        rows += sent[1]
        for name in names:
            linear = linears[name]
            buffer = weights[name] if src == w.rank else torch.empty_like(linear.weight)
            distributed.broadcast_tensor(buffer, src, f"block {index} weights of {name}")
            if originals is not None:
                originals[linear] = linear.weight.detach().to("cpu", copy=True)
            linear.weight.copy_(buffer)
            stored[name] = linear.weight.detach()
    if propagation == "sequential" and index < last:
        propagate(block, store, kwargs, device)
    return rows, stored


def _row(index, name, leader, hess, W, W_hat, by_source, info, seconds) -> dict:
    """The reference's report row (P2-7) from float32 Hessians."""
    D = W - W_hat
    per_source = {label: _objective(D, h) for label, h in by_source.items()}
    energy = {label: _objective(W, h) for label, h in by_source.items()}
    objective, total = sum(per_source.values()), sum(energy.values())
    return {
        "block": index,
        "name": name,
        "shape": list(W.shape),
        "hessian_group": leader,
        "tokens": {LABELS[c]: n for c, n in hess.tokens.items() if n},
        "sparsity": float((W_hat == 0).double().mean()),
        "objective": objective,
        "relative_objective": objective / total if total > 0 else math.nan,
        "objective_by_source": per_source,
        "relative_objective_by_source": {k: per_source[k] / e if e > 0 else math.nan for k, e in energy.items()},
        "time_s": seconds,
        "info": {k: v for k, v in (info or {}).items() if k != "options"},
    }
