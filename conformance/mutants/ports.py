"""Layer-level mutants: prune_layer or hessian with one plausible bug (self-test, docs/spec.md SELF-1).

Every mutant is the reference with exactly one thing changed, so the only
reason the suite can reject it is that bug. ``MUTANTS`` lists each with the
requirement IDs the suite must name when it rejects it.
"""

from __future__ import annotations

import math
import torch

import rac.reference as ref
from rac.reference import alps, masks, sparsegpt
from rac.reference.contract import patterns
from rac.reference.contract.patterns import parse_pattern
from rac.reference.prune import PruneResult

from . import Mutant, patched, reference_port


def _port(name, prune_layer, hessian=ref.hessian):
    return reference_port(name, prune_layer=prune_layer, hessian=hessian)


# ----------------------------------------------------------------- counting and masks


def _off_by_one(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Prunes one weight more than floor(s * n) per group, as the original SparseGPT threshold does."""
    if pattern != "unstructured" or not sparsity:
        return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)
    W = torch.as_tensor(W, dtype=torch.float64)
    if method != "magnitude":
        return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)
    k = ref.pruned_count(sparsity, W.numel()) + 1
    mask = masks.prune_lowest(W.abs().reshape(-1), min(k, W.numel())).reshape(W.shape)
    return PruneResult(W.masked_fill(~mask, 0.0), mask, {})


def _nm_pruned_reading(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Reads N in N:M as the number pruned (the original SparseGPT/Wanda code's convention)."""
    if pattern != "unstructured":
        n, m = map(int, pattern.split(":"))
        pattern = f"{m - n}:{m}"
    return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)


def _float_floor(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Counts with float arithmetic: floor(0.29 * 100) = 28."""
    def float_floor(s, n):
        return math.floor(s * n)

    with patched(patterns, pruned_count=float_floor), patched(masks, pruned_count=float_floor):
        return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)


def _ties_high_index(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Breaks ties by pruning the HIGHER index first (an unstable or descending sort)."""
    original = masks.prune_lowest

    def prune_lowest_reversed(scores, k):
        flipped = original(scores.flip(0), k)
        return flipped.flip(0)

    try:
        masks.prune_lowest = prune_lowest_reversed
        return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)
    finally:
        masks.prune_lowest = original


# ----------------------------------------------------------------- Wanda


def _wanda_unsquared_norm(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Wanda with ||X_j||^2 (= H_jj) where the norm ||X_j|| (= sqrt(H_jj)) belongs."""
    if method != "wanda":
        return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)
    W = torch.as_tensor(W, dtype=torch.float64)
    H = torch.as_tensor(H, dtype=torch.float64)
    pat = parse_pattern(pattern, W.shape[1])
    scores = W.abs() * torch.diagonal(H).unsqueeze(0)
    mask = masks.select_mask(scores, pat, sparsity or 0.0, options.get("group", "row"))
    return PruneResult(W.masked_fill(~mask, 0.0), mask, {})


def _wanda_layer_group(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Wanda compared over the whole layer instead of per output row."""
    if method == "wanda" and "group" not in options:
        options = dict(options, group="layer")
    return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)


# ----------------------------------------------------------------- SparseGPT


def _sparsegpt_variant(**changes):
    """A SparseGPT port whose pieces are swapped for broken ones (restored after each call)."""

    def prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options):
        saved = {name: getattr(sparsegpt, name) for name in changes}
        try:
            for name, fn in changes.items():
                setattr(sparsegpt, name, fn)
            return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)
        finally:
            for name, fn in saved.items():
                setattr(sparsegpt, name, fn)

    return prune_layer


def _no_update(W, i, keep, U):
    W[:, i] = W[:, i].masked_fill(~keep, 0.0)


def _wrong_sign_update(W, i, keep, U):
    w = W[:, i].clone()
    q = w.masked_fill(~keep, 0.0)
    err = (w - q) / U[i, i]
    W[:, i + 1 :] += torch.outer(err, U[i, i + 1 :])
    W[:, i] = q


def _unscaled_update(W, i, keep, U):
    w = W[:, i].clone()
    q = w.masked_fill(~keep, 0.0)
    err = w - q  # missing the division by U_ii
    W[:, i + 1 :] -= torch.outer(err, U[i, i + 1 :])
    W[:, i] = q


def _unsquared_scores(W_cols, U_diag, dead):
    scores = W_cols.square() / U_diag.unsqueeze(0)  # diag(Hinv) where its square belongs
    return scores.masked_fill(dead.unsqueeze(0), 0.0)


def _absolute_dampening(H, dampening):
    return H + dampening * torch.eye(H.shape[0], dtype=H.dtype)  # not relative to mean(diag H)


def _no_dampening(H, dampening):
    return H + 1e-12 * float(torch.diagonal(H).mean()) * torch.eye(H.shape[0], dtype=H.dtype)


def _dead_not_handled(H):
    return torch.zeros(H.shape[0], dtype=torch.bool)  # dead inputs scored like live ones


def _silent_identity_fallback(H, dampening, on_failure):
    try:
        return sparsegpt.inverse_cholesky_factor(sparsegpt.damped_hessian(H, dampening)), dampening
    except torch.linalg.LinAlgError:
        return torch.eye(H.shape[0], dtype=H.dtype), dampening  # llm-compressor's silent fall-back


def _blocked_sweep_without_lazy_update(W, U, dead, pattern, sparsity, blocksize, select=masks.select_mask):
    """The original code's blocked sweep (updates inside a block column by column, the later columns
    once per block), but the once-per-block update of the columns after the block is forgotten."""
    W = W.clone()
    mask = torch.ones_like(W, dtype=torch.bool)
    diag_U = torch.diagonal(U)
    n = W.shape[1]
    for a in range(0, n, blocksize):
        b = min(a + blocksize, n)
        for i in range(a, b):
            if pattern.kind == "unstructured" and i == a:
                scores = sparsegpt.obs_scores(W[:, a:b], diag_U[a:b], dead[a:b])
                mask[:, a:b] = select(scores, pattern, sparsity, "layer")
            if pattern.kind == "nm" and i % pattern.m == 0:
                g = slice(i, i + pattern.m)
                mask[:, g] = select(sparsegpt.obs_scores(W[:, g], diag_U[g], dead[g]), pattern, sparsity, "layer")
            w = W[:, i].clone()
            err = (w - w.masked_fill(~mask[:, i], 0.0)) / U[i, i]
            W[:, i + 1 : b] -= torch.outer(err, U[i, i + 1 : b])  # inside the block only
            W[:, i] = w.masked_fill(~mask[:, i], 0.0)
        # missing: W[:, b:] -= E @ U[a:b, b:], the lazy update that hands the block's errors on
    return W, mask


def _bf16_hessian(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """SparseGPT on H rounded through bfloat16 (a Hessian stored in half precision): a perturbed H."""
    if method == "sparsegpt":
        H = torch.as_tensor(H).to(torch.bfloat16).to(torch.float64)
    return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)


# ----------------------------------------------------------------- ALPS


def _alps_variant(**changes):
    """An ALPS port whose steps are swapped for broken ones (restored after each call)."""

    def prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options):
        with patched(alps, **changes):
            return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)

    return prune_layer


def _rho_always_fast(rho, change_ratio, changed, rho_has_risen):
    """The penalty rises by 1.3 at every update whatever the support does (no slower steps, no restart)."""
    return rho * alps.RHO_FAST, True, "continue" if changed else "stop"


def _no_final_refit(H_n, WH, B0, support, iterations, rtol):
    """No conjugate-gradient refit on the final support: the projected ADMM iterate is returned."""
    return B0, 0, False


def _projection_ignoring_nm(Z, pattern, kept, dead):
    """The projection keeps the layer-wide largest k even for N:M (groups of M ignored)."""
    scores = Z.abs()
    scores[:, dead] = 0.0
    return masks.prune_lowest(scores.reshape(-1), Z.numel() - kept).reshape(Z.shape)


def _alps_stops_early(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """ALPS stops at the first update where the support change is under 3e-2 of k (100 times the rule's
    3e-4), min_iter ignored: ADMM ends while the support still moves."""
    if method == "alps":
        options = {**options, "min_iter": 0}
    with patched(alps, SETTLED_CHANGE=100 * alps.SETTLED_CHANGE):
        return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)


# ----------------------------------------------------------------- general


def _pruned_not_exactly_zero(W, H, **kwargs):
    weight, mask = ref.prune_layer(W, H, **kwargs)
    return PruneResult(torch.where(mask, weight, torch.full_like(weight, 1e-30)), mask, {})


def _modifies_input(W, H, **kwargs):
    result = ref.prune_layer(W, H, **kwargs)
    if isinstance(W, torch.Tensor):
        W.mul_(result.mask)
    return result


def _no_validation(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """Clamps a bad sparsity instead of rejecting it."""
    if sparsity is not None and not (0 <= sparsity < 1):
        sparsity = min(max(sparsity, 0.0), 0.99)
    return ref.prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)


def _hessian_order_dependent(X, weights=None):
    """An exponential moving average over tokens: later tokens weigh more."""
    X = torch.as_tensor(X, dtype=torch.float64)
    decay = 0.9 ** torch.arange(X.shape[1] - 1, -1, -1, dtype=torch.float64)
    w = decay if weights is None else decay * torch.as_tensor(weights, dtype=torch.float64)
    return (X * w) @ X.T


def _hessian_counts_padding(X, weights=None):
    """Ignores token weights, so padding (weight 0) counts as a token."""
    return ref.hessian(X)


#: name -> (port object, requirement IDs the suite must report failing, the bug)
_TABLE = {
    "off_by_one_count": (_port("off_by_one_count", _off_by_one), {"CNT-1"}, "one weight too many pruned per group"),
    "nm_reads_n_as_pruned": (
        _port("nm_reads_n_as_pruned", _nm_pruned_reading),
        {"NM-2"},
        "N:M read the other way round",
    ),
    "float_floor_count": (_port("float_floor_count", _float_floor), {"CNT-3"}, "floor(s*n) in float arithmetic"),
    "ties_high_index_first": (
        _port("ties_high_index_first", _ties_high_index),
        {"TIE-1"},
        "ties pruned higher index first",
    ),
    "wanda_squared_norm": (
        _port("wanda_squared_norm", _wanda_unsquared_norm),
        {"WANDA-1"},
        "Wanda with ||X_j||^2 instead of ||X_j||",
    ),
    "wanda_layer_group": (
        _port("wanda_layer_group", _wanda_layer_group),
        {"CNT-1"},
        "Wanda compared per layer, not per row",
    ),
    "sparsegpt_no_update": (
        _port("sparsegpt_no_update", _sparsegpt_variant(obs_update=_no_update)),
        {"SGPT-1"},
        "no OBS update",
    ),
    "sparsegpt_wrong_sign": (
        _port("sparsegpt_wrong_sign", _sparsegpt_variant(obs_update=_wrong_sign_update)),
        {"SGPT-1"},
        "OBS update with the wrong sign",
    ),
    "sparsegpt_unscaled_error": (
        _port("sparsegpt_unscaled_error", _sparsegpt_variant(obs_update=_unscaled_update)),
        {"SGPT-1"},
        "error not divided by U_ii",
    ),
    "sparsegpt_unsquared_diag": (
        _port("sparsegpt_unsquared_diag", _sparsegpt_variant(obs_scores=_unsquared_scores)),
        {"SGPT-1"},
        "diag(Hinv) used where its square belongs",
    ),
    "sparsegpt_absolute_dampening": (
        _port("sparsegpt_absolute_dampening", _sparsegpt_variant(damped_hessian=_absolute_dampening)),
        {"SGPT-2", "INV-1"},
        "dampening not relative to mean diag H",
    ),
    "sparsegpt_no_dampening": (
        _port("sparsegpt_no_dampening", _sparsegpt_variant(damped_hessian=_no_dampening)),
        {"SGPT-1"},
        "no dampening",
    ),
    "sparsegpt_dead_inputs_scored": (
        _port("sparsegpt_dead_inputs_scored", _sparsegpt_variant(dead_inputs=_dead_not_handled)),
        {"DEAD-2"},
        "dead inputs mishandled",
    ),
    "sparsegpt_silent_cholesky_fallback": (
        _port("sparsegpt_silent_cholesky_fallback", _sparsegpt_variant(factor_with_recovery=_silent_identity_fallback)),
        {"SGPT-8"},
        "a Cholesky failure silently falls back to identity",
    ),
    "sparsegpt_no_lazy_update": (
        _port("sparsegpt_no_lazy_update", _sparsegpt_variant(sparsegpt_sweep=_blocked_sweep_without_lazy_update)),
        {"SGPT-1"},
        "the block's errors are not handed on to the later columns (no lazy batch update)",
    ),
    "sparsegpt_bf16_hessian": (
        _port("sparsegpt_bf16_hessian", _bf16_hessian),
        {"SGPT-1", "SGPT-2", "SGPT-5"},
        "H rounded through bfloat16 (a perturbed Hessian)",
    ),
    "alps_rho_always_fast": (
        _port("alps_rho_always_fast", _alps_variant(update_rho=_rho_always_fast)),
        {"ALPS-2"},
        "wrong penalty schedule: rho x 1.3 at every update",
    ),
    "alps_no_final_refit": (
        _port("alps_no_final_refit", _alps_variant(conjugate_gradient_on_support=_no_final_refit)),
        {"ALPS-2", "ALPS-3"},
        "no refit on the final support",
    ),
    "alps_projection_ignores_nm": (
        _port("alps_projection_ignores_nm", _alps_variant(projection_mask=_projection_ignoring_nm)),
        {"NM-1", "ALPS-2"},
        "the projection ignores the N:M groups",
    ),
    "alps_stops_early": (
        _port("alps_stops_early", _alps_stops_early),
        {"ALPS-2"},
        "wrong stopping rule: stops while the support still moves",
    ),
    "pruned_not_exactly_zero": (
        _port("pruned_not_exactly_zero", _pruned_not_exactly_zero),
        {"GEN-2"},
        "pruned entries left at 1e-30",
    ),
    "modifies_input": (_port("modifies_input", _modifies_input), {"GEN-4"}, "W modified in place"),
    "no_validation": (_port("no_validation", _no_validation), {"GEN-5"}, "bad sparsity clamped, not rejected"),
    "hessian_token_order": (
        _port("hessian_token_order", ref.prune_layer, _hessian_order_dependent),
        {"HES-2"},
        "H depends on token order",
    ),
    "hessian_counts_padding": (
        _port("hessian_counts_padding", ref.prune_layer, _hessian_counts_padding),
        {"HES-4"},
        "padding tokens counted in H",
    ),
}

MUTANTS = {name: Mutant(port, "layer", ids, bug) for name, (port, ids, bug) in _TABLE.items()}

# ``--port rac.conformance.mutants.ports:<name>`` selects one
globals().update({name: m.port for name, m in MUTANTS.items()})
