"""Calibration variants that followed RAC (spec section 19, VAR-*): token weights in H in both
implementations, decode-only, stream-normalised weights, trace selection, regeneration.

The oracle shares no code with Phase II: X from plain forward hooks on the dense model
(``linear_inputs``), the weights computed here from the labels, H = X^T diag(w) X, and
``prune_layer`` on that H.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

import pytest
import torch

from rac.conformance.checking.fixture_models import fresh, linear_inputs, problems, target_weights, tokenizer
from rac.conformance.checking.helpers import req
from rac.reference import collect_calibration, compress, prune_layer
from rac.reference.calibration_set import LABELS, CalibrationSet
from rac.reference.variants import decode_only, regenerate, select_traces, stream_normalised

fast = importlib.import_module("rac.fast")
fast_compress = importlib.import_module("rac.fast.compress")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NAME = "qwen3"
PROMPT, DECODE = LABELS.index("prompt"), LABELS.index("decode")


@lru_cache(maxsize=None)
def rac_set(n: int = 3, max_new_tokens: int = 12) -> CalibrationSet:
    return collect_calibration(fresh(NAME), tokenizer(NAME), list(problems(n)), mode="rac",
                               max_new_tokens=max_new_tokens)


def _objective(W, W_hat, H) -> float:
    D = W.double() - W_hat.double()
    return float(((D @ H) * D).sum())


def _pruned(impl, calib, method, sparsity=0.5):
    model = fresh(NAME)
    kw = dict(method=method, sparsity=sparsity, propagation="dense", batch_size=2)
    (compress if impl == "reference" else fast_compress.compress)(model, calib, **kw)
    return target_weights(model)


def check_against_oracle(calib, w, method, impl, sparsity=0.5):
    """Every layer ``impl`` prunes on ``calib`` follows H = sum_t w_t x_t x_t^T with the test's own ``w``
    (one entry per token, in set order). The rule is EQV-2's: the mask equals the oracle's on the float64 H,
    or the one the oracle picks from a float32-accumulated H (float32 is rac.fast's accumulation; a
    near-tie it flips is not an error), and the objective (on the float64 H) is within twice what the
    float32 H costs plus 8 eps32 of ||WX||^2 (the floor where that cost happens to be 0)."""
    pruned = _pruned(impl, calib, method, sparsity)
    dense = fresh(NAME)
    X = linear_inputs(dense, calib, 2, dense.config.pad_token_id)
    W0 = target_weights(dense)
    for key, W in W0.items():
        x = X[key]
        assert x.shape[0] == w.numel()
        H64 = x.T @ (x * w.unsqueeze(1))
        x32 = x.float()
        H32 = (x32.T @ (x32 * w.float().unsqueeze(1))).double()
        oracle = prune_layer(W.double(), H64, method=method, sparsity=sparsity)
        plain = prune_layer(W.double(), H32, method=method, sparsity=sparsity)
        mask = pruned[key] != 0
        f_impl, f_oracle = _objective(W, pruned[key], H64), _objective(W, oracle.weight.float(), H64)
        cost_plain = abs(_objective(W, plain.weight.float(), H64) - f_oracle)
        energy = _objective(W, torch.zeros_like(W), H64)
        bound = 2 * cost_plain + 8 * torch.finfo(torch.float32).eps * energy
        assert torch.equal(mask, oracle.mask) or torch.equal(mask, plain.mask), (
            f"{impl} {method} {key}: {int((mask != oracle.mask).sum())} mask entries differ from H = sum w x x^T"
        )
        assert abs(f_impl - f_oracle) <= bound, f"{impl} {key}: objective {f_impl:.6g} vs {f_oracle:.6g}"
    return pruned


def _flat(calib, fn) -> torch.Tensor:
    return torch.cat([fn(lab) for lab in calib.labels]).double()


# --------------------------------------------------------------------------- VAR-1, VAR-2


@req("VAR-2")
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_var_2_decode_only_is_rac_with_prompt_rows_weighted_0(impl):
    """VAR-2 (and VAR-1 for both implementations): decode_only prunes as H over the decode tokens only
    (prompt rows weight 0, still run as context), and not as rac."""
    calib = rac_set()
    variant = decode_only(calib)
    assert variant.sequences == calib.sequences and variant.weighted
    w = _flat(calib, lambda lab: (lab != PROMPT).double())
    assert 0 < int(w.sum()) < w.numel()  # both kinds of token present, or the test could not fail
    pruned = check_against_oracle(variant, w, "sparsegpt", impl)
    rac = _pruned(impl, calib, "sparsegpt")
    assert any(not torch.equal(pruned[k] != 0, rac[k] != 0) for k in rac), "decode_only pruned exactly as rac"


@req("VAR-1")
def test_var_1_weights_survive_save_and_load_and_are_checked(tmp_path):
    """VAR-1: a weighted set saves its weights and loads them back; bad weights are refused, naming them."""
    variant = stream_normalised(rac_set(), {"prompt": 1.0, "decode": 3.0})
    back = CalibrationSet.load(variant.save(tmp_path / "v.jsonl"))
    assert back.weighted
    for i in range(len(variant)):
        assert torch.equal(back.token_weights(i), variant.token_weights(i))
    seqs, labs = rac_set().sequences[:1], rac_set().labels[:1]
    bad = seqs[0].double() * 0 - 1
    with pytest.raises(ValueError, match="weights"):
        CalibrationSet(seqs, labs, weights=[bad])
    with pytest.raises(ValueError, match="weights"):
        CalibrationSet(seqs, labs, weights=[torch.ones(seqs[0].numel() + 1, dtype=torch.float64)])


# --------------------------------------------------------------------------- VAR-3


@req("VAR-3")
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_var_3_stream_normalised_weights(impl):
    """VAR-3: token of source s gets N w_s / (N_s sum w) (the test's own arithmetic), the weights add up to
    N, both implementations prune with that H (Wanda), and the result is not rac's."""
    calib = rac_set()
    user = {"prompt": 1.0, "decode": 2.0}
    variant = stream_normalised(calib, user)
    n, n_p, n_d = calib.num_tokens, calib.count("prompt"), calib.count("decode")
    expect = {PROMPT: n * 1.0 / (n_p * 3.0), DECODE: n * 2.0 / (n_d * 3.0)}
    w = _flat(calib, lambda lab: torch.tensor([expect[int(c)] for c in lab], dtype=torch.float64))
    got = torch.cat([variant.token_weights(i) for i in range(len(variant))])
    # float64: each weight is one division and one product from the same counts (a few ulp)
    assert torch.allclose(got, w, rtol=8 * torch.finfo(torch.float64).eps, atol=0)
    assert abs(float(got.sum()) - n) <= 8 * n * torch.finfo(torch.float64).eps * got.numel()
    pruned = check_against_oracle(variant, w, "wanda", impl)
    rac = _pruned(impl, calib, "wanda")
    assert any(not torch.equal(pruned[k] != 0, rac[k] != 0) for k in rac), "stream_norm pruned exactly as rac"


@req("VAR-3")
def test_var_3_bad_stream_weights_name_the_argument():
    calib = rac_set()
    for bad, pattern in (({"decode": 1.0}, "no weight for the source"), ({"prompt": 1, "decode": -1}, "weights\\["),
                         ({"prompt": 1, "decode": 1, "speech": 1}, "unknown source"),
                         ({"prompt": 0, "decode": 0}, "all have weight 0"), ([1, 2], "must be a dict")):
        with pytest.raises((ValueError, TypeError), match=pattern):
            stream_normalised(calib, bad)


# --------------------------------------------------------------------------- VAR-4


def _toy_pool():
    """Four prompt+decode sequences: decode lengths 5, 2, 7, 3; the one of length 7 never closes (no 9, 9)."""
    seqs, labs = [], []
    for trace in ([1, 2, 9, 9, 3], [9, 9], [4, 4, 4, 4, 4, 4, 4], [5, 9, 9]):
        ids = torch.tensor([7, 7] + trace, dtype=torch.long)
        seqs.append(ids)
        labs.append(torch.tensor([PROMPT] * 2 + [DECODE] * len(trace), dtype=torch.long))
    return CalibrationSet(seqs, labs, {"mode": "rac"})


@req("VAR-4")
def test_var_4_selection_keeps_closed_traces_by_length_and_cuts_to_the_budget():
    pool = _toy_pool()
    short = select_traces(pool, 9, close_ids=[9, 9], rule="shortest")
    # closed: decode lengths 2 (seq 1), 3 (seq 3), 5 (seq 0); shortest first: 4 + 5 tokens = 9
    assert [s.tolist() for s in short.sequences] == [[7, 7, 9, 9], [7, 7, 5, 9, 9]]
    long = select_traces(pool, 10, close_ids=[9, 9], rule="longest")
    # longest closed first: seq 0 (7 tokens), then seq 3 cut to the 3 tokens left
    assert [s.tolist() for s in long.sequences] == [[7, 7, 1, 2, 9, 9, 3], [7, 7, 5]]
    assert long.num_tokens == 10 and long.meta["pool_closed"] == 3
    with pytest.raises(ValueError, match="token_budget=17"):  # the closed traces hold 16 tokens
        select_traces(pool, 17, close_ids=[9, 9])
    with pytest.raises(ValueError, match="rule"):
        select_traces(pool, 5, close_ids=[9, 9], rule="median")


# --------------------------------------------------------------------------- VAR-5


@req("VAR-5")
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_var_5_regeneration_with_nothing_pruned_first_is_rac(impl):
    """VAR-5: one step is rac; a first step at sparsity 0 (nothing pruned) then 50 % is rac, bitwise; a
    first step at 25 % regenerates different traces and ends elsewhere."""
    collect, comp = (collect_calibration, compress) if impl == "reference" else (fast.collect_calibration,
                                                                                  fast.compress)
    prompts, ck = list(problems(3)), dict(max_new_tokens=12)
    base = fresh(NAME)
    calib = collect(base, tokenizer(NAME), prompts, mode="rac", **ck)
    comp(base, calib, method="sparsegpt", sparsity=0.5)
    want = target_weights(base)

    def run(schedule):
        model, reports, sets = regenerate(fresh(NAME), tokenizer(NAME), prompts, schedule, method="sparsegpt",
                                          collect=collect, compress=comp, collect_kwargs=ck)
        return target_weights(model), sets

    for schedule in ([("unstructured", 0.5)], [("unstructured", 0.0), ("unstructured", 0.5)]):
        got, _ = run(schedule)
        assert all(torch.equal(got[k], want[k]) for k in want), f"{impl} {schedule}: not rac"
    got, sets = run([("unstructured", 0.25), ("unstructured", 0.5)])
    assert any(not torch.equal(a, b) for a, b in zip(sets[1].sequences, calib.sequences)), "traces not regenerated"
    assert any(not torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="schedule"):
        regenerate(fresh(NAME), tokenizer(NAME), prompts, [("unstructured", 0.5), ("unstructured", 0.25)],
                   method="sparsegpt")


# --------------------------------------------------------------------------- VAR-6


@req("VAR-6")
def test_var_6_experiment_runs_the_variants_at_the_same_budget(tmp_path):
    """VAR-6: ``rac experiment`` runs every variant as a column, each set at exactly the token budget
    (regen: each step's), decode_only/stream_norm on rac's very tokens, select_short on closed traces."""
    import json

    from rac.cli.main import main as rac_main

    budget = 256
    out = tmp_path / "out"
    code = rac_main(["experiment", "--methods", "wanda", "--sparsities", "0.5", "--patterns", "none",
                     "--token-budget", str(budget), "--num-eval", "2", "--max-new-tokens", "160",
                     "--calibrations", "rac,decode_only,stream_norm,select_short,select_long,regen",
                     "--source-weights", "prompt=1,decode=1", "--threads", "1", "--quiet", "--no-plot",
                     "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    cal = results["calibration"]
    assert sorted(cal) == ["decode_only", "rac", "select_long", "select_short", "stream_norm"]
    for mode, summary in cal.items():
        assert summary["tokens"] == budget, mode
    assert cal["decode_only"]["prompt"] == cal["rac"]["prompt"] and cal["decode_only"]["meta"]["variant"]
    assert cal["select_short"]["meta"]["selection_rule"] == "shortest"
    assert cal["select_short"]["sequences"] >= cal["select_long"]["sequences"]  # shorter traces: at least as many
    cells = {c["calibration"]: c for c in results["cells"]}
    assert set(cells) == set(cal) | {"regen"}
    steps = cells["regen"]["regen_steps"]
    assert [s["schedule_step"] for s in steps] == [["unstructured", 0.25], ["unstructured", 0.5]]
    assert all(s["tokens"] == budget for s in steps)
    with pytest.raises(ValueError, match="source-weights"):
        from rac.cli.commands.experiment import source_weights_arg

        source_weights_arg("prompt=1,speech=2")
