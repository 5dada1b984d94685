"""Streaming H = sum_t w_t x_t x_t^T (spec HES-*), float32 accumulation, chunk by chunk.

Phase II never holds X for the whole calibration set (for down_proj of a 7B model,
18,944 inputs x 1M tokens x 2 bytes = 38 GB in bf16): each forward pass hands its
chunk of activations to a ``HessianAccumulator`` and drops it.

    acc = HessianAccumulator(in_features, device="cuda")
    for x, pad in chunks:               # x: [..., in_features], any float dtype (bf16 too)
        acc.add(x, token_weights=pad)   # pad: bool (True = real token) or float weights >= 0
    H = acc.H                           # float32 (in, in), symmetric; acc.tokens tokens counted

Cost per chunk of n tokens: the lower triangle of x^T x by column blocks of
``SYRK_BLOCK`` (``lower_gram_``: n in^2 (1 + SYRK_BLOCK / in) FLOPs instead of a full
GEMM's 2 n in^2; H is the lower triangle mirrored), bf16 matrix units for bf16
activations where the device has fp32-output bf16 GEMMs (PREC-1). Memory: H only
(in^2 float32), never X.
"""

from __future__ import annotations

import torch

from rac.reference.contract.validate import as_real_tensor, check_finite

from .precision import full_fp32, mm_fp32_out


class HessianAccumulator:
    """Running H = sum_t w_t x_t x_t^T over chunks of tokens [tokens, in_features] (HES-1..4).

    add(x, token_weights=None)  x: [..., in] (leading dims are tokens), any float dtype;
                                token_weights: None (all 1), bool [...] (False = padding,
                                dropped before the GEMM, so padding can hold anything,
                                HES-4), or float [...] >= 0.
    H                           the float32 sum so far (a new symmetric tensor; the sum,
                                not the mean: any positive multiple prunes the same, INV-1).
    tokens                      number of tokens with non-zero weight added so far.
    merge(other)                add another accumulator's sum (e.g. one per data shard).

    Non-finite activations are not searched chunk by chunk (that would stall a GPU
    every chunk); they make H non-finite, and reading ``H`` then raises ValueError.
    """

    def __init__(self, in_features: int, *, device=None):
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self._sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    @property
    def device(self) -> torch.device:
        return self._sum.device

    def add(self, x, token_weights=None) -> None:
        """Add the tokens of ``x`` ([..., in_features]) with their weights (see the class docstring)."""
        x = as_real_tensor(x, "x")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape [..., {self.in_features}] (tokens x in_features), got {tuple(x.shape)}"
            )
        x = x.to(self.device).reshape(-1, self.in_features)
        if token_weights is None:
            self._add_rows(x, None)
            return
        w = token_weights if isinstance(token_weights, torch.Tensor) else torch.as_tensor(token_weights)
        if w.numel() != x.shape[0]:
            raise ValueError(f"token_weights must have one entry per token ({x.shape[0]}), got shape {tuple(w.shape)}")
        w = w.to(self.device).reshape(-1)
        if w.dtype == torch.bool:
            self._add_rows(x[w], None)
            return
        if w.is_complex():
            raise TypeError(f"token_weights must be bool or real numbers, got dtype {w.dtype}")
        w = w.to(torch.float32)
        check_finite(w, "token_weights")
        if bool((w < 0).any()):
            raise ValueError("token_weights must be >= 0 (a token's weight in H)")
        live = w > 0
        self._add_rows(x[live], w[live])

    def _add_rows(self, x: torch.Tensor, w) -> None:
        if x.shape[0] == 0:
            return
        if w is None:
            lower_gram_(self._sum, x, x)
        else:
            # the weight goes on one side, in float32: w_t x_t x_t^T with one rounding of w_t x_t
            x32 = x.to(torch.float32)
            lower_gram_(self._sum, x32 * w.unsqueeze(1), x32)
        self.tokens += int(x.shape[0])

    def merge(self, other: "HessianAccumulator") -> None:
        """Add another accumulator's sum and token count (same in_features)."""
        if not isinstance(other, HessianAccumulator) or other.in_features != self.in_features:
            raise ValueError(f"other must be a HessianAccumulator with in_features={self.in_features}")
        self._sum += other._sum.to(self.device)
        self.tokens += other.tokens

    @property
    def H(self) -> torch.Tensor:
        """The float32 sum H: the accumulated lower triangle, mirrored (exactly symmetric)."""
        lower = self._sum.tril()
        check_finite(lower, "H (accumulated activations contained NaN or Inf)")
        return lower + lower.tril(-1).T


#: Column block of ``lower_gram_`` (measured in docs/benchmarks.md, "Phase II").
SYRK_BLOCK = 256


def lower_gram_(S: torch.Tensor, a: torch.Tensor, b: torch.Tensor, block: int = SYRK_BLOCK) -> None:
    """S += a^T b on and below the diagonal blocks, in place (a, b: [tokens, in]; a = b, or a = w * b).

    A symmetric rank-k update as torch has none (no syrk): column block [j0, j1) of the lower
    triangle is one GEMM, S[j0:, j0:j1] += a[:, j0:]^T b[:, j0:j1], so the blocks above the diagonal
    are never computed: in^2 tokens (1 + block / in) FLOPs instead of 2 in^2 tokens. Entries above the
    diagonal inside a diagonal block are computed too and not read (``HessianAccumulator.H``
    mirrors the strict lower triangle). Each entry is the same dot product over the tokens as in a
    full GEMM, so H's lower triangle is the full product's up to the GEMM's own blocking.
    """
    n = S.shape[0]
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        if S.dtype == torch.float32 and a.dtype == torch.float32 and b.dtype == torch.float32:
            with full_fp32():  # PREC: float32 products at full precision (no TF32)
                S[j0:, j0:j1].addmm_(a[:, j0:].T, b[:, j0:j1])  # in place: no (in - j0) x block temporary
        else:
            S[j0:, j0:j1] += mm_fp32_out(a[:, j0:].T, b[:, j0:j1])


def hessian(X, weights=None) -> torch.Tensor:
    """H = sum_t w_t x_t x_t^T for X of shape (in_features, N) as in ``rac.reference.hessian`` (HES-1).

    Same arguments, checks and messages as the reference; float32 result on X's device.
    """
    X = as_real_tensor(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (in_features, N tokens), got shape {tuple(X.shape)}")
    check_finite(X, "X")
    acc = HessianAccumulator(int(X.shape[0]), device=X.device)
    if weights is None:
        acc.add(X.T)
        return acc.H
    w = as_real_tensor(weights, "weights")
    if w.ndim != 1 or w.shape[0] != X.shape[1]:
        raise ValueError(f"weights must be 1-D with one entry per token (N={X.shape[1]}), got shape {tuple(w.shape)}")
    check_finite(w, "weights")
    if bool((w < 0).any()):
        raise ValueError("weights must be >= 0 (a token's weight in H)")
    acc.add(X.T, token_weights=w)
    return acc.H
