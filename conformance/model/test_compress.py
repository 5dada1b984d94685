"""P2-*: Phase II on whole models (``compress``), through the port's model level.

On the three tiny fixture architectures (Llama with GQA, Qwen2 with q/k/v biases, Qwen3
with q/k norms). Calibration sets are made with the reference's ``collect_calibration``
(greedy, a few prompts, short traces) so that a port's Phase II is judged on the same
tokens as the reference's.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from rac.conformance.checking.helpers import needs_level, req
from rac.conformance.checking.checks import assert_counts, assert_nm, groups
from rac.conformance.checking.fixture_models import (
    MLP,
    MODEL_NAMES,
    fresh,
    linear_inputs,
    problems,
    same,
    state,
    target_weights,
    tokenizer,
)
from rac.reference import LABELS, CalibrationSet, collect_calibration
from rac.reference.contract.models import decoder_blocks
from rac.reference.compress import resolve_blocks


@pytest.fixture
def compress(port):
    """The port's compress (skips when the port has no model level)."""
    needs_level(port, "model")
    return port.compress


@lru_cache(maxsize=None)
def calibration(name: str, mode: str = "rac", n: int = 3, max_new_tokens: int = 12) -> CalibrationSet:
    """A small calibration set of the dense fixture model: greedy, ``n`` prompts (made once; read-only)."""
    return collect_calibration(
        fresh(name), tokenizer(name), list(problems(n)), mode=mode, max_new_tokens=max_new_tokens
    )


# --------------------------------------------------------------------------- P2-1


CASES = [
    ("sparsegpt", 0.5, "unstructured", {}),
    ("wanda", None, "2:4", {}),
    ("magnitude", None, "1:4", {}),
    ("alps", 0.3, "unstructured", {"max_iter": 60}),
]


@req("P2-1")
@pytest.mark.parametrize("method,sparsity,pattern,options", CASES, ids=[c[0] + "-" + c[2] for c in CASES])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_1_every_target_reaches_the_pattern(compress, name, method, sparsity, pattern, options):
    """P2-1: after compress, every target linear holds exactly floor(s * |g|) zeros in each comparison
    group of its method (CNT-2) or exactly N non-zeros in each aligned group of M (NM-1), 1:4 read
    as 1 kept. The dense fixture weights hold no exact zero (checked), so zeros are the mask."""
    model = fresh(name)
    dense = {k: v.clone() for k, v in target_weights(model).items()}
    assert all(bool((w != 0).all()) for w in dense.values()), "precondition: no exact zero in the dense fixture weights"
    compress(model, calibration(name), method=method, sparsity=sparsity, pattern=pattern, **options)
    for (i, lin), weight in target_weights(model).items():
        mask = weight != 0
        where = f"P2-1 ({name}, block {i}, {lin})"
        if pattern == "unstructured":
            assert_counts(where, mask, groups(method, tuple(weight.shape), options), sparsity)
        else:
            n, m = map(int, pattern.split(":"))
            assert_nm(where, mask, weight, n, m)


# --------------------------------------------------------------------------- P2-2


@req("P2-2")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_2_everything_outside_the_targets_is_bitwise_unchanged(compress, name):
    """P2-2: embeddings, norms (incl. Qwen3's q/k norms), biases (Qwen2's q/k/v), the LM head and
    every linear outside the scope keep their exact bits; with blocks="first_third" and
    targets=["mlp"], only the MLP linears of the first third change."""
    model = fresh(name)
    before = state(model)
    scope = resolve_blocks("first_third", len(decoder_blocks(model)))
    compress(model, calibration(name), method="wanda", sparsity=0.5, blocks="first_third", targets=["mlp"])
    after = state(model)
    changed = {k for k in before if not same(before[k], after[k])}
    expected = {f"model.layers.{i}.{lin}.weight" for i in scope for lin in MLP}
    assert changed == expected, f"P2-2 ({name}): changed {sorted(changed ^ expected)} beyond / short of the targets"


# --------------------------------------------------------------------------- P2-3


@req("P2-3")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_3_linears_sharing_an_input_share_one_hessian(compress, name):
    """P2-3: q/k/v (one input) share one H, gate/up share one, o and down each have their own: the
    report names the shared group, and the shared linears report the same token counts."""
    model = fresh(name)
    _, report = compress(model, calibration(name), method="magnitude", sparsity=0.5)
    for i in range(len(decoder_blocks(model))):
        rows = {r["name"]: r for r in report["layers"] if r["block"] == i}
        group = {n: rows[n]["hessian_group"] for n in rows}
        assert group["self_attn.q_proj"] == group["self_attn.k_proj"] == group["self_attn.v_proj"], f"P2-3 block {i}"
        assert group["mlp.gate_proj"] == group["mlp.up_proj"], f"P2-3 block {i}"
        distinct = {
            group["self_attn.q_proj"],
            group["self_attn.o_proj"],
            group["mlp.gate_proj"],
            group["mlp.down_proj"],
        }
        assert len(distinct) == 4, f"P2-3 ({name}, block {i}): o_proj and down_proj must not share an H: {group}"


# --------------------------------------------------------------------------- P2-4, P2-6


@req("P2-4")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_4_padding_never_contributes(compress, name):
    """P2-4: batches of variable-length sequences are right-padded; whatever token fills the padding,
    the pruned model is bitwise the same (real tokens never attend to padding, padding is never
    summed into H), and the report counts exactly the real tokens of each source."""
    calib = calibration(name, n=3)
    assert len({s.numel() for s in calib.sequences}) > 1, "precondition: sequences of different lengths"
    results = []
    for pad in (2, 7):
        model = fresh(name)
        model.config.pad_token_id = pad
        _, report = compress(model, calib, method="sparsegpt", sparsity=0.5, batch_size=3)
        results.append(state(model))
        for row in report["layers"]:
            assert row["tokens"] == {lab: calib.count(lab) for lab in LABELS if calib.count(lab)}, (
                f"P2-4 ({name}): the report counts {row['tokens']} tokens, padding included?"
            )
    assert all(same(results[0][k], results[1][k]) for k in results[0]), (
        f"P2-4 ({name}): the pad token changed the result"
    )


@req("P2-6")
@pytest.mark.parametrize("propagation", ["dense", "sequential"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_6_objective_is_measured_on_the_propagated_inputs(compress, port, measure, name, propagation):
    """P2-6: each reported objective equals ||(W - W_hat) X||_F^2 with X the inputs the propagation
    defines, gathered by an independent oracle (forward hooks) over the same right-padded batches:
    "dense": the dense model's inputs for every linear; "sequential": for q/k/v of block l (the only
    linears whose input comes before any linear of block l, so it depends only on the pruned blocks
    0..l-1), the inputs in the finished pruned model. (gate/up inputs depend on block l's own
    attention, which compress reads dense, as SparseGPT does: one pass per block.)
    Both sides do the same float32 computations on the same shapes, so the inputs are the same
    numbers and the weights are the stored ones; what differs is the arithmetic of H and of
    tr(D H D^T) in the port's dtype. Whatever the summation order, a sum of n terms in a dtype of
    unit roundoff u = eps/2 is off by at most gamma_n = n u / (1 - n u) times the sum of the
    terms' magnitudes (Higham, Thm 3.1 / 3.5), so with A = sum_rows || |X| |d_row| ||^2 >= every
    |term| sum: |report - truth| <= gamma_{N + in + 2} A (N tokens into H, in-long dot products, the
    per-source sum). On these layers A <= ~50x the objective: ~1e-12 relative in float64, ~1e-4
    in float32; both still catch wrong inputs (a propagation or grouping error moves the
    objective by O(1)); a single padded token is P2-4's job.
    """
    calib = calibration(name, n=3)
    model = fresh(name)
    dense_model = fresh(name)
    dense_w = target_weights(dense_model)
    pad = model.config.pad_token_id
    _, report = compress(model, calib, method="sparsegpt", sparsity=0.5, propagation=propagation, batch_size=2)
    X = linear_inputs(dense_model if propagation == "dense" else model, calib, 2, pad)
    pruned_w = target_weights(model)
    first_of_block = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    checked = 0
    for row in report["layers"]:
        key = (row["block"], row["name"])
        if propagation == "sequential" and row["name"] not in first_of_block:
            continue
        delta = dense_w[key].double() - pruned_w[key].double()
        truth = float(((X[key] @ delta.T) ** 2).sum())
        A = float(((X[key].abs() @ delta.abs().T) ** 2).sum())
        n = X[key].shape[0] + delta.shape[1] + 2
        gamma = n * port.eps / 2 / (1 - n * port.eps / 2)
        measure("P2-6", abs(row["objective"] - truth) / truth, gamma * A / truth, "relative to the objective")
        assert abs(row["objective"] - truth) <= gamma * A, (
            f"P2-6 ({name}, {propagation}, {key}): report {row['objective']:.10g} vs oracle {truth:.10g} "
            f"(bound {gamma * A:.3g})"
        )
        checked += 1
    assert checked >= 3 * len(decoder_blocks(model))


# --------------------------------------------------------------------------- P2-5


@req("P2-5")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_5_sequential_and_dense_agree_on_block_0_only(compress, name):
    """P2-5: block 0 sees the same inputs under both propagations (bitwise the same result); a later
    block sees the pruned block 0's outputs under "sequential" and the dense ones under "dense", so
    at least one later weight differs."""
    calib = calibration(name)
    seq, dense = fresh(name), fresh(name)
    compress(seq, calib, method="sparsegpt", sparsity=0.5, propagation="sequential")
    compress(dense, calib, method="sparsegpt", sparsity=0.5, propagation="dense")
    a, b = target_weights(seq), target_weights(dense)
    assert all(same(a[k], b[k]) for k in a if k[0] == 0), f"P2-5 ({name}): block 0 differs between propagations"
    assert any(not same(a[k], b[k]) for k in a if k[0] > 0), (
        f"P2-5 ({name}): later blocks identical: is propagation used?"
    )


# --------------------------------------------------------------------------- P2-7


@req("P2-7")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_7_report_splits_the_objective_by_source(compress, name):
    """P2-7: one report row per target linear with the sparsity reached (= the fraction of zeros),
    the objective, and its split by token source; the parts add up to the total (float64 sums
    of the same terms regrouped: 1e-12 relative), prompt and decode both present for rac."""
    model = fresh(name)
    calib = calibration(name)
    _, report = compress(model, calib, method="sparsegpt", sparsity=0.5)
    weights = target_weights(model)
    assert sorted((r["block"], r["name"]) for r in report["layers"]) == sorted(weights), "P2-7: one row per target"
    for row in report["layers"]:
        w = weights[row["block"], row["name"]]
        assert row["sparsity"] == pytest.approx(float((w == 0).double().mean()), abs=0), f"P2-7 {row['name']}"
        parts = row["objective_by_source"]
        assert set(parts) == {"prompt", "decode"}, (
            f"P2-7: rac calibration has prompt and decode tokens, got {set(parts)}"
        )
        assert math.isclose(sum(parts.values()), row["objective"], rel_tol=1e-12)
        assert row["tokens"] == {"prompt": calib.count("prompt"), "decode": calib.count("decode")}


# --------------------------------------------------------------------------- P2-8


@req("P2-8")
def test_p2_8_block_scopes():
    """P2-8: the paper's scopes in decoder blocks: a third is max(1, L // 3) blocks."""
    assert resolve_blocks("first_third", 3) == [0] and resolve_blocks("last_third", 3) == [2]
    assert resolve_blocks("first_last_third", 3) == [0, 2] and resolve_blocks("first_last_third", 2) == [0, 1]
    assert resolve_blocks("first_third", 28) == list(range(9))
    assert resolve_blocks("first_last_third", 28) == list(range(9)) + list(range(19, 28))
    assert resolve_blocks(None, 4) == resolve_blocks("all", 4) == [0, 1, 2, 3]
    assert resolve_blocks([2, 0, 2], 3) == [0, 2]


@req("P2-8")
@pytest.mark.parametrize("name", ["qwen2"])
def test_p2_8_scope_limits_what_is_pruned(compress, name):
    """P2-8: blocks=[1] with targets=["q_proj", "down_proj"] prunes exactly those two linears of block 1."""
    model = fresh(name)
    before = state(model)
    _, report = compress(
        model, calibration(name), method="magnitude", sparsity=0.5, blocks=[1], targets=["q_proj", "down_proj"]
    )
    after = state(model)
    changed = {k for k in before if not same(before[k], after[k])}
    assert changed == {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    assert [(r["block"], r["name"]) for r in report["layers"]] == [(1, "self_attn.q_proj"), (1, "mlp.down_proj")]


# --------------------------------------------------------------------------- P2-9


BAD = [
    (dict(method="obs", sparsity=0.5), "method"),
    (dict(method="sparsegpt", sparsity=1.5), "sparsity"),
    (dict(method="sparsegpt", sparsity=0.5, pattern="2:4"), "sparsity"),
    (dict(method="wanda", pattern="3:7"), "divisible"),
    (dict(method="sparsegpt", sparsity=0.5, propagation="greedy"), "propagation"),
    (dict(method="sparsegpt", sparsity=0.5, blocks=[7]), "blocks"),
    (dict(method="sparsegpt", sparsity=0.5, blocks="middle_third"), "blocks"),
    (dict(method="sparsegpt", sparsity=0.5, targets=["lm_head"]), "targets"),
    (dict(method="sparsegpt", sparsity=0.5, batch_size=0), "batch_size"),
    (dict(method="sparsegpt", sparsity=0.5, blocksize=0), "blocksize"),
    (dict(method="alps", sparsity=0.5, rho0=-1.0), "rho0"),
]


@req("P2-9")
@pytest.mark.parametrize("kwargs,word", BAD, ids=[w + str(i) for i, (_, w) in enumerate(BAD)])
def test_p2_9_bad_arguments_fail_before_any_change(compress, kwargs, word):
    """P2-9: bad arguments raise ValueError/TypeError naming the argument, and the model is untouched
    (every request is checked for every target before the first weight changes)."""
    model = fresh("llama")
    before = state(model)
    with pytest.raises((ValueError, TypeError), match=word):
        compress(model, calibration("llama"), **kwargs)
    after = state(model)
    assert all(same(before[k], after[k]) for k in before), "P2-9: a failed call changed the model"


@req("P2-9")
def test_p2_9_empty_calibration_is_refused(compress):
    """P2-9: an empty calibration set is refused by name."""
    with pytest.raises(ValueError, match="calibration"):
        compress(fresh("llama"), CalibrationSet([], []), method="wanda", sparsity=0.5)


@req("P2-9")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_9_nan_activations_are_reported_and_nothing_is_half_done(compress, name):
    """P2-9: NaN/Inf reaching a target's input (here: block 1's input norm made infinite, as an
    fp16 overflow would) raises an error naming block 1 and the module; block 0, already pruned
    by then, is restored, so the model is exactly as it was."""
    model = fresh(name)
    with torch.no_grad():
        decoder_blocks(model)[1].input_layernorm.weight.fill_(float("inf"))
    before = state(model)
    with pytest.raises((ValueError, FloatingPointError), match=r"block 1.*q_proj"):
        compress(model, calibration(name), method="sparsegpt", sparsity=0.5)
    after = state(model)
    assert all(same(before[k], after[k]) for k in before), f"P2-9 ({name}): pruned weights left behind after the error"


# --------------------------------------------------------------------------- P2-10


@req("P2-10")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_p2_10_same_seed_same_model(compress, name):
    """P2-10: Phase I with sampling (T 0.7, top-p 0.95) and the same seed, then Phase II, twice:
    bitwise the same pruned model; rac with max_new_tokens=0 prunes exactly as prompt mode does."""
    results = []
    for _ in range(2):
        model = fresh(name)
        calib = collect_calibration(
            model, tokenizer(name), list(problems(2)), mode="rac", max_new_tokens=8, temperature=0.7, top_p=0.95, seed=5
        )
        compress(model, calib, method="sparsegpt", sparsity=0.4)
        results.append(state(model))
    assert all(same(results[0][k], results[1][k]) for k in results[0]), f"P2-10 ({name}): two runs differ"
    zero, prompt = fresh(name), fresh(name)
    compress(zero, calibration(name, "rac", max_new_tokens=0), method="sparsegpt", sparsity=0.4)
    compress(prompt, calibration(name, "prompt"), method="sparsegpt", sparsity=0.4)
    a, b = state(zero), state(prompt)
    assert all(same(a[k], b[k]) for k in a), f"P2-10 ({name}): rac with no new tokens must prune as prompt mode"
