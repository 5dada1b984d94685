"""A magnitude and Wanda port in numpy alone, written from docs/porting.md (the worked example).

    pytest conformance --level layer --port rac.conformance.examples.numpy_port

Layer level only: ``prune_layer`` for magnitude and Wanda (unstructured and N:M,
group "layer" or "row") and ``hessian``. It receives the suite's torch tensors
and reads them with ``np.asarray``; it returns numpy arrays, which the suite accepts.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

CAPABILITIES = {
    "name": "numpy-example",
    "methods": ("magnitude", "wanda"),
    "patterns": ("unstructured", "nm"),
    "dtype": "float64",
    "options": {"magnitude": ("group",), "wanda": ("group",)},
    "levels": ("layer",),
}

METHODS = ("magnitude", "wanda")
DEFAULT_GROUP = {"magnitude": "layer", "wanda": "row"}


def hessian(X, weights=None):
    """H = sum_t w_t x_t x_t^T (X is in x tokens; weight 0 = a padding token)."""
    X = _matrix(X, "X")
    if weights is None:
        return X @ X.T
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (X.shape[1],):
        raise ValueError(f"weights must have one entry per token ({X.shape[1]}), got shape {w.shape}")
    return (X * w) @ X.T


def prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Returns (weight, mask): pruned entries exactly 0, mask True = kept."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    group = options.pop("group", DEFAULT_GROUP[method])
    if options:
        raise TypeError(f"unknown option(s) {sorted(options)} for method {method!r}; known: ['group']")
    if group not in ("layer", "row"):
        raise ValueError(f"group must be 'layer' or 'row', got {group!r}")
    W = _matrix(W, "W")
    H = _matrix(H, "H")
    out_f, in_f = W.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"H must have shape ({in_f}, {in_f}) to match W's {in_f} inputs, got {H.shape}")
    scale = np.abs(H).max() if H.size else 0.0
    if np.abs(H - H.T).max(initial=0.0) > 1e-5 * scale:
        raise ValueError("H must be symmetric (|H - H^T| <= 1e-5 max|H|)")
    if (np.diagonal(H) < 0).any():
        raise ValueError("H must have a non-negative diagonal")
    nm = _parse_pattern(pattern, in_f)
    if nm is None:
        if sparsity is None:
            raise ValueError("sparsity is required for pattern='unstructured' (a number in [0, 1))")
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or math.isnan(sparsity) \
                or not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    elif sparsity is not None:
        raise ValueError(f"sparsity must be None with an N:M pattern ({pattern!r}), got {sparsity!r}")

    if method == "magnitude":
        scores = np.abs(W)
    else:  # Wanda: |W_ij| * ||X_j|| = |W_ij| * sqrt(H_jj); only diag(H) is read
        scores = np.abs(W) * np.sqrt(np.diagonal(H))[None, :]

    if nm is not None:
        n, m = nm
        mask = ~_lowest(scores.reshape(-1, m), m - n).reshape(out_f, in_f)
    elif group == "layer":
        k = _count(sparsity, W.size)
        mask = ~_lowest(scores.reshape(1, -1), k).reshape(out_f, in_f)
    else:
        mask = ~_lowest(scores, _count(sparsity, in_f))
    weight = np.where(mask, W, 0.0)  # a new array: the caller's W is not touched
    return weight, mask


def _matrix(A, name):
    A = np.asarray(A, dtype=np.float64).copy()  # a copy: np.asarray shares a CPU tensor's memory
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {A.ndim}-D")
    if not np.isfinite(A).all():
        raise ValueError(f"{name} holds NaN or Inf")
    return A


def _parse_pattern(pattern, in_f):
    """None for unstructured, (n, m) for 'N:M' (N kept of every M)."""
    if pattern == "unstructured":
        return None
    if not isinstance(pattern, str) or pattern.count(":") != 1:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M', got {pattern!r}")
    a, b = pattern.split(":")
    if not (a.isdigit() and b.isdigit()):
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' with integers, got {pattern!r}")
    n, m = int(a), int(b)
    if not 0 < n < m:
        raise ValueError(f"pattern 'N:M' needs 0 < N < M, got {pattern!r}")
    if in_f % m:
        raise ValueError(f"pattern {pattern!r}: the {in_f} inputs are not divisible by M = {m}")
    return n, m


def _count(sparsity, n):
    """floor(s * n) on the decimal written (0.29 of 100 is 29)."""
    return int(Fraction(repr(float(sparsity))) * n)


def _lowest(scores, k):
    """Per row of ``scores``: True at the k lowest, ties to the lower index (stable ascending sort)."""
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    pruned = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(pruned, order, True, axis=1)
    return pruned
