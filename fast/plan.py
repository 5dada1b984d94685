"""Phase II's devices and memory: where it runs and whether it fits, decided before the first block.

- ``resolve_device``: "auto" is the first CUDA device, else the CPU (with a one-time notice);
- ``plan_memory``: bytes each part of Phase II needs at its peak, stated per part;
- ``check_memory``: ``InsufficientMemoryError`` naming the part and the option to change when the plan
  does not fit, instead of a CUDA out-of-memory traceback midway.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from rac.reference.contract.models import decoder_blocks, text_config


class InsufficientMemoryError(MemoryError):
    """Phase II would not fit in the memory of its device; the message says what to change."""


class CPUNotice(UserWarning):
    """Shown once when ``device="auto"`` finds no CUDA device and Phase II runs on the CPU."""


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

    ``compress`` adds ``retained_heap`` (half of chunk_work) on a CPU where it keeps freed memory in the
    heap (``alloc.retain_freed``, spec FAST-13).
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


def check_memory(plan: dict, device: torch.device, store_device: torch.device, onload: bool) -> None:
    free = free_bytes(device)
    on_device = (plan["hessians"] + plan["chunk_work"] + plan["block_kwargs"] + plan.get("retained_heap", 0)
                 + (plan["block_weights"] if onload else 0))
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
