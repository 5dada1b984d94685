"""A float32 port that takes no options, written the way most ports are (docs/porting.md).

    pytest conformance --level layer --port rac.conformance.examples.float32_port

Magnitude (layer groups), Wanda (row groups) and SparseGPT with its defaults fixed: blocksize 128,
relative dampening 0.01, the original code's recipe (float32 Cholesky of H + lambda I, inverse,
Cholesky again) and its lazy batch updates (within a block column by column, the later columns
once per block). It declares ``options: {method: ()}``: the suite calls it without options and
checks every rule at those defaults (PORT-7). Argument checks reuse rac's contract, as a port may.
ALPS is left out: its support is decided by the magnitudes of ADMM iterates, which float32
rounding moves by more than ALPS-2 allows (rac.fast keeps ADMM in float64 for that reason, PREC-5).
"""

from __future__ import annotations

import torch

from rac.reference.contract.patterns import Pattern, check_sparsity_for_pattern, parse_pattern, pruned_count
from rac.reference.contract.validate import as_real_tensor, check_hessian, check_weight

CAPABILITIES = {
    "name": "float32-example",
    "methods": ("magnitude", "wanda", "sparsegpt"),
    "patterns": ("unstructured", "nm"),
    "dtype": "float32",
    "options": {"magnitude": (), "wanda": (), "sparsegpt": ()},
    "levels": ("layer",),
}

BLOCKSIZE, DAMPENING = 128, 0.01  # the spec's SparseGPT defaults, fixed


def prune_layer(W, H, *, method, sparsity=None, pattern="unstructured", **options):
    """(weight, mask, info) as float32 / bool tensors on W's device."""
    if method not in CAPABILITIES["methods"]:
        raise ValueError(f"method must be one of {CAPABILITIES['methods']}, got {method!r}")
    if options:
        raise TypeError(f"unknown option(s) {', '.join(sorted(options))} for method {method!r}: this port takes none")
    W = check_weight(W, convert=as_real_tensor).to(torch.float32)
    H = check_hessian(H, W.shape[1], convert=as_real_tensor).to(torch.float32)
    pat = parse_pattern(pattern, W.shape[1])
    s = check_sparsity_for_pattern(sparsity, pat)
    if pat.kind == "unstructured" and s == 0:
        return W.clone(), torch.ones_like(W, dtype=torch.bool), {}
    if method == "sparsegpt":
        return sparsegpt(W, H, pat, s)
    scores = W.abs() if method == "magnitude" else W.abs() * torch.diagonal(H).clamp(min=0).sqrt()
    mask = select(scores, pat, s, per_row=method == "wanda")
    return W.masked_fill(~mask, 0.0), mask, {}


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask with the k lowest of each row pruned, ties lower index first (a stable sort)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], False)
    return keep


def select(scores: torch.Tensor, pat: Pattern, sparsity: float, per_row: bool) -> torch.Tensor:
    """N:M: N kept of every M inputs of a row; unstructured: floor(s * n) lowest of each group."""
    if pat.kind == "nm":
        return lowest(scores.reshape(-1, pat.m), pat.m - pat.n).reshape(scores.shape)
    if per_row:
        return lowest(scores, pruned_count(sparsity, scores.shape[1]))
    return lowest(scores.reshape(1, -1), pruned_count(sparsity, scores.numel())).reshape(scores.shape)


def sparsegpt(W: torch.Tensor, H: torch.Tensor, pat: Pattern, sparsity: float):
    """SparseGPT as the original code computes it, in float32."""
    out_features, n = W.shape
    dead = torch.diagonal(H) == 0
    mean_diag = float(torch.diagonal(H).mean())
    lam = DAMPENING * (mean_diag if mean_diag > 0 else 1.0)
    damped = H + lam * torch.eye(n, dtype=H.dtype, device=H.device)
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError("H + 0.01 * mean(diag H) * I is not positive definite: H is not a PSD matrix") from None
    W, mask = W.clone(), torch.ones_like(W, dtype=torch.bool)
    for a in range(0, n, BLOCKSIZE):
        b = min(a + BLOCKSIZE, n)
        block, Ub = W[:, a:b].clone(), U[a:b, a:b]
        err = torch.zeros(out_features, b - a, dtype=W.dtype, device=W.device)
        d = torch.diagonal(Ub)
        if pat.kind == "unstructured":
            scores = (block.square() / d.square()).masked_fill(dead[a:b], 0.0)
            mask[:, a:b] = select(scores, pat, sparsity, per_row=False)
        for i in range(b - a):
            if pat.kind == "nm" and i % pat.m == 0:
                g = slice(i, i + pat.m)
                scores = (block[:, g].square() / d[g].square()).masked_fill(dead[a:b][g], 0.0)
                mask[:, a:b][:, g] = select(scores, pat, sparsity, per_row=False)
            w = block[:, i]
            q = w.masked_fill(~mask[:, a + i], 0.0)
            err[:, i] = (w - q) / Ub[i, i]
            block[:, i:] -= err[:, i : i + 1] * Ub[i, i:].unsqueeze(0)
            block[:, i] = q
        W[:, a:b] = block
        W[:, b:] -= err @ U[a:b, b:]  # the lazy update of everything after the block
    return W, mask, {"blocksize": BLOCKSIZE, "dampening": DAMPENING}
