"""Exact least-squares refit of the kept weights on a fixed mask (spec REF-*).

For a row w and its kept set S, the best kept weights solve

    min_z || (w - w_hat(z)) R ||_2   with w_hat(z)_S = z, w_hat(z)_{not S} = 0,

for any R with R R^T = H (the objective only sees H). With H = X X^T, R = X
is the paper's calibration matrix; here R is built from H itself as
R = Q diag(sqrt(lambda)) from H = Q diag(lambda) Q^T, which avoids squaring the
condition number as the normal equations H_SS z = (H w)_S would.
Where the minimiser is not unique (rank-deficient H) we return the one of
minimum norm, as least squares does (REF-3).
"""

from __future__ import annotations

import torch

from .contract.validate import check_hessian, check_mask, check_weight


def hessian_square_root(H: torch.Tensor) -> torch.Tensor:
    """R with R R^T = H, from the eigendecomposition H = Q diag(lambda) Q^T.

    eigh finds each eigenvalue to within ~ n * eps * max(lambda); smaller ones
    (negative ones included) are rounding noise of a zero eigenvalue, so they
    are set to 0. Keeping them would give R spurious directions of size
    sqrt(eps) * ||R|| that the least-squares solver would then fit (REF-2).
    """
    eigenvalues, Q = torch.linalg.eigh(H)
    noise = H.shape[0] * torch.finfo(H.dtype).eps * float(eigenvalues.abs().max())
    eigenvalues = torch.where(eigenvalues > noise, eigenvalues, torch.zeros_like(eigenvalues))
    return Q * eigenvalues.sqrt()


def rank_cutoff(R: torch.Tensor) -> float:
    """Singular values of R_S below this are zero: H's eigenvalues are known only to within
    n * eps * lambda_max (eigh's backward error), so R = Q sqrt(lambda) resolves singular values
    only down to sqrt(n * eps * lambda_max) = sqrt(n * eps) * ||R||; below that, a direction is
    indistinguishable from an exact zero. (An eigenvector's error grows with 1/gap, so rounding
    in R_S can reach far above n * eps * ||R||: make_layer('mixed', 1, 38, 33, 33) has a spurious
    6e-11 = 12 n eps ||R|| that a 10 n eps ||R|| cut kept and pinv blew up, REF-2.)"""
    n = R.shape[0]
    return (n * torch.finfo(R.dtype).eps) ** 0.5 * float(torch.linalg.matrix_norm(R, ord=2))


def refit_row(w: torch.Tensor, keep: torch.Tensor, R: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Least-squares refit of one row: minimise ||R^T (w - w_hat)|| over w_hat supported on ``keep``.

    The minimum-norm minimiser, by the pseudo-inverse with singular values
    below ``cutoff`` treated as zero.
    """
    w_hat = torch.zeros_like(w)
    if bool(keep.any()):
        A = R[keep].T  # (in, |S|): R^T restricted to the kept inputs
        b = R.T @ w  # target outputs R^T w
        w_hat[keep] = torch.linalg.pinv(A, atol=cutoff) @ b
    return w_hat


def refit(W, mask, H) -> torch.Tensor:
    """Kept weights re-solved exactly for ``mask`` (True = kept); pruned entries exactly 0.

    Each output row is an independent least-squares problem (the objective is a
    sum over rows), REF-1.
    """
    W = check_weight(W)
    mask = check_mask(mask, W.shape)
    H = check_hessian(H, W.shape[1])
    R = hessian_square_root(H)
    cutoff = rank_cutoff(R)
    return torch.stack([refit_row(W[i], mask[i], R, cutoff) for i in range(W.shape[0])])
