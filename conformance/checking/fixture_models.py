"""The tiny fixture models for model-level tests, loaded once per process.

``fresh(name)`` is a deep copy every test may prune in place; ``tokenizer(name)`` is
shared (read-only). Loading goes through the real ``from_pretrained`` path on the
committed directories of ``fixtures/models`` (nothing is downloaded).
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch

from rac.fixtures import MODEL_NAMES, PROBLEMS, model_dir
from rac.reference.contract.models import decoder_blocks
from rac.cli.data import read_problems
from rac.cli.export import load_model, load_tokenizer

__all__ = ["MODEL_NAMES", "fresh", "linear_inputs", "problems", "same", "state", "target_weights", "tokenizer"]

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@lru_cache(maxsize=None)
def _dense(name: str):
    return load_model(model_dir(name))


def fresh(name: str):
    """A private copy of the dense fixture model ``name`` (llama, qwen2 or qwen3), in eval mode."""
    return copy.deepcopy(_dense(name))


@lru_cache(maxsize=None)
def tokenizer(name: str):
    return load_tokenizer(model_dir(name))


@lru_cache(maxsize=None)
def problems(n: int = 8) -> tuple:
    """The first ``n`` fixture problem statements."""
    return tuple(p["problem"] for p in read_problems(PROBLEMS)[:n])


def state(model) -> dict:
    """A detached copy of every parameter and buffer, to compare before/after bitwise."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN-free tensors)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def target_weights(model, blocks=None, kinds=ATTN + MLP) -> dict:
    """(block, name) -> weight of the linears a run targets."""
    out = {}
    for i, block in enumerate(decoder_blocks(model)):
        if blocks is None or i in blocks:
            for name, module in block.named_modules():
                if isinstance(module, torch.nn.Linear) and name in kinds:
                    out[i, name] = module.weight.detach()
    return out


def linear_inputs(model, calib, batch_size: int, pad_id: int) -> dict:
    """(block, linear name) -> float64 inputs [real tokens, in] of every linear of every block, from
    one ordinary forward of ``model`` over the calibration set in right-padded batches (an oracle
    that shares no code with compress: plain forward hooks on the linears)."""
    from rac.reference.compress import make_batches

    gathered: dict = {}
    hooks = []
    current = {}
    for i, block in enumerate(decoder_blocks(model)):
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                def hook(mod, args, key=(i, name)):
                    x = args[0].detach().to(torch.float64)[current["real"]]
                    gathered.setdefault(key, []).append(x)
                hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in make_batches(calib, batch_size, pad_id):
                current["real"] = batch.attention_mask.bool()
                model(input_ids=batch.ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in gathered.items()}


def calibration_set(name: str, n: int = 4):
    """A small calibration set of fixture model ``name``: the first ``n`` problems, prompt mode (no decoding)."""
    from rac.reference import collect_calibration

    return collect_calibration(fresh(name), tokenizer(name), list(problems(n)), mode="prompt")
