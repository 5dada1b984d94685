"""rac-spec's pruners against llm-compressor's SparseGPT and Wanda on the same W and H: time and objective.

    nox -s bench_llmcompressor                     # saves docs/bench/llmcompressor-cpu-<UTC time>.json
    pytest conformance/benchmarks/bench_llmcompressor.py --benchmark-only --benchmark-json=out.json

Both sides get the same float64 W (out x in) and H = X X^T and the same settings
(sparsity 0.5 or 2:4, 128-column blocks, dampening 0.01 of mean diag H); each
converts to its own precision inside the timed call (llm-compressor: float32,
through rac.conformance.adapters.llmcompressor, which only translates
conventions). The objective tr((W - W_hat) H (W - W_hat)^T) is computed here, in
float64, the same way for every result, and stored in each benchmark's
``extra_info`` with the number of weights pruned beyond floor(s * |group|).

"ours" is ``rac.fast.prune_layer`` (skipped where it does not exist), and ``rac.reference``
(float64, the plain per-column sweep: the correctness baseline, not a speed claim).
Sizes: 1024 and 4096 square layers (a 7B-class attention projection is 4096 x 4096).
Rounds: 3 at 1024, 1 at 4096, or RAC_BENCH_ROUNDS; the reported time is pytest-benchmark's min.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

pytest.importorskip("llmcompressor", reason="llm-compressor is installed only in `nox -s bench_llmcompressor`")

from rac.conformance.adapters import llmcompressor as ports_llmcompressor  # noqa: E402
from rac.conformance.checking.strategies import llm_like_layer  # noqa: E402

SIZES = (1024, 4096)
SETTINGS = {"unstructured": dict(sparsity=0.5), "2:4": dict(pattern="2:4")}
METHOD_OPTIONS = {"sparsegpt": dict(blocksize=128, dampening=0.01), "wanda": {}}


def _ours(name: str):
    try:
        fn = importlib.import_module(f"rac.{name}").prune_layer
    except (ImportError, AttributeError):
        pytest.skip(f"rac.{name}.prune_layer is not available yet")
    return fn


IMPLEMENTATIONS = {
    "llmcompressor": lambda: ports_llmcompressor.prune_layer,
    "fast": lambda: _ours("fast"),
    "reference": lambda: _ours("reference"),
}

layer = llm_like_layer  # the shared recipe (rac.conformance.checking.strategies)


def objective(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """OBJ-1 in float64: tr(D H D^T) with D = W - W_hat."""
    D = W - W_hat.to(torch.float64)
    return float(((D @ H) * D).sum())


def excess_pruned(mask: torch.Tensor, method: str, setting: str) -> int:
    """Weights pruned beyond the spec's count (CNT-1 / NM-1) summed over the comparison groups."""
    out_features, in_features = mask.shape
    pruned = ~mask
    if setting == "2:4":
        return int((pruned.reshape(out_features, -1, 4).sum(-1) - 2).clamp(min=0).sum())
    if method == "wanda":  # one group per row
        return int((pruned.sum(1) - in_features // 2).clamp(min=0).sum())
    blocks = pruned.reshape(out_features, -1, 128).sum((0, 2))  # 128-column blocks, all rows
    return int((blocks - out_features * 128 // 2).clamp(min=0).sum())


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("size", SIZES)
def test_bench_against_llmcompressor(benchmark, size, method, setting, impl):
    prune_layer = IMPLEMENTATIONS[impl]()
    if impl == "reference" and method == "sparsegpt" and size > 1024:
        pytest.skip("reference SparseGPT at 4096 is a float64 per-column sweep (minutes): the baseline is 1024")
    W, H = layer(size)
    kwargs = dict(method=method, **SETTINGS[setting], **METHOD_OPTIONS[method])
    rounds = int(os.environ.get("RAC_BENCH_ROUNDS", 3 if size <= 1024 else 1))
    weight, mask = benchmark.pedantic(lambda: prune_layer(W, H, **kwargs)[:2], rounds=rounds, iterations=1)
    weight, mask = torch.as_tensor(weight).cpu(), torch.as_tensor(mask).cpu()
    assert mask.dtype == torch.bool and weight.shape == W.shape
    obj = objective(W, weight, H)
    benchmark.extra_info.update(
        impl=impl,
        objective=obj,
        objective_relative=obj / objective(W, torch.zeros_like(W), H),  # / tr(W H W^T)
        pruned_fraction=float((~mask).float().mean()),
        excess_pruned=excess_pruned(mask, method, setting),
        torch_threads=torch.get_num_threads(),
        llmcompressor=ports_llmcompressor.LLMCOMPRESSOR_VERSION,
    )
