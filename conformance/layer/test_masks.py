"""CNT-*, NM-*, TIE-1: how many weights each group loses, and which (all methods)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given

from rac.conformance.checking.helpers import needs, needs_options, req
from rac.conformance.checking.checks import assert_counts, assert_nm, assert_nm_tie_rule, assert_tie_rule, groups
from rac.conformance.checking.strategies import layers, make_layer, nm_patterns, sparsities
from rac.reference import pruned_count
from rac.reference.contract import registry
from rac.conformance.harness import report as rep

#: every registered pruner (plug-ins included): these rules hold for all of them
METHODS = registry.names()


@req("CNT-1")
@pytest.mark.parametrize("method", METHODS)
@given(layer=layers(), sparsity=sparsities)
def test_cnt_1_exact_count_in_every_group(port, method, layer, sparsity):
    """CNT-1: exactly floor(s * |g|) weights pruned in each comparison group g of the method (CNT-2)."""
    needs(port, method)
    # SparseGPT's groups are blocks: blocksize 8 makes several on these layers where the port takes it;
    # at the default (128) one block is the layer, and the wide layers of test_sparsegpt.py check more
    options, effective = port.option_values(method, blocksize=8) if method == "sparsegpt" else ({}, {})
    _, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=sparsity, **options)
    assert_counts("CNT-1", mask, groups(method, mask.shape, effective), sparsity)


@req("CNT-2")
@pytest.mark.parametrize(
    "method,group", [("magnitude", "row"), ("magnitude", "layer"), ("wanda", "layer"), ("wanda", "row")]
)
@given(layer=layers(), sparsity=sparsities)
def test_cnt_2_group_option(port, method, group, layer, sparsity):
    """CNT-2: magnitude and Wanda take group="layer" or "row"; the count holds in the chosen group."""
    needs(port, method)
    needs_options(port, method, ("group",), "CNT-2 is about the group option; CNT-1 checks the default group")
    _, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=sparsity, group=group)
    assert_counts("CNT-2", mask, groups(method, mask.shape, {"group": group}), sparsity)


@req("CNT-3")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "sparsity,size,expected", [(0.29, 100, 29), (0.57, 100, 57), (0.7, 10, 7), (0.3, 10, 3), (0.1, 30, 3)]
)
def test_cnt_3_count_is_exact_on_the_decimal(port, method, sparsity, size, expected):
    """CNT-3: floor(s * n) on the decimal s: 0.29 of 100 prunes 29 (float arithmetic says 28.999999999999996)."""
    needs(port, method)
    # one group of `size` weights: a single row for row-grouped methods, 1 x size for the rest
    layer = make_layer("gaussian", 1, size, size + 10, seed=size)
    _, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=sparsity)  # at the defaults
    assert pruned_count(sparsity, size) == expected
    assert int((~mask).sum()) == expected, (
        f"CNT-3: {method} pruned {int((~mask).sum())} of {size} at s={sparsity}, expected {expected}"
    )


@req("NM-1")
@pytest.mark.parametrize("method", METHODS)
# dead inputs with 3:4: a pruner that zeroes dead weights up front keeps fewer than N (llm-compressor, LC-4)
@example(data=make_layer("dead_inputs", 1, 16, 17, 0), pattern="3:4")
@given(data=layers(in_multiple=8), pattern=nm_patterns)
def test_nm_1_every_group_keeps_exactly_n(port, method, data, pattern):
    """NM-1: N:M keeps exactly N of every M consecutive inputs of each row (groups aligned at 0, M, 2M, ...)."""
    needs(port, method, "nm")
    n, m = map(int, pattern.split(":"))
    weight, mask, _ = port.prune(data.W, data.H, method=method, pattern=pattern)
    assert_nm("NM-1", mask, weight, n, m)


@req("NM-2")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ["1:4", "3:4", "2:8"])
def test_nm_2_n_is_the_kept_count(port, method, pattern):
    """NM-2: N is the number KEPT (1:4 keeps 1 of 4, 3:4 keeps 3), unlike the original SparseGPT code."""
    needs(port, method, "nm")
    n, m = map(int, pattern.split(":"))
    layer = make_layer("gaussian", 4, 16, 40, seed=7)
    _, mask, _ = port.prune(layer.W, layer.H, method=method, pattern=pattern)
    assert int(mask.sum()) == layer.W.numel() * n // m, (
        f"NM-2: {pattern} kept {int(mask.sum())} of {layer.W.numel()}, expected {layer.W.numel() * n // m}"
    )


def _tied_layer():
    """Weights with many exact ties in |W| (and in |W| * sqrt(H_jj): diag H holds perfect squares)."""
    W = torch.tensor(
        [
            [1.0, -1.0, 2.0, 1.0, -2.0, 1.0, 0.5, -0.5],
            [0.5, 0.5, -0.5, 3.0, 1.0, -1.0, 1.0, 0.5],
            [2.0, -2.0, 2.0, 2.0, 1.0, 1.0, -1.0, 1.0],
        ],
        dtype=torch.float64,
    )
    H = torch.diag(torch.tensor([1.0, 1.0, 4.0, 1.0, 4.0, 1.0, 16.0, 16.0], dtype=torch.float64))
    return W, H


@req("TIE-1")
@pytest.mark.parametrize("method,score", [("magnitude", "abs"), ("wanda", "wanda")])
@pytest.mark.parametrize("sparsity", [0.25, 0.375, 0.5, 0.625])
def test_tie_1_lower_index_pruned_first(port, method, score, sparsity):
    """TIE-1: among equal scores the lower index (row-major within the group) is pruned first."""
    needs(port, method)
    W, H = _tied_layer()
    scores = W.abs() if score == "abs" else W.abs() * torch.diagonal(H).sqrt()
    _, mask, _ = port.prune(W, H, method=method, sparsity=sparsity)
    assert_tie_rule("TIE-1", mask, scores, groups(method, W.shape, {}), sparsity)


@req("TIE-1")
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:4"])
def test_tie_1_nm_lower_index_pruned_first(port, method, pattern):
    """TIE-1 for N:M: within each group of M, equal scores are pruned lower input index first."""
    needs(port, method, "nm")
    W, H = _tied_layer()
    n, m = map(int, pattern.split(":"))
    scores = W.abs() if method == "magnitude" else W.abs() * torch.diagonal(H).sqrt()
    _, mask, _ = port.prune(W, H, method=method, pattern=pattern)
    assert_nm_tie_rule("TIE-1", mask, scores, n, m)


def test_default_groups_are_documented():
    """The registry's default comparison groups are the ones docs/spec.md's CNT-2 table states."""
    spec = rep.find_spec()
    if spec is None:
        pytest.skip("docs/spec.md is not found next to this run (the CNT-2 table is read from it)")
    text = spec.read_text(encoding="utf-8")
    table = text[text.index("**CNT-2**") : text.index("**CNT-3**")]
    documented = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in registry.BUILTIN_METHODS:
            documented[cells[0]] = next(g for g in ("block", "row", "layer") if g in cells[1].split(" (")[0])
    assert set(documented) == set(registry.BUILTIN_METHODS), f"CNT-2's table lists {sorted(documented)}"
    for method, group in documented.items():
        assert registry.get(method).comparison_group() == group, f"CNT-2: {method} defaults to {group} in the spec"
