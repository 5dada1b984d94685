"""ALPS (spec ALPS-*) on whatever device W lives on: the reference's steps, ADMM in float64.

Same steps, options, defaults and stopping rules as ``rac.reference.alps``
(its docstrings explain each): ridge and normalise, one eigendecomposition,
ADMM with the rho-update scheme (``update_rho`` is the reference's own), the
projection onto the sparsity set, CG on the final support. What changes:

- every tensor stays on W's device; the host reads one integer per
  ``update_every`` iterations (the support change), the only synchronisation
  of the loop;
- the projection P_S selects the k largest |Z| in O(n) (fast/masks.py) rather
  than sorting the whole layer every iteration: at 4096 x 4096 the sort cost
  about as much as the iteration's GEMM, the selection a fifth of it
  (docs/benchmarks.md, "rac.fast vs rac.reference, per pruner" and probe_micro.py);
- one GEMM of 2 out in^2 FLOPs per iteration, (H_n + rho I)^{-1} rebuilt from
  the eigendecomposition only when rho changes, as the reference does.

Precision (PREC-5): ALPS is the one pruner that stays float64 (``ADMM_DTYPE``).
Its support is decided by the *magnitude* of an ADMM iterate, and in float32
that iterate is off by about eps32 * cond(H_n); two entries that close in
magnitude are not close in cost: swapping them moves the objective by O(w^2),
not O(eps). Measured: ``make_layer('outliers', 7, 40, 41, 1955754634)`` at 2:4,
float32 ADMM follows the reference's trajectory (33 iterations, same rho) and
then keeps the other entry of one near-tied pair in the final projection: the
objective differs by 1.3e-5 of ||W X||^2, 13x ALPS-2's bound. float64 costs
2x on a CPU (the GEMM rate halves) and nothing on an H100, whose FP64 tensor
cores run at the FP32 rate (67 TFLOP/s, datasheet; projected, not measured).
"""

from __future__ import annotations

import torch

from rac.reference.alps import SETTLED_CHANGE, check_positive_semidefinite, kept_count, update_rho
from rac.reference.contract.patterns import Pattern
from rac.reference.contract.validate import all_finite
from rac.reference.masks import nm_mask

from .masks import prune_lowest
from .precision import full_fp32

#: The dtype of ADMM and CG (PREC-5, module docstring).
ADMM_DTYPE = torch.float64
#: CG treats a row as solved once its residual is below this many epsilons of its dtype times its
#: right-hand side (the reference's rule: further steps only amplify rounding).
ROUNDING_FLOOR_EPS = 64


class AlpsFactor:
    """What ALPS needs of H, computed once per H (and shared by linears that read the same input).

    norms: sqrt of the ridged diagonal; H_n, L, Q: the normalised H and its
    eigendecomposition H_n = Q diag(L) Q^T; dead: inputs with H_jj = 0.
    """

    def __init__(self, norms, H_n, L, Q, dead):
        self.norms, self.H_n, self.L, self.Q, self.dead = norms, H_n, L, Q, dead


def factorise(H: torch.Tensor, dampening: float) -> AlpsFactor:
    """Steps 1-2a in float64: H_lambda = H + dampening mean(diag H) I, unit diagonal, eigh."""
    H64 = H.to(torch.float64)
    ridge = dampening * float(torch.diagonal(H64).mean())
    H_ridge = H64.clone()
    H_ridge.diagonal().add_(ridge)
    diag = torch.diagonal(H_ridge)
    norms = torch.where(diag > 0, diag.clamp(min=0).sqrt(), torch.ones_like(diag))
    H_n = H_ridge / norms[:, None] / norms[None, :]
    L, Q = torch.linalg.eigh(H_n)
    check_positive_semidefinite(L)  # the reference's rule: an indefinite H is refused, as SparseGPT refuses it
    cast = [t.to(ADMM_DTYPE) for t in (H_n, L, Q)]
    return AlpsFactor(norms, *cast, torch.diagonal(H) == 0)


def projection_mask(Z: torch.Tensor, pattern: Pattern, kept: int, dead: torch.Tensor) -> torch.Tensor:
    """Support of P_S(Z): the ``kept`` largest |Z| of the layer (or N per M-group); dead inputs score 0."""
    scores = Z.abs().masked_fill(dead.unsqueeze(0), 0.0)
    if pattern.kind == "nm":
        return nm_mask(scores, pattern)
    return prune_lowest(scores, Z.numel() - kept)


def project(Z, pattern, kept, dead):
    support = projection_mask(Z, pattern, kept, dead)
    return Z.masked_fill(~support, 0.0), support


def admm(W_n, H_n, L, Q, pattern, kept, dead, opts):
    """Step 6 of the reference (same loop, same rules), on the device. Returns (B, info)."""
    WH = W_n @ H_n
    rho = opts["rho0"]

    def ridge_inverse(r):
        return (Q / (L + r)) @ Q.T

    B_inverse = ridge_inverse(rho)
    D_start, support_start = project(W_n, pattern, kept, dead)
    B, D, V = W_n.clone(), D_start.clone(), torch.zeros_like(W_n)
    previous_support = support_start
    rho_has_risen, stop_reason, iteration, restarts = False, "max_iter", 0, 0
    for iteration in range(1, opts["max_iter"] + 1):
        B = (WH - V + rho * D) @ B_inverse
        D, support = project(B + V / rho, pattern, kept, dead)
        V = V + rho * (B - D)
        if iteration % opts["update_every"] != 0:
            continue
        change = int((support != previous_support).sum())
        ratio = change / kept
        old_rho = rho
        rho, rho_has_risen, action = update_rho(rho, ratio, change > 0, rho_has_risen)
        if action == "stop":
            stop_reason = "support unchanged"
            break
        previous_support = support
        if action == "restart":
            D, V = D_start.clone(), torch.zeros_like(W_n)
            previous_support = support_start
            restarts += 1
        rho = min(rho, opts["rho_max"])
        if rho != old_rho:
            B_inverse = ridge_inverse(rho)
        if iteration > opts["min_iter"] and ratio < SETTLED_CHANGE:
            stop_reason = "support settled"
            break
    info = {"iterations": iteration, "rho": rho, "converged": stop_reason != "max_iter",
            "stop_reason": stop_reason, "restarts": restarts}
    return B, info


def conjugate_gradient_on_support(H_n, WH, B0, support, iterations: int, rtol: float):
    """Step 7 of the reference (same rules, float32 rounding floor); all rows at once. Returns (B, done, ok)."""
    mask = support.to(H_n.dtype)
    rhs = WH * mask
    rhs_norm = rhs.norm(dim=1)
    floor = ROUNDING_FLOOR_EPS * float(torch.finfo(H_n.dtype).eps)
    limit = torch.maximum(rtol * rhs_norm, floor * rhs_norm)
    X = B0.clone()
    R = (WH - X @ H_n) * mask
    P = R.clone()
    rr = (R * R).sum(dim=1)
    done = 0
    for done in range(iterations + 1):
        active = rr.sqrt() > limit
        if done == iterations or not bool(active.any()):
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
    converged = bool((rr.sqrt() <= limit).all())
    return X, done, converged


def solve(W: torch.Tensor, factor: AlpsFactor, pattern: Pattern, sparsity: float, opts: dict):
    """Steps 3-8 for one weight: (W_hat in W's dtype, mask, info); ``opts`` checked and complete."""
    kept = kept_count(pattern, sparsity, W.numel())
    W_n = (W.to(torch.float64) * factor.norms).to(ADMM_DTYPE)
    H_n, dead = factor.H_n, factor.dead
    with full_fp32():
        B, info = admm(W_n, H_n, factor.L, factor.Q, pattern, kept, dead, opts)
        B, mask = project(B, pattern, kept, dead)
        B, cg_done, cg_ok = conjugate_gradient_on_support(H_n, W_n @ H_n, B, mask, opts["cg_iters"], opts["cg_rtol"])
    W_hat = (B.to(torch.float64) / factor.norms).masked_fill(~mask, 0.0)
    if not all_finite(W_hat):  # defensive: inputs are finite, so is every step
        raise FloatingPointError("ALPS produced non-finite weights")
    info.update({"cg_iterations": cg_done, "cg_converged": cg_ok, "kept": kept})
    out_dtype = W.dtype if W.is_floating_point() else torch.float32
    return W_hat.to(out_dtype), mask, info


def prune_group(Ws: list, H: torch.Tensor, pattern: Pattern, sparsity: float, **opts) -> list:
    """The registry's fast entry: one ridge + normalisation + eigendecomposition for linears sharing H;
    ADMM and CG linear by linear (the top-k spans the whole layer). [(W_hat, mask, info)]."""
    factor = factorise(H, opts["dampening"])
    return [solve(W, factor, pattern, sparsity, opts) for W in Ws]
