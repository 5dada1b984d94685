"""Micro-timings behind the small choices in fast/ (quoted in its docstrings and docs/benchmarks.md).

    python conformance/benchmarks/probe_micro.py        # CPU, 1 thread, about a minute

Best of 5 repetitions of each operation, wall time:
- masks.py: k-th value selection (+ index-ordered ties) vs stable sort, per row and layer-wide, 4096 x 4096;
- sweep.py: one column of the loop: bool masked_fill vs multiply by a 0/1 float mask (4096 outputs);
- sweep.py: ranking one 2:4 group of 4096 outputs: stable sort vs broadcast comparisons vs loop;
- sparsegpt.py (``kth``): the k-th smallest of one 128-column block of SparseGPT scores (4096 x 128):
  torch.kthvalue vs the radix select ``kth_smallest``, and the whole block's mask both ways;
- reference/contract/validate.py (``asym``): max |H - H^T| of a 4096 x 4096 float32 H, as one n x n difference
  vs by row blocks (``_abs_max_difference``), given the transposed copy.
"""

from __future__ import annotations

import time

import torch

from rac.fast.masks import prune_lowest, prune_lowest_rows
from rac.fast.sparsegpt import block_keep_t, kth_smallest
from rac.fast.sweep import _rank_broadcast, _rank_loop
from rac.reference.contract.validate import _abs_max, _abs_max_difference
from rac.reference.masks import prune_lowest as sort_lowest
from rac.reference.masks import prune_lowest_per_row as sort_lowest_rows


def best(fn, repeats: int = 5, inner: int = 1) -> float:
    fn()
    t_best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        t_best = min(t_best, (time.perf_counter() - t) / inner)
    return t_best


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4096, 4096, generator=g)
    print(
        "selection per row (k = 2048 of 4096, 4096 rows): kthvalue "
        f"{best(lambda: prune_lowest_rows(scores, 2048)):.3f} s, "
        f"stable sort {best(lambda: sort_lowest_rows(scores, 2048)):.3f} s"
    )
    flat = scores.reshape(-1)
    print(
        f"selection layer-wide (k = 8.4M of 16.8M): kthvalue {best(lambda: prune_lowest(scores, 2**23), 3):.3f} s, "
        f"stable sort {best(lambda: sort_lowest(flat, 2**23), 3):.3f} s"
    )
    w, keep = torch.randn(4096, generator=g), torch.rand(4096, generator=g) < 0.5
    pruned = (~keep).float()
    t_fill = best(lambda: w.masked_fill(keep, 0.0), inner=200)
    t_mul = best(lambda: w * pruned, inner=200)
    print(
        f"one column's mask (4096 outputs): bool masked_fill {t_fill * 1e6:.1f} us, multiply by 0/1 "
        f"{t_mul * 1e6:.1f} us"
    )
    group = torch.rand(4, 4096, generator=g)
    t_sort = best(lambda: sort_lowest_rows(group.T, 2), inner=50)
    t_bc = best(lambda: _rank_broadcast(group) >= 2, inner=50)
    t_loop = best(lambda: _rank_loop(group) >= 2, inner=50)
    print(
        f"ranking one 2:4 group of 4096 outputs: stable sort {t_sort * 1e6:.0f} us, broadcast {t_bc * 1e6:.0f} us, "
        f"loop {t_loop * 1e6:.0f} us"
    )

    block = torch.rand(128, 4096, generator=g).square()  # (width, out): the sweep's layout
    k = block.numel() // 2
    assert float(kth_smallest(block.reshape(-1), k)) == float(torch.kthvalue(block.reshape(-1), k).values)
    print(
        "kth: k-th smallest of 4096 x 128 scores: kthvalue "
        f"{best(lambda: torch.kthvalue(block.reshape(-1), k)) * 1e3:.2f} ms, radix select "
        f"{best(lambda: kth_smallest(block.reshape(-1), k)) * 1e3:.2f} ms; block mask: "
        f"prune_lowest {best(lambda: prune_lowest(block.T.contiguous(), k)) * 1e3:.2f} ms, "
        f"block_keep_t {best(lambda: block_keep_t(block, k)) * 1e3:.2f} ms"
    )

    H = torch.randn(4096, 4096, generator=g)
    HT = H.T.contiguous()
    assert _abs_max(torch.sub(H, HT)) == _abs_max_difference(H, HT)
    print(
        "asym: max |H - H^T| of 4096 x 4096 float32: one difference "
        f"{best(lambda: _abs_max(torch.sub(H, HT))) * 1e3:.1f} ms, by row blocks "
        f"{best(lambda: _abs_max_difference(H, HT)) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
