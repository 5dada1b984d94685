"""Ports that break the calling convention rather than the maths (PORT-2, PORT-3 in the self-test).

``misbehaves`` fails differently per method (raises, wrong shape, NaN, wrong device,
integer mask), so one short run shows that each is reported against the
requirement under test with its error, and that the run carries on. ``hangs``
never returns (stopped by --test-timeout); ``chatty_hang`` never returns and prints
all the while; ``raises`` raises on every call (PORT-9: one error, named once).
"""

from __future__ import annotations

import time

import torch

import rac.reference as ref

from . import reference_port


def _misbehaving(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    result = ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)
    weight, mask = result
    if method == "magnitude":
        raise RuntimeError("port exploded")
    if method == "wanda":
        return weight[:, :-1], mask[:, :-1]
    if method == "sparsegpt":
        weight = weight.clone()
        weight[0, 0] = float("nan")
        return weight, mask
    if pattern == "unstructured":
        return weight.to("meta"), mask  # a device the inputs were not on
    return weight, mask.to(torch.int64)


def _hanging(W, H, **kwargs):
    while True:
        time.sleep(0.05)


def _chatty_hanging(W, H, **kwargs):
    while True:
        print("still working " * 100)
        time.sleep(0.001)


def _raising(W, H, **kwargs):
    raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not be completed")


misbehaves = reference_port("misbehaves", prune_layer=_misbehaving)
chatty_hang = reference_port("chatty_hang", prune_layer=_chatty_hanging)
raises = reference_port("raises", prune_layer=_raising)
hangs = reference_port("hangs", prune_layer=_hanging)
