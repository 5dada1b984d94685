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
from rac.reference.data import read_problems
from rac.reference.export import load_model, load_tokenizer

__all__ = ["MODEL_NAMES", "fresh", "problems", "tokenizer", "state"]


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
