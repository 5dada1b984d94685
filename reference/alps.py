"""ALPS: ADMM with a rho-update scheme, then conjugate gradient on the support.

Reference (float64, CPU) implementation of Meng, Behdin, Wang, Mazumder,
"ALPS: Improved optimization for highly sparse one-shot pruning for large
language models" (NeurIPS 2024), following the authors' code
(github.com/mazumder-lab/ALPS, ``ALPS_prune.ALPS_admm``) step by step.

Notation. Rows are outputs, as in ``torch.nn.Linear`` (the paper writes the
transposes: weights (in, out), tokens as rows of X). Names follow the authors' code:

    W        (out, in)  dense weight of the layer, the one being pruned
    H        (in, in)   X X^T, the calibration statistic; X holds one token per column
    B        (out, in)  ADMM's *dense* iterate; it minimises the objective
    D        (out, in)  ADMM's *sparse* copy of B; always inside the sparsity set
    V        (out, in)  dual variable, the (unscaled) Lagrange multiplier of B = D
    rho      ADMM penalty parameter, raised step by step to force B and D
             together (Section 3.2)
    k        number of weights kept (the l0 budget of Section 3.1)
    P_S(Z)   projection of Z onto the sparsity set: keep the k (or N per M)
             entries of largest magnitude, zero the rest

Problem (Section 3.1):  minimise tr((W - B) H (W - B)^T)  subject to  B sparse.

Steps, one function each:

1. ``ridge_and_normalise``   add a ridge to H, rescale so diag(H) = 1.
2. ``eigendecompose`` / ``ridge_inverse``   (H + rho I)^{-1} from one eigh.
3. ``project``               P_S, the magnitude projection onto the sparsity set.
4. ``admm_step``             one ADMM iteration (Algorithm 1):
                             B <- (W H - V + rho D)(H + rho I)^{-1}
                             D <- P_S(B + V / rho)
                             V <- V + rho (B - D)
5. ``support_change`` / ``update_rho``   the rho-update scheme (Section 3.2).
6. ``admm``                  the loop with restarts and stopping rules.
7. ``conjugate_gradient_on_support``   post-processing (Section 3.3,
                             Algorithm 2): solve the least-squares problem
                             restricted to the support P_S(B) picked by ADMM.
8. ``prune_alps``            the whole pipeline; undoes the rescaling.

Deliberate differences from the authors' code are marked "Differs:" below.
"""

from __future__ import annotations

import torch

from .contract.patterns import Pattern, pruned_count
from .masks import nm_mask, prune_lowest
from .sparsegpt import CholeskyError

#: The published defaults of ALPS (``ALPS_admm`` in the authors' code) are the registry's
#: (``contract/registry.py``): dampening 0.01, rho0 0.1, max_iter 300, min_iter 30, update_every 3,
#: rho_max 1e6, cg_iters 10, cg_rtol 1e-4; each option is explained at ``prune_alps``.

# Thresholds of the rho-update scheme, on the support change measured relative to k
# (the fraction of the kept set that entered or left in the last ``update_every`` iterations).
#: change / k above this: the support is moving a lot, rho *= RHO_FAST.
FAST_CHANGE = 0.1
RHO_FAST = 1.3
#: change / k above this (but not above FAST_CHANGE): rho *= RHO_MEDIUM.
MEDIUM_CHANGE = 0.005
RHO_MEDIUM = 1.2
#: some change, but at most MEDIUM_CHANGE: rho *= RHO_SLOW.
RHO_SLOW = 1.1
#: if rho has never been raised and the support barely moves, rho /= RHO_RESTART_DIVISOR
#: (rho0 was too large: ADMM was stuck at the magnitude-pruning support).
RHO_RESTART_DIVISOR = 5.0
#: CG treats a row as solved once its residual is below this fraction of its right-hand
#: side: 64 float64 epsilons, the level at which further steps only amplify rounding.
ROUNDING_FLOOR = 64 * 2.220446049250313e-16
#: after ``min_iter`` iterations, stop once change / k falls below this.
SETTLED_CHANGE = 3e-4


# --------------------------------------------------------------------------- step 1


def ridge_and_normalise(W: torch.Tensor, H: torch.Tensor, dampening: float):
    """Step 1: ridge, then rescale every input so that diag(H) = 1.

    H_lambda = H + lambda I with lambda = dampening * mean(diag H) (makes H
    invertible; the authors' code uses 0.01). Then, with norms c_j = sqrt(H_lambda[j, j]),

        H_n = C^{-1} H_lambda C^{-1},    W_n = W C,      C = diag(c),

    so tr((W - B) H_lambda (W - B)^T) = tr((W_n - B_n) H_n (W_n - B_n)^T) with
    B_n = B C. All later steps work on (W_n, H_n); the result is mapped back by
    B = B_n C^{-1}. Returns (W_n, H_n, c).

    Differs: the authors add 1e-8 to c; here c_j = 1 where H_lambda[j, j] = 0
    (only possible when H = 0 or dampening = 0), which keeps the map exact.
    """
    ridge = dampening * float(torch.diagonal(H).mean())
    H_ridge = H + ridge * torch.eye(H.shape[0], dtype=H.dtype)
    diag = torch.diagonal(H_ridge)
    norms = torch.where(diag > 0, diag.clamp(min=0).sqrt(), torch.ones_like(diag))
    H_n = H_ridge / norms[:, None] / norms[None, :]
    return W * norms, H_n, norms


# --------------------------------------------------------------------------- step 2


def eigendecompose(H_n: torch.Tensor):
    """Step 2a: H_n = Q diag(L) Q^T, computed once; every (H_n + rho I)^{-1} reuses it.

    H_n must be positive semi-definite (it is H + lambda I rescaled): an eigenvalue below
    -n eps max|L|, more negative than eigh's rounding, means H is not a matrix sum_t x_t x_t^T, and
    ALPS refuses it as SparseGPT does (CholeskyError, SGPT-8) instead of returning a result.
    """
    L, Q = torch.linalg.eigh(H_n)
    check_positive_semidefinite(L)
    return L, Q


def check_positive_semidefinite(L: torch.Tensor) -> None:
    """CholeskyError if the eigenvalues ``L`` of H + lambda I (rescaled) are clearly negative."""
    floor = -L.shape[0] * torch.finfo(L.dtype).eps * float(L.abs().max())
    if float(L.min()) < floor:
        raise CholeskyError(
            f"H + dampening * mean(diag H) * I is not positive semi-definite (smallest eigenvalue {float(L.min()):.3g} "
            "of its rescaled form): check that H is a PSD matrix sum_t x_t x_t^T, or pass a larger `dampening`"
        )


def ridge_inverse(L: torch.Tensor, Q: torch.Tensor, rho: float) -> torch.Tensor:
    """Step 2b: (H_n + rho I)^{-1} = Q diag(1 / (L + rho)) Q^T (rebuilt whenever rho changes)."""
    return (Q / (L + rho)) @ Q.T


# --------------------------------------------------------------------------- step 3


def projection_mask(Z: torch.Tensor, pattern: Pattern, kept: int, dead: torch.Tensor) -> torch.Tensor:
    """Step 3a: support of P_S(Z): the kept entries, True = kept.

    Score = |Z| (magnitude in the normalised coordinates, as in the authors'
    code, which ranks by Z^2); columns of dead inputs (diag(H) = 0 before the
    ridge) score 0, so they are pruned before any live weight of their group.
    Unstructured: the whole layer is one group, the ``kept`` largest survive,
    ties pruned lower row-major index first (``masks.prune_lowest``).
    N:M: ``masks.nm_mask``, N largest of every M consecutive inputs of a row.

    Differs: the dead-input rule is ours (the authors' code has none); ties are
    broken deterministically (the authors use ``torch.topk``).
    """
    scores = Z.abs()
    scores[:, dead] = 0.0
    if pattern.kind == "nm":
        return nm_mask(scores, pattern)
    return prune_lowest(scores.reshape(-1), Z.numel() - kept).reshape(Z.shape)


def project(Z: torch.Tensor, pattern: Pattern, kept: int, dead: torch.Tensor):
    """Step 3b: P_S(Z) = Z on its support, 0 elsewhere. Returns (P_S(Z), support)."""
    support = projection_mask(Z, pattern, kept, dead)
    return torch.where(support, Z, torch.zeros_like(Z)), support


# --------------------------------------------------------------------------- step 4


def admm_step(WH, B_inverse, D, V, rho, pattern, kept, dead):
    """Step 4: one ADMM iteration on the augmented Lagrangian of Section 3.2 (Algorithm 1).

        B <- (W H - V + rho D)(H + rho I)^{-1}     dense minimiser in B
        D <- P_S(B + V / rho)                     projection onto the sparsity set
        V <- V + rho (B - D)                      dual ascent on the constraint B = D

    ``WH`` is W_n H_n (fixed), ``B_inverse`` is (H_n + rho I)^{-1}.
    Returns (B, D, V, support of D).
    """
    B = (WH - V + rho * D) @ B_inverse
    D, support = project(B + V / rho, pattern, kept, dead)
    V = V + rho * (B - D)
    return B, D, V, support


# --------------------------------------------------------------------------- step 5


def support_change(support: torch.Tensor, previous: torch.Tensor) -> int:
    """Step 5a: number of weights whose kept/pruned status differs between two supports.

    Differs: the authors compare the zero patterns of D (D == 0), which also
    counts a kept entry whose value happens to be exactly 0; here the mask itself.
    """
    return int((support != previous).sum())


def update_rho(rho: float, change_ratio: float, changed: bool, rho_has_risen: bool):
    """Step 5b: the rho-update scheme of Section 3.2.

    change_ratio = support change / k over the last ``update_every`` iterations.

        change_ratio > 0.1     rho *= 1.3                       (support moving fast)
        change_ratio > 0.005   rho *= 1.2
        some change            rho *= 1.1   if rho has risen before,
                               else rho /= 5 and restart ADMM   (rho0 was too large)
        no change              stop          if rho has risen before,
                               else rho /= 5 (no restart)

    Returns (rho, rho_has_risen, action) with action one of
    "continue", "restart", "stop".
    """
    if change_ratio > FAST_CHANGE:
        return rho * RHO_FAST, True, "continue"
    if change_ratio > MEDIUM_CHANGE:
        return rho * RHO_MEDIUM, True, "continue"
    if changed:
        if rho_has_risen:
            return rho * RHO_SLOW, True, "continue"
        return rho / RHO_RESTART_DIVISOR, False, "restart"
    if rho_has_risen:
        return rho, True, "stop"
    return rho / RHO_RESTART_DIVISOR, False, "continue"


# --------------------------------------------------------------------------- step 6


def admm(W_n, H_n, pattern, kept, dead, opts):
    """Step 6: ADMM with the rho-update scheme (Algorithm 1 with Section 3.2's rule).

    Start: rho = rho0, D = P_S(W_n) (magnitude pruning), V = 0. Every
    ``update_every`` iterations the support of D is compared with the one
    ``update_every`` iterations earlier and rho updated (``update_rho``; capped
    at rho_max). Stops when ``update_rho`` says so, or after more than
    ``min_iter`` iterations once change / k < 3e-4, or at ``max_iter``.

    Returns (B, info): the last dense iterate B (in normalised coordinates).
    """
    L, Q = eigendecompose(H_n)
    WH = W_n @ H_n
    rho = opts["rho0"]
    B_inverse = ridge_inverse(L, Q, rho)
    D_start, support_start = project(W_n, pattern, kept, dead)
    B, D, V = W_n.clone(), D_start.clone(), torch.zeros_like(W_n)
    previous_support = support_start
    rho_has_risen, stop_reason, iteration, restarts = False, "max_iter", 0, 0
    for iteration in range(1, opts["max_iter"] + 1):
        B, D, V, support = admm_step(WH, B_inverse, D, V, rho, pattern, kept, dead)
        if iteration % opts["update_every"] != 0:
            continue
        change = support_change(support, previous_support)
        ratio = change / kept
        old_rho = rho
        rho, rho_has_risen, action = update_rho(rho, ratio, change > 0, rho_has_risen)
        if action == "stop":
            stop_reason = "support unchanged"
            break
        previous_support = support
        if action == "restart":
            # Differs: the authors keep comparing against the support D had before
            # the restart; here against the support of the state we restart from.
            # They also reset B to W_n, which matters only if the loop stops right
            # here; B is otherwise recomputed by the next step. We keep the last B.
            D, V = D_start.clone(), torch.zeros_like(W_n)
            previous_support = support_start
            restarts += 1
        rho = min(rho, opts["rho_max"])
        if rho != old_rho:
            B_inverse = ridge_inverse(L, Q, rho)
        if iteration > opts["min_iter"] and ratio < SETTLED_CHANGE:
            stop_reason = "support settled"
            break
    info = {
        "iterations": iteration,
        "rho": rho,
        "converged": stop_reason != "max_iter",
        "stop_reason": stop_reason,
        "restarts": restarts,
    }
    return B, info


# --------------------------------------------------------------------------- step 7


def conjugate_gradient_on_support(H_n, WH, B0, support, iterations, rtol):
    """Step 7: post-processing (Section 3.3, Algorithm 2): CG restricted to the support.

    With the support S fixed, the objective is a separate least-squares problem
    per row i:  H_n[S_i, S_i] b_{S_i} = (W_n H_n)[i, S_i].  All rows run CG
    together, starting from B0 = P_S(B); residuals are masked to the support,
    so iterates never leave it. Preconditioner: Jacobi, diag(H_n) = 1 here,
    i.e. the identity. Stops when every row has
    ||residual on S_i|| <= rtol * ||(W_n H_n)[i, S_i]||, or after ``iterations``.

    Differs: the authors test the *unmasked* residual B H_n - W_n H_n, and take
    its norms per input (across outputs) against rtol * the same norms of the
    unmasked right-hand side; the off-support part of that residual does not
    vanish, so their test practically never fires and all iterations run.
    Where a direction has zero curvature (possible only when H_n is singular on
    the support) the step is 0 here; the authors divide by 1e-8 instead.
    Returns (B, iterations done, converged).
    """
    mask = support.to(H_n.dtype)
    rhs = WH * mask
    rhs_norm = rhs.norm(dim=1)
    threshold = rtol * rhs_norm
    # A row whose residual is at rounding level has converged whatever rtol says;
    # iterating on it further only amplifies rounding (rr / curvature of ~0 / ~0).
    floor = ROUNDING_FLOOR * rhs_norm
    X = B0.clone()
    R = (WH - X @ H_n) * mask
    P = R.clone()
    rr = (R * R).sum(dim=1)
    done = 0
    for done in range(iterations + 1):
        active = rr.sqrt() > torch.maximum(threshold, floor)
        if not bool(active.any()) or done == iterations:
            break
        HP = (P @ H_n) * mask
        curvature = (P * HP).sum(dim=1)
        step = active & (curvature > 0)
        alpha = torch.where(step, rr / torch.where(step, curvature, 1.0), 0.0)
        X = X + alpha[:, None] * P
        R = R - alpha[:, None] * HP
        rr_new = (R * R).sum(dim=1)
        beta = torch.where(step, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
        P = torch.where(step[:, None], R + beta[:, None] * P, P)
        rr = torch.where(step, rr_new, rr)
    converged = bool((rr.sqrt() <= torch.maximum(threshold, floor)).all())
    return X, done, converged


# --------------------------------------------------------------------------- step 8


def kept_count(pattern: Pattern, sparsity: float, numel: int) -> int:
    """k, the number of weights kept: numel - floor(sparsity * numel) (spec CNT-1), or N/M of numel.

    Differs: the authors keep round((1 - sparsity) * numel), which can be one more
    or one fewer than the spec's count.
    """
    if pattern.kind == "nm":
        return numel // pattern.m * pattern.n
    return numel - pruned_count(sparsity, numel)


def prune_alps(W: torch.Tensor, H: torch.Tensor, pattern: Pattern, sparsity: float, **options):
    """Prune W with ALPS; returns (W_hat, mask, info).

    W: float64 (out, in); H: float64 symmetric PSD (in, in); both already
    validated by the caller. pattern: ``Pattern`` ("unstructured" or N:M).
    sparsity: fraction pruned (unstructured; ignored for N:M, where it is 1 - N/M).
    options (checked and complete, from the registry's defaults):

        dampening    ridge lambda = dampening * mean(diag H) added to diag(H); >= 0.
        rho0         initial penalty rho; > 0.
        max_iter     at most this many ADMM iterations.
        min_iter     the "support has settled" stop (change / k < 3e-4) applies only after this many iterations.
        update_every rho is updated every this many iterations.
        rho_max      cap on rho.
        cg_iters     conjugate-gradient iterations on the final support (0 skips the post-processing).
        cg_rtol      CG stops when each row's residual norm <= cg_rtol * norm of its right-hand side.

    W_hat is 0 exactly off the mask (True = kept). info holds "iterations"
    (ADMM), "rho" (final), "converged" (ADMM stopped by its support rule, not
    by max_iter), "stop_reason", "restarts" (rho0 too large: rho /= 5 and
    ADMM restarted), "cg_iterations", "cg_converged", "kept" (k).

    Steps: ridge + normalise (1), ADMM (2-6), P_S of the last dense iterate B,
    CG on that support (7), undo the normalisation.
    """
    opts = options
    dead = torch.diagonal(H) == 0
    kept = kept_count(pattern, sparsity, W.numel())
    W_n, H_n, norms = ridge_and_normalise(W, H, opts["dampening"])
    B, info = admm(W_n, H_n, pattern, kept, dead, opts)
    B, mask = project(B, pattern, kept, dead)
    B, cg_done, cg_ok = conjugate_gradient_on_support(
        H_n, W_n @ H_n, B, mask, opts["cg_iters"], opts["cg_rtol"]
    )
    W_hat = torch.where(mask, B / norms, torch.zeros_like(B))
    if not bool(torch.isfinite(W_hat).all()):  # defensive: inputs are finite, so is every step
        raise FloatingPointError("ALPS produced non-finite weights")
    info.update({"cg_iterations": cg_done, "cg_converged": cg_ok, "kept": kept})
    return W_hat, mask, info


__all__ = ["check_positive_semidefinite", "kept_count", "prune_alps", "update_rho"]
