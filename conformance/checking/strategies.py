"""Hypothesis strategies for layers that are hard, not only easy.

A drawn case is a ``Layer``: weights W (out, in), calibration activations X
(in, N) and H = X X^T, built by ``rac.fixtures.layers.make_layer`` (its docstring
lists the kinds). Its ``repro`` string rebuilds it exactly, so every failure
comes with a one-line reproduction.
"""

from __future__ import annotations

from hypothesis import strategies as st

from rac.fixtures.layers import KINDS, Layer, llm_like_layer, make_layer  # noqa: F401  (re-exported for the tests)


@st.composite
def layers(draw, *, kinds=KINDS, max_out: int = 12, min_in: int = 2, max_in: int = 40, in_multiple: int = 1):
    """A Layer with in_features a multiple of ``in_multiple`` (for N:M) in [min_in, max_in]."""
    kind = draw(st.sampled_from(kinds))
    out_features = draw(st.integers(1, max_out))
    lo = max(1, -(-min_in // in_multiple))
    in_features = in_multiple * draw(st.integers(lo, max(lo, max_in // in_multiple)))
    tokens = draw(st.integers(1, 3 * in_features + 8))
    if kind not in ("rank_deficient", "mixed"):
        tokens = max(tokens, in_features + 1)
    seed = draw(st.integers(0, 2**31 - 1))
    return make_layer(kind, out_features, in_features, tokens, seed)


sparsities = st.sampled_from([0.1, 0.25, 0.29, 0.3, 0.5, 0.6, 0.7, 0.9]) | st.floats(0.01, 0.95)
nm_patterns = st.sampled_from(["2:4", "1:4", "3:4", "4:8", "1:2", "2:8"])
