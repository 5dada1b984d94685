"""MAG-* and WANDA-*: score-based pruners without weight update."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from rac.conformance.checking.helpers import needs, req, unchanged
from rac.conformance.checking.checks import assert_selection, groups
from rac.conformance.checking.strategies import layers, nm_patterns, sparsities
from rac.conformance.checking.tolerances import score_rtol


def _prune(port, method, layer, sparsity, pattern):
    nm = pattern != "unstructured"
    return port.prune(layer.W, layer.H, method=method, sparsity=None if nm else sparsity, pattern=pattern)


def _nm_groups(shape, m):
    out_features, in_features = shape
    return [(slice(r, r + 1), slice(c, c + m)) for r in range(out_features) for c in range(0, in_features, m)]


@req("MAG-1")
@given(layer=layers(in_multiple=4), sparsity=sparsities, pattern=nm_patterns)
def test_mag_1_keeps_largest_magnitudes(port, layer, sparsity, pattern):
    """MAG-1: magnitude keeps the largest |W_ij| of each group (layer by default; every M-group for N:M)."""
    needs(port, "magnitude")
    _, mask, _ = _prune(port, "magnitude", layer, sparsity, "unstructured")
    assert_selection("MAG-1", mask, layer.W.abs(), groups("magnitude", mask.shape, {}), rtol=0.0)
    m = int(pattern.split(":")[1])
    if layer.W.shape[1] % m == 0 and port.supports("magnitude", "nm"):
        _, mask, _ = _prune(port, "magnitude", layer, None, pattern)
        assert_selection("MAG-1", mask, layer.W.abs(), _nm_groups(mask.shape, m), rtol=0.0)


@req("MAG-2")
@req("WANDA-3")
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@given(layer=layers(in_multiple=4), sparsity=sparsities)
def test_mag_2_wanda_3_kept_weights_unchanged(port, method, layer, sparsity):
    """MAG-2 / WANDA-3: magnitude and Wanda never change a kept weight (no update step)."""
    needs(port, method)
    for pattern in ("unstructured", "2:4"):
        if pattern == "2:4" and not port.supports(method, "nm"):
            continue
        weight, mask, _ = _prune(port, method, layer, sparsity, pattern)
        rule = "MAG-2" if method == "magnitude" else "WANDA-3"  # the report blames the rule named first
        assert unchanged(port, weight[mask], layer.W[mask]), \
            f"{rule}: {method} changed a kept weight ({pattern})"


@req("WANDA-1")
@req("WANDA-2")
@given(layer=layers(in_multiple=4), sparsity=sparsities, pattern=nm_patterns)
def test_wanda_1_2_keeps_largest_scores_per_row(port, layer, sparsity, pattern):
    """WANDA-1/2: keeps the largest |W_ij| * ||X_j||_2 = |W_ij| sqrt(H_jj) in each output row (or M-group)."""
    needs(port, "wanda")
    scores = layer.W.abs() * torch.diagonal(layer.H).sqrt()
    rtol = score_rtol(port.eps)
    _, mask, _ = _prune(port, "wanda", layer, sparsity, "unstructured")
    assert_selection("WANDA-1", mask, scores, groups("wanda", mask.shape, {}), rtol)
    m = int(pattern.split(":")[1])
    if layer.W.shape[1] % m == 0 and port.supports("wanda", "nm"):
        _, mask, _ = _prune(port, "wanda", layer, None, pattern)
        assert_selection("WANDA-1", mask, scores, _nm_groups(mask.shape, m), rtol)


@req("WANDA-4")
@given(layer=layers(kinds=("gaussian", "outliers", "near_duplicate")), sparsity=sparsities)
def test_wanda_4_only_diag_h_matters(port, layer, sparsity):
    """WANDA-4: Wanda reads only diag(H): replacing H by diag(diag(H)) changes nothing."""
    needs(port, "wanda")
    a = port.prune(layer.W, layer.H, method="wanda", sparsity=sparsity)
    b = port.prune(layer.W, torch.diag(torch.diagonal(layer.H)), method="wanda", sparsity=sparsity)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]), "WANDA-4: result depends on off-diagonal H"
