"""The reproductions of docs/ports/llmcompressor.md still reproduce (run by `nox -s conformance_llmcompressor`).

Each ```python block of the page whose first line is ``# LC-n`` runs after the
``# setup`` block, in a fresh namespace; its asserts state the deviation. When
llm-compressor changes and a block stops reproducing, its test fails and the
page (and conformance/adapters/llmcompressor.xfail) must be updated.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("llmcompressor", reason="llm-compressor is installed only in `nox -s conformance_llmcompressor`")

PAGE = Path(__file__).with_name("llmcompressor.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> dict:
    out = {}
    for body in _BLOCK.findall(PAGE.read_text(encoding="utf-8")):
        tag = body.splitlines()[0].lstrip("# ").strip()
        assert tag not in out, f"{PAGE.name}: two blocks tagged {tag!r}"
        out[tag] = body
    return out


BLOCKS = _blocks()
CASES = sorted((t for t in BLOCKS if t != "setup"), key=lambda t: int(t.split("-")[1]))


def test_page_has_a_setup_and_every_deviation():
    assert "setup" in BLOCKS
    assert CASES == [f"LC-{i}" for i in range(1, len(CASES) + 1)], f"blocks found: {CASES}"


@pytest.mark.parametrize("tag", CASES)
def test_reproduction_reproduces(tag):
    namespace: dict = {}
    exec(compile(BLOCKS["setup"], f"{PAGE.name}:setup", "exec"), namespace)
    exec(compile(BLOCKS[tag], f"{PAGE.name}:{tag}", "exec"), namespace)


#: layers without dead inputs: on those llm-compressor sets H_jj = 1 (LC-4), a different H, which SGPT-1's
#: tolerance at the layer's own conditioning sees (7e-5 of the weights on make_layer('dead_inputs', 2, 11, 33, 1))
KINDS = ("gaussian", "outliers", "rank_deficient", "near_duplicate", "bf16_weights")


def test_their_sweep_is_the_obs_sweep_given_their_masks():
    """The page's positive claim: llm-compressor's SparseGPT weights are the reference OBS sweep replayed with
    its own masks (SGPT-1's oracle and float32 tolerance), on 125 layers x 3 settings; LC-1 is only the count."""
    import torch

    from rac.conformance.adapters import llmcompressor as port
    from rac.conformance.checking.oracles import sparsegpt_replay
    from rac.conformance.checking.strategies import make_layer
    from rac.conformance.checking.tolerances import MAX_REPLAY_RTOL, replay_rtol, score_rtol
    from rac.reference import parse_pattern

    eps = float(torch.finfo(torch.float32).eps)
    worst = 0.0
    for kind in KINDS:
        for seed in range(25):
            out_features, in_features = 1 + seed % 7, 4 + (seed * 7) % 33
            tokens = in_features // 2 + 1 if kind in ("rank_deficient", "mixed") else 3 * in_features
            layer = make_layer(kind, out_features, in_features, tokens, seed)
            for blocksize, dampening, sparsity in ((8, 0.01, 0.5), (128, 0.01, 0.3), (4, 0.1, 0.7)):
                weight, mask = port.prune_layer(layer.W, layer.H, method="sparsegpt", sparsity=sparsity,
                                                blocksize=blocksize, dampening=dampening)
                rtol = replay_rtol(eps, layer.H, dampening)  # SGPT-1's tolerance for a float32 port
                if rtol > MAX_REPLAY_RTOL:
                    continue  # as the suite: a layer float32 cannot resolve to 1 % is not used
                replay = sparsegpt_replay(layer.W, layer.H, mask, parse_pattern("unstructured"), sparsity, blocksize,
                                          dampening, rtol=2 * rtol + score_rtol(eps))  # raises on a wrong choice
                err = float((weight.double() - replay).abs().max()) / max(1.0, float(replay.abs().max()))
                assert err <= rtol, f"{layer.repro}, blocksize {blocksize}: weights off the OBS sweep by {err:.3g}"
                worst = max(worst, err / rtol)
    print(f"largest error / tolerance: {worst:.3g}")
