"""GEN-*: the shared interface prune_layer(W, H, *, method, sparsity, pattern, **options)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rac.conformance.checking.helpers import needs, req, unchanged
from rac.conformance.checking.checks import assert_pruned_zero
from rac.conformance.checking.strategies import layers, make_layer, sparsities
from rac.conformance.checking.tolerances import replay_rtol
from rac.reference.contract import registry

#: every registered pruner (plug-ins included): these rules hold for all of them
METHODS = registry.names()


@req("GEN-1")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_gen_1_output_form(port, method, pattern):
    """GEN-1: returns (weight, mask): weight float of W's shape, mask bool of W's shape, all finite."""
    needs(port, method, pattern)
    layer = make_layer("gaussian", 6, 16, 40, seed=1)
    sparsity = 0.5 if pattern == "unstructured" else None
    weight, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=sparsity, pattern=pattern)
    assert torch.isfinite(weight).all(), "GEN-1: weight has NaN or Inf"
    assert 0 < int(mask.sum()) < mask.numel(), "GEN-1: a 50% mask must keep some and prune some"


@req("GEN-2")
@pytest.mark.parametrize("method", METHODS)
@given(layer=layers(in_multiple=4), sparsity=sparsities, nm=st.booleans())
def test_gen_2_pruned_entries_exactly_zero(port, method, layer, sparsity, nm):
    """GEN-2: every entry with mask False is exactly 0.0 in the returned weight."""
    pattern = "2:4" if nm else "unstructured"
    needs(port, method, pattern)
    weight, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=None if nm else sparsity, pattern=pattern)
    assert torch.isfinite(weight).all(), f"GEN-2: non-finite weights for {layer}"
    assert_pruned_zero("GEN-2", weight, mask)


@req("GEN-3")
@pytest.mark.parametrize("method", METHODS)
@given(layer=layers())
def test_gen_3_sparsity_zero_returns_w_unchanged(port, method, layer):
    """GEN-3: sparsity 0 keeps every weight and returns W exactly."""
    needs(port, method)
    weight, mask, _ = port.prune(layer.W, layer.H, method=method, sparsity=0.0)
    assert bool(mask.all()), "GEN-3: sparsity 0 must keep every weight"
    assert unchanged(port, weight, layer.W), "GEN-3: sparsity 0 must return W unchanged"


@req("GEN-4")
@pytest.mark.parametrize("method", METHODS)
def test_gen_4_inputs_not_modified(port, method):
    """GEN-4: the caller's W and H are not modified in place."""
    needs(port, method)
    layer = make_layer("dead_inputs", 5, 16, 30, seed=3)
    W, H = layer.W.clone(), layer.H.clone()
    port.impl.prune_layer(W, H, method=method, sparsity=0.5, pattern="unstructured")
    assert torch.equal(W, layer.W), "GEN-4: W was modified in place"
    assert torch.equal(H, layer.H), "GEN-4: H was modified in place"


@req("GEN-7")
@pytest.mark.parametrize("method", METHODS)
def test_gen_7_deterministic(port, method):
    """GEN-7: the same inputs give bitwise the same weight and mask."""
    needs(port, method)
    layer = make_layer("mixed", 7, 24, 12, seed=5)
    a = port.prune(layer.W, layer.H, method=method, sparsity=0.6)
    b = port.prune(layer.W, layer.H, method=method, sparsity=0.6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "GEN-7: two identical calls differ"


def _bad_cases():
    layer = make_layer("gaussian", 4, 8, 20, seed=0)
    W, H = layer.W, layer.H
    asym = H.clone()
    asym[0, 1] += 1.0 + H.abs().max()
    nan_W = W.clone()
    nan_W[1, 2] = float("nan")
    inf_H = H.clone()
    inf_H[3, 3] = float("inf")
    neg_H = H.clone()
    neg_H[2, 2] = -1.0
    W6 = make_layer("gaussian", 4, 6, 20, seed=0)
    # wider than a 256-row block: an implementation that checks symmetry by blocks must check the last one too
    wide = make_layer("gaussian", 4, 300, 20, seed=0)
    asym_last = wide.H.clone()
    asym_last[299, 260] += 1.0 + wide.H.abs().max()  # both (299, 260) and (260, 299) lie past row 256
    return [
        ("sparsity below 0", dict(W=W, H=H, sparsity=-0.1), "sparsity"),
        ("sparsity 1", dict(W=W, H=H, sparsity=1.0), "sparsity"),
        ("sparsity above 1", dict(W=W, H=H, sparsity=1.5), "sparsity"),
        ("sparsity NaN", dict(W=W, H=H, sparsity=float("nan")), "sparsity"),
        ("sparsity missing", dict(W=W, H=H, sparsity=None), "sparsity"),
        ("sparsity given with N:M", dict(W=W, H=H, sparsity=0.5, pattern="2:4"), "sparsity"),
        ("unknown method", dict(W=W, H=H, sparsity=0.5, method="obc"), "method"),
        ("pattern N >= M", dict(W=W, H=H, pattern="4:2"), "pattern"),
        ("pattern N == M", dict(W=W, H=H, pattern="4:4"), "pattern"),
        ("pattern N == 0", dict(W=W, H=H, pattern="0:4"), "pattern"),
        ("pattern malformed", dict(W=W, H=H, pattern="2-4"), "pattern"),
        ("pattern unknown word", dict(W=W, H=H, pattern="structured"), "pattern"),
        ("in not divisible by M", dict(W=W6.W, H=W6.H, pattern="2:4"), "pattern"),
        ("W not 2-D", dict(W=W[0], H=H, sparsity=0.5), "W"),
        ("H shape mismatch", dict(W=W, H=H[:6, :6], sparsity=0.5), "H"),
        ("H not square", dict(W=W, H=H[:, :6], sparsity=0.5), "H"),
        ("H not symmetric", dict(W=W, H=asym, sparsity=0.5), "H"),
        ("H not symmetric in its last row", dict(W=wide.W, H=asym_last, sparsity=0.5), "H"),
        ("H negative diagonal", dict(W=W, H=neg_H, sparsity=0.5), "H"),
        ("NaN in W", dict(W=nan_W, H=H, sparsity=0.5), "W"),
        ("Inf in H", dict(W=W, H=inf_H, sparsity=0.5), "H"),
    ]


@req("GEN-5")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_gen_5_bad_input_names_the_argument(port, method, case):
    """GEN-5: bad input raises ValueError or TypeError whose message names the argument."""
    name, kwargs, argument = case
    needs(port, method)
    kwargs = dict(kwargs)
    kwargs.setdefault("method", method)
    kwargs.setdefault("pattern", "unstructured")
    W, H = kwargs.pop("W"), kwargs.pop("H")
    with pytest.raises((ValueError, TypeError)) as info:
        port.impl.prune_layer(W.clone(), H.clone(), **kwargs)
    assert argument in str(info.value), f"GEN-5 ({name}): the error must name {argument!r}; got: {info.value}"


@req("GEN-5")
@pytest.mark.parametrize("method", METHODS)
def test_gen_5_unknown_option_is_named(port, method):
    """GEN-5: an unknown keyword option is a TypeError that names it (never silently ignored)."""
    needs(port, method)
    layer = make_layer("gaussian", 4, 8, 20, seed=0)
    with pytest.raises(TypeError) as info:
        port.impl.prune_layer(layer.W, layer.H, method=method, sparsity=0.5, blocksise=64)
    assert "blocksise" in str(info.value), f"GEN-5: the error must name the option; got: {info.value}"


@req("GEN-6")
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("kind", ["gaussian", "outliers"])
def test_gen_6_accepted_asymmetry_is_symmetrised(port, pattern, kind):
    """GEN-6: an H within the symmetry tolerance is used as (H + H^T)/2.

    The asymmetry sits in the upper triangle only, 4e-6 * max|H| (under GEN-5's 1e-5 bound), so a
    port that reads one triangle (a Cholesky reads the lower one) or the raw matrix sees a
    different H, off by 2e-6 relative, than one that symmetrises; SparseGPT's result moves with H.
    """
    needs(port, "sparsegpt", "nm" if pattern != "unstructured" else "unstructured")
    layer = make_layer(kind, 6, 24, 40, seed=5)
    H = layer.H
    bump = torch.triu(torch.rand(H.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64), 1)
    H_asym = H + 4e-6 * float(H.abs().max()) * bump
    sparsity = 0.5 if pattern == "unstructured" else None
    a_w, a_m, _ = port.prune(layer.W, H_asym, method="sparsegpt", sparsity=sparsity, pattern=pattern)
    b_w, b_m, _ = port.prune(layer.W, (H_asym + H_asym.T) / 2, method="sparsegpt", sparsity=sparsity, pattern=pattern)
    assert torch.equal(a_m, b_m), "GEN-6: the mask differs from the one of the symmetrised H"
    # Both calls see the same symmetric matrix up to one rounding of the port's dtype per entry, at the
    # port's default dampening (0.01): the replay bound of SGPT-1 covers that difference.
    rtol = replay_rtol(port.eps, (H_asym + H_asym.T) / 2, 0.01)
    diff = float((a_w - b_w).abs().max()) / max(1.0, float(b_w.abs().max()))
    assert diff <= rtol, f"GEN-6: weights differ by {diff:.3g} (> {rtol:.3g}) from those of the symmetrised H"
