"""HES-*: the calibration statistic H = sum_t w_t x_t x_t^T (skipped for ports without ``hessian``)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from rac.conformance.checking.helpers import not_applicable, req
from rac.conformance.harness.measure import measure
from rac.conformance.checking.strategies import layers


def _needs_hessian(port):
    if not port.has_hessian:
        not_applicable(f"port {port.name} has no hessian(X, weights)")


def _integer_tokens(seed: int, in_features: int, tokens: int) -> torch.Tensor:
    """Small integer activations: every product and partial sum is exact in float32 and float64,
    so H does not depend on summation order and equality can be exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, (in_features, tokens), generator=g).to(torch.float64)


def _assert_proportional(req_id, H_port, H_true, rtol):
    """Ports may normalise H (a mean instead of a sum); the spec requires H up to a positive scale."""
    if float(H_true.abs().max()) == 0:
        assert float(H_port.abs().max()) == 0, f"{req_id}: H must be 0 when every token has weight 0"
        return
    c = float(torch.trace(H_port) / torch.trace(H_true))
    assert c > 0, f"{req_id}: H must be a positive multiple of sum_t w_t x_t x_t^T (scale {c})"
    err = float((H_port / c - H_true).abs().max())
    measure(req_id, err / float(H_true.abs().max()), rtol, "max |H / c - sum w x x^T| / max |H|")
    assert err <= rtol * float(H_true.abs().max()), f"{req_id}: H differs from c * sum_t w_t x_t x_t^T by {err:.3g}"


@req("HES-1")
@given(layer=layers(kinds=("gaussian", "outliers", "dead_inputs")), data=st.data())
def test_hes_1_weighted_sum_of_outer_products(port, layer, data):
    """HES-1: H = sum_t w_t x_t x_t^T (up to one positive scale), with optional per-token weights."""
    _needs_hessian(port)
    N = layer.X.shape[1]
    # Token weights are 0 (a masked token) or of order one, as calibration weights are. Weights near
    # float64's underflow (hypothesis found w = 5e-324) are 0 in a float32 port: that is underflow
    # of the input, not a wrong H, so they are not drawn.
    weight = st.one_of(st.just(0.0), st.floats(1e-3, 4))
    w = torch.tensor(data.draw(st.lists(weight, min_size=N, max_size=N)), dtype=torch.float64)
    H_true = sum(w[t] * torch.outer(layer.X[:, t], layer.X[:, t]) for t in range(N))
    # a sum of N rank-one terms: error <= N * eps * sum |terms| <= N * eps * max|H| * (dynamic range);
    # 4N eps of the port's dtype relative to max|H| with a 10x margin.
    _assert_proportional("HES-1", port.hessian(layer.X, w), H_true, rtol=40 * N * port.eps)


@req("HES-2")
@given(seed=st.integers(0, 2**31 - 1), in_features=st.integers(1, 24), tokens=st.integers(1, 80))
def test_hes_2_token_order_does_not_matter(port, seed, in_features, tokens):
    """HES-2: permuting the tokens (columns of X) gives exactly the same H (integer data: sums are exact)."""
    _needs_hessian(port)
    X = _integer_tokens(seed, in_features, tokens)
    perm = torch.randperm(tokens, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(port.hessian(X), port.hessian(X[:, perm])), "HES-2: H depends on token order"


@req("HES-3")
@given(seed=st.integers(0, 2**31 - 1), in_features=st.integers(1, 24), tokens=st.integers(1, 60))
def test_hes_3_duplicating_tokens_doubles_weight(port, seed, in_features, tokens):
    """HES-3: every token twice = every token with weight 2 = H proportional to the original."""
    _needs_hessian(port)
    X = _integer_tokens(seed, in_features, tokens)
    H_dup = port.hessian(torch.cat([X, X], dim=1))
    H_w2 = port.hessian(X, torch.full((tokens,), 2.0, dtype=torch.float64))
    assert torch.equal(H_dup, H_w2), "HES-3: duplicated tokens and weight 2 must give the same H"
    _assert_proportional("HES-3", H_dup, X @ X.T, rtol=0.0 + 4 * port.eps)


@req("HES-4")
@given(seed=st.integers(0, 2**31 - 1), in_features=st.integers(1, 16), tokens=st.integers(2, 60))
def test_hes_4_zero_weight_tokens_contribute_nothing(port, seed, in_features, tokens):
    """HES-4: a token of weight 0 (padding) changes nothing: same H as dropping it."""
    _needs_hessian(port)
    X = _integer_tokens(seed, in_features, tokens)
    keep = torch.rand(tokens, generator=torch.Generator().manual_seed(seed)) < 0.6
    keep[0] = True
    w = keep.to(torch.float64)
    # padding positions may hold anything, even huge values: they must not leak in
    X_padded = X.clone()
    X_padded[:, ~keep] = 1e6
    assert torch.equal(port.hessian(X_padded, w), port.hessian(X[:, keep])), "HES-4: zero-weight tokens leaked into H"
