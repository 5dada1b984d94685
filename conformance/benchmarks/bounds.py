"""Lower bounds of the problems rac benchmarks, in one place (issue #15): every benchmark reads them here.

A bound counts what any implementation of the *problem* must compute, not what ours happens to
compute, at the rate of a plain float32 GEMM measured next to the case (a rate the device reaches
on the problem's own shapes would only raise the bound), or the bytes it must move at the copy
bandwidth measured the same way; the larger of the two. FLOP counts (one multiply-add = 2 FLOPs):

- SparseGPT on one layer (out x n), float32 minimum:
    Cholesky of H + lambda I                    n^3 / 3
    sweep (each column's OBS update of the      sum_j 2 out (n - 1 - j) = out n (n - 1)
    later columns, any batching of it)
  U = R^{-1} (the triangular inverse, n^3 / 3) is not part of the minimum: rac.fast's left-looking
  sweep reads R and never forms U (fast/sparsegpt.py). ``sparsegpt_flops(..., inverse=True)`` adds
  it for comparison with issue #15's first statement of the bound (n^3/3 + n^3/3 + out n^2).
- Hessian H = X^T X of N tokens of width n: a symmetric rank-N update (syrk), N n^2 (the lower
  triangle only: half of the 2 N n^2 of a general GEMM).
- Phase II of a decoder (one block after another): per block the Hessian of each distinct linear
  input (q/k/v share one, gate/up share one), the SparseGPT minimum of each linear (the Cholesky
  once per distinct input, the sweep out n^2 per linear), and the block's forward pass over the N
  calibration tokens (2 N per weight, plus causal attention: QK^T and AV over the causal half,
  2 N T d per pass): twice with sequential propagation (the dense pass for the Hessians, the pruned
  pass for the next block's inputs), except the last block, whose outputs nothing reads (one pass);
  once per block with dense propagation (the Hessians' pass is the propagation). Until 2026-12-02
  the bound charged two passes to the last block too: a pass no implementation needs.

Nothing here is measured; ``test_bench_quick.py`` checks each formula against a count by hand.
"""

from __future__ import annotations


def sparsegpt_flops(out: int, n: int, *, inverse: bool = False) -> dict:
    """SparseGPT's float32 minimum for one layer, by part (see the module docstring)."""
    parts = {"cholesky": n**3 / 3, "sweep": float(out * n * (n - 1))}
    if inverse:
        parts["triangular_inverse"] = n**3 / 3
    return parts


def hessian_flops(tokens: int, n: int) -> float:
    """X^T X as a symmetric rank-``tokens`` update: tokens * n^2."""
    return float(tokens * n * n)


def layer_bytes(out: int, n: int, itemsize: int) -> int:
    """What any pruner of one layer moves at least: read W and H (GEN-5 checks all of H), write W_hat and a
    bool mask."""
    return out * n * (2 * itemsize + 1) + n * n * itemsize


def bound_seconds(flops: float, gemm_flops_per_s: float, nbytes: int = 0, copy_bytes_per_s: float = float("inf")):
    """max(FLOPs / GEMM rate, bytes / copy bandwidth)."""
    return max(flops / gemm_flops_per_s, nbytes / copy_bytes_per_s)


def block_linears(block) -> list:
    """[(group, in_features, out_features)] of a decoder block's linears; group names the shared input."""
    import torch

    rows = []
    for name, lin in block.named_modules():
        if isinstance(lin, torch.nn.Linear):
            leaf = name.split(".")[-1]
            group = "qkv" if leaf in ("q_proj", "k_proj", "v_proj") else ("gate_up" if leaf in ("gate_proj", "up_proj")
                                                                         else name)
            rows.append((group, lin.in_features, lin.out_features))
    return rows


def phase2_flops(model, tokens: int, seq_len: int, propagation: str = "sequential") -> dict:
    """Phase II's minimum by part: hessian, factor (Cholesky per distinct input), sweep, forward (module docstring)."""
    from rac.reference.contract.models import decoder_blocks

    parts = {"hessian": 0.0, "factor": 0.0, "sweep": 0.0, "forward": 0.0}
    blocks = decoder_blocks(model)
    for index, block in enumerate(blocks):
        passes = 2 if propagation == "sequential" and index < len(blocks) - 1 else 1
        inputs = {}
        for group, n, out in block_linears(block):
            inputs[group] = n
            parts["sweep"] += sparsegpt_flops(out, n)["sweep"]
            parts["forward"] += passes * 2 * tokens * n * out
        parts["hessian"] += sum(hessian_flops(tokens, n) for n in inputs.values())
        parts["factor"] += sum(n**3 / 3 for n in inputs.values())
        parts["forward"] += passes * 2 * tokens * seq_len * model.config.hidden_size  # QK^T and AV, causal half
    return parts
