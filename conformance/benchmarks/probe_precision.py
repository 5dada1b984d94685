"""The measurements behind rac.fast's precision policy (docs/spec.md section 13, docs/benchmarks.md).

    python conformance/benchmarks/probe_precision.py

1. SparseGPT's factor U (U^T U = H_d^{-1}) computed in float32 vs float64, against float64 on the
   float64 H, and the error that rounding H itself to float32 already causes (PREC-2).
2. ALPS with its ADMM in float32 vs float64 (``rac.fast.alps.ADMM_DTYPE``) against the reference,
   on the layer where float32 flips a near-tie (PREC-5).
Prints one line per measurement; CPU, a few seconds.
"""

from __future__ import annotations

import torch

import rac.fast
import rac.fast.alps as fast_alps
from rac.conformance.checking.oracles import residual
from rac.conformance.checking.strategies import make_layer
from rac.fast.factor import inverse_cholesky_upper
from rac.reference import prune_layer as ref_prune


def factor_errors() -> None:
    for tokens, outliers in ((256, True), (4096, True), (256, False)):
        for d in (0.01, 0.001):
            g = torch.Generator().manual_seed(0)
            X = torch.randn(1024, tokens, generator=g, dtype=torch.float64)
            if outliers:
                X[:64] *= 100
            H = X @ X.T
            H.diagonal().add_(d * H.diagonal().mean())
            U = inverse_cholesky_upper(H)
            U_32 = inverse_cholesky_upper(H.float()).double()
            U_h32 = inverse_cholesky_upper(H.float().double())
            ev = torch.linalg.eigvalsh(H)

            def rel(A, U=U):
                return float((A - U).norm() / U.norm())

            print(
                f"factor: n=1024 tokens={tokens} outliers={outliers} d={d} cond(H_d)={float(ev.max() / ev.min()):.3g}: "
                f"float32 factorisation {rel(U_32):.2g}, float64 factorisation of the float32-rounded H "
                f"{rel(U_h32):.2g} "
                "(relative Frobenius error of U)"
            )


def alps_near_tie() -> None:
    layer = make_layer("outliers", 7, 40, 41, 1955754634)
    ref = ref_prune(layer.W, layer.H, method="alps", pattern="2:4")
    energy = float(((layer.W @ layer.X) ** 2).sum())
    for dtype in (torch.float64, torch.float32):
        fast_alps.ADMM_DTYPE = dtype
        try:
            result = rac.fast.prune_layer(layer.W, layer.H, method="alps", pattern="2:4")
        finally:
            fast_alps.ADMM_DTYPE = torch.float64
        gap = (residual(layer.W, result.weight, layer.X) - residual(layer.W, ref.weight, layer.X)) / energy
        print(
            f"alps: {layer.repro} 2:4, ADMM in {dtype}: {int((result.mask != ref.mask).sum())} mask entries differ "
            f"from the reference, objective - reference = {gap:.3g} of ||WX||^2, iterations "
            f"{result.info['iterations']} "
            f"(reference {ref.info['iterations']})"
        )


if __name__ == "__main__":
    factor_errors()
    alps_near_tie()
