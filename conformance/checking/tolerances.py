"""Tolerances, each derived from the port's dtype and the maths (never tuned to pass).

eps is the machine epsilon of the dtype the port declares it computes in
(CAPABILITIES["dtype"]): 2.2e-16 for float64, 1.2e-7 for float32.
"""

from __future__ import annotations


def score_rtol(eps: float) -> float:
    """Scores such as |w| * sqrt(h) carry a few roundings (sqrt, product, the input's own rounding
    to the port's dtype): relative error <= 4 eps; doubled for margin."""
    return 8 * eps


def sweep_rtol(eps: float, in_features: int, dampening: float) -> float:
    """SparseGPT weights after the OBS sweep, relative to max |W_hat|.

    Each weight receives up to in_features updates e * U[i, j]; the factorisation
    and the updates each lose about eps * cond(H_d) in relative accuracy, and with
    relative dampening d, cond(H_d) <= (trace H + lambda) / lambda = in / d + 1.
    So the error is bounded by ~ eps * in * (in / d + 1); a factor 10 covers the
    constants of the Cholesky backward-error bounds.
    """
    d = max(dampening, 1e-12)
    return 10 * eps * in_features * (in_features / d + 1)


def objective_rtol(eps: float, in_features: int) -> float:
    """An objective tr(D H D^T) recomputed from the same weights: a sum of in^2 products per row,
    error <= in * eps relative to the sum of |terms|; 10x margin."""
    return 10 * eps * in_features


#: Refit against scipy (REF-2): the issue's bound, 1e-9 relative to the scale of the
#: problem ||W X||_F^2. Both solvers are backward stable on R (cond(R) = sqrt(cond(H)));
#: the strategies keep cond(H) <= ~1e12 (near-duplicate inputs at 1e-6), so the
#: residual norms agree to ~eps * cond(R) = 2e-10 relative.
REFIT_RTOL = 1e-9
