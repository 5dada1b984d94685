"""DEAD-*: inputs that never fire on the calibration set (H_jj = 0)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from rac.conformance.checking.helpers import needs, req
from rac.conformance.checking.checks import assert_counts, groups
from rac.conformance.checking.strategies import layers, make_layer, sparsities
from rac.reference.contract import registry


@req("DEAD-1")
@pytest.mark.parametrize("method", registry.names())
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_dead_1_all_inputs_dead(port, method, pattern):
    """DEAD-1: even H = 0 (no input ever fires) gives a finite, valid result, not a crash."""
    needs(port, method, "nm" if pattern != "unstructured" else pattern)
    W = make_layer("gaussian", 3, 8, 10, seed=4).W
    H = torch.zeros(8, 8, dtype=torch.float64)
    sparsity = 0.5 if pattern == "unstructured" else None
    weight, mask, _ = port.prune(W, H, method=method, sparsity=sparsity, pattern=pattern)
    assert torch.isfinite(weight).all(), "DEAD-1: non-finite weights with H = 0"
    if pattern == "unstructured":
        assert_counts("DEAD-1", mask, groups(method, mask.shape, {}), 0.5)


@req("DEAD-2")
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "alps"])
@given(layer=layers(kinds=("dead_inputs", "mixed")), sparsity=sparsities)
def test_dead_2_dead_weights_go_first(port, method, layer, sparsity):
    """DEAD-2: methods that read H prune every weight on a dead input before any live weight of the group."""
    needs(port, method)
    weight, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=sparsity)
    assert torch.isfinite(weight).all()
    dead = torch.diagonal(layer.H) == 0
    for g in groups(method, mask.shape, {}):
        sub_mask, sub_dead = mask[g], dead[g[1]].expand_as(mask[g])
        pruned_live = bool((~sub_mask & ~sub_dead).any())
        kept_dead = bool((sub_mask & sub_dead).any())
        assert not (pruned_live and kept_dead), (
            f"DEAD-2: {method} kept a dead-input weight while pruning a live one ({layer})"
        )
