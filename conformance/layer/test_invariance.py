"""INV-*: symmetries of the problem that every pruner must respect."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from rac.conformance.checking.helpers import needs, req
from rac.conformance.checking.strategies import layers, make_layer, sparsities
from rac.conformance.checking.oracles import residual
from rac.conformance.harness.measure import measure
from rac.reference.contract import registry

#: every registered pruner (plug-ins included): these rules hold for all of them
METHODS = registry.names()


@req("INV-1")
@pytest.mark.parametrize("method", METHODS)
@given(layer=layers(in_multiple=4), sparsity=sparsities, power=st.integers(-10, 10), nm=st.booleans())
def test_inv_1_scaling_h_by_a_power_of_two(port, method, layer, sparsity, power, nm):
    """INV-1: H -> 4^k H (e.g. a mean over tokens instead of a sum) gives the same mask and weights.

    Dampening is relative, and with an even power of two every floating-point
    step scales exactly (sqrt(4^k h) = 2^k sqrt(h) too, which Wanda's and ALPS's
    norms take; rounding to float32 commutes with it), so the mask must be identical
    and the weights equal: bitwise for an implementation whose every step scales with
    H; 8 eps of the port's dtype leaves room for a few roundings of a step that does not
    (say, a statistic the port computes from H in another order), far below any bug.
    """
    pattern = "2:4" if nm else "unstructured"
    needs(port, method, pattern)
    kwargs = dict(pattern=pattern, sparsity=None if nm else sparsity)
    a_w, a_m, _ = port.prune(layer.W, layer.H, method=method, **kwargs)
    b_w, b_m, _ = port.prune(layer.W, layer.H * 4.0**power, method=method, **kwargs)
    assert torch.equal(a_m, b_m), f"INV-1: mask changed when H was scaled by 4^{power} ({layer})"
    rtol = 8 * port.eps
    diff = float((a_w - b_w).abs().max()) / max(1.0, float(a_w.abs().max()))
    measure("INV-1", diff, rtol, "max |weights(H) - weights(4^k H)| / max(1, |W_hat|)")
    assert diff <= rtol, f"INV-1: weights changed ({layer})"


@req("INV-2")
@pytest.mark.parametrize("method", METHODS)
# dead inputs whose H_jj is set to an absolute 1 break the invariance (llm-compressor, LC-4): pinned
@example(layer=make_layer("dead_inputs", 1, 5, 6, 4), sparsity=0.3, scale=2.0)
@given(layer=layers(kinds=("gaussian", "outliers", "dead_inputs")), sparsity=sparsities, scale=st.floats(1e-6, 1e6))
def test_inv_2_scaling_h_by_any_positive_number(port, method, layer, sparsity, scale):
    """INV-2: H -> c H for any c > 0 gives the same objective (relative), up to rounding.

    Rounding differs with c, so a near-tie may flip; the objective of the result
    (measured on the original H) must still agree to 1e-6 relative to ||W X||^2.
    """
    needs(port, method)
    a_w, _, _ = port.prune(layer.W, layer.H, method=method, sparsity=sparsity)
    b_w, _, _ = port.prune(layer.W, layer.H * scale, method=method, sparsity=sparsity)
    energy = float(((layer.W @ layer.X) ** 2).sum())
    gap = abs(residual(layer.W, a_w, layer.X) - residual(layer.W, b_w, layer.X))
    measure("INV-2", gap / energy if energy else gap, 1e-6, "|objective(H) - objective(cH)| / ||WX||^2")
    assert gap <= 1e-6 * energy, f"INV-2: objective moved by {gap:.3g} when H was scaled by {scale} ({layer})"
