"""What the implementations need to know about a Hugging Face causal LM, in one place.

- ``decoder_blocks(model)``: the decoder blocks f_1 ... f_L of the paper, in order;
- ``context_length(model)``: the longest sequence the model accepts;
- ``text_config(model)``: the language-model part of the config (multimodal configs nest it);
- ``forward_with_cache(model, ids, cache)``: one causal forward that extends a KV cache;
- ``eval_mode(*models)``: eval mode for a block of code, each model's training flag restored.

transformers renamed the KV-cache argument and output field from
``past_key_values`` to ``cache`` in 5.24 (the old name warns, then goes away);
``forward_with_cache`` reads the model's signature once and uses whichever name
the installed version has, so the same code runs on 4.45 through 5.x.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn


def decoder_blocks(model) -> nn.ModuleList:
    """The model's decoder blocks, in order (``model.model.layers`` for Llama / Qwen2 / Qwen3).

    Looks at ``model.get_decoder()`` (transformers' base model), then ``model.model``, for a
    non-empty ``nn.ModuleList`` named ``layers``, ``h`` or ``blocks``. ValueError if there is none:
    the architecture has no decoder blocks this implementation can recognise.
    """
    roots = []
    if hasattr(model, "get_decoder"):
        try:
            roots.append(model.get_decoder())
        except (AttributeError, NotImplementedError):
            pass
    roots += [getattr(model, "model", None), model]
    for root in roots:
        for name in ("layers", "h", "blocks"):
            candidate = getattr(root, name, None) if root is not None else None
            if isinstance(candidate, nn.ModuleList) and len(candidate) > 0:
                return candidate
    raise ValueError(
        f"model: no recognisable decoder blocks in {type(model).__name__} "
        "(looked for a non-empty nn.ModuleList .layers / .h / .blocks under get_decoder() or .model)"
    )


def text_config(model):
    """The language-model part of the config (multimodal configs nest it)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def context_length(model) -> int | None:
    """The model's context, ``config.max_position_embeddings`` (None when the config has none)."""
    return getattr(text_config(model), "max_position_embeddings", None)


@lru_cache(maxsize=None)
def cache_argument(model_class: type) -> str:
    """``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier): the KV-cache keyword."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_with_cache(model, ids: torch.Tensor, cache=None, attention_mask=None, position_ids=None):
    """One causal forward of ``ids`` ([batch, new positions]) after the positions held in ``cache``
    (None: an empty cache). Returns (logits [batch, new positions, vocab], the extended cache)."""
    kwargs = {"input_ids": ids, "use_cache": True}
    if cache is not None:
        kwargs[cache_argument(type(model))] = cache
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    out = model(**kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    return out.logits, new_cache


@contextmanager
def eval_mode(*models):
    """Put ``models`` (None entries skipped) in eval mode for the block and give each back the
    training flag it had, whatever happens inside (dropout off while calibrating or evaluating,
    and the caller's model left as it was)."""
    models = [m for m in models if m is not None]
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)
