"""CAL-11, CAL-12: traces from a serving engine enter Phase I as token ids (reference/given_traces.py).

The engine is played by the model itself: its greedy traces, decoded by ``collect_calibration``, are
written out as token ids and fed back; the calibration set must be the one decoding made.
"""

from __future__ import annotations

import json

import pytest
import torch

import rac.fast
import rac.reference
from rac.cli.main import main
from rac.conformance.checking.fixture_models import fresh, problems, tokenizer
from rac.conformance.checking.helpers import req
from rac.reference import GivenTrace
from rac.reference.calibration import template_prompt

PROMPTS = [p for p in problems(4)]


def _decoded(name="llama", **kw):
    return rac.reference.collect_calibration(fresh(name), tokenizer(name), PROMPTS, mode="rac", max_new_tokens=12, **kw)


def _given(cs, with_prompt_ids=True):
    """The decoded set's traces as an engine would hand them over: (prompt ids, generated ids) per prompt."""
    tok = tokenizer("llama")
    out = []
    for problem, ids in zip(PROMPTS, cs.sequences):
        prompt = template_prompt(tok, problem)
        out.append(GivenTrace(ids[prompt.numel():].clone(), prompt.clone() if with_prompt_ids else None))
    return out


@req("CAL-11")
@pytest.mark.parametrize("impl", [rac.reference, rac.fast])
def test_cal_11_token_ids_give_the_set_decoding_gives(impl):
    """CAL-11: the model's own greedy traces given as token ids (with or without the prompt's ids) give the
    calibration set decoding gives: same sequences, same labels (decode for mode rac, offpolicy for mode
    offpolicy); the token budget cuts them as it cuts decoded traces."""
    decoded = _decoded()
    for with_prompt in (True, False):
        got = impl.collect_calibration(fresh("llama"), tokenizer("llama"), PROMPTS, mode="rac",
                                       trace_ids=_given(decoded, with_prompt))
        assert all(torch.equal(a, b) for a, b in zip(got.sequences, decoded.sequences))
        assert all(torch.equal(a, b) for a, b in zip(got.labels, decoded.labels))
        assert got.meta["trace_source"] == "token ids" and got.meta["policy_check"]["greedy_agreement"] == 1.0
    off = impl.collect_calibration(fresh("llama"), tokenizer("llama"), PROMPTS, mode="offpolicy",
                                   trace_ids=_given(decoded), token_budget=70)
    assert off.num_tokens == 70 and off.count("offpolicy") > 0 and off.count("decode") == 0
    budgeted = _decoded(token_budget=70)
    assert all(torch.equal(a, b) for a, b in zip(off.sequences, budgeted.sequences))


@req("CAL-11")
def test_cal_11_bad_token_ids_are_named():
    """CAL-11: prompt ids that are not the model's chat template of the problem, ids outside the vocabulary,
    a list of the wrong length, or a mode that takes no traces are ValueErrors naming the prompt or argument."""
    decoded = _decoded()
    given = _given(decoded)
    model, tok = fresh("llama"), tokenizer("llama")
    wrong = list(given)
    wrong[1] = GivenTrace(given[1].output_ids, given[1].prompt_ids[1:])  # the engine dropped the first token
    with pytest.raises(ValueError, match=r"trace_ids\[1\].prompt_ids are not the model's chat template"):
        rac.reference.collect_calibration(model, tok, PROMPTS, mode="rac", trace_ids=wrong)
    huge = list(given)
    huge[2] = GivenTrace(torch.tensor([10**7]), given[2].prompt_ids)
    with pytest.raises(ValueError, match=r"trace_ids\[2\].output_ids .* vocabulary"):
        rac.reference.collect_calibration(model, tok, PROMPTS, mode="rac", trace_ids=huge)
    with pytest.raises(ValueError, match="one entry .* per prompt"):
        rac.reference.collect_calibration(model, tok, PROMPTS, mode="rac", trace_ids=given[:2])
    with pytest.raises(ValueError, match="mode 'rac' or 'offpolicy'"):
        rac.reference.collect_calibration(model, tok, PROMPTS, mode="prompt", trace_ids=given)
    skipped = [given[0], None, given[2], None]
    cs = rac.reference.collect_calibration(model, tok, PROMPTS, mode="offpolicy", trace_ids=skipped)
    assert len(cs) == 2 and cs.meta["skipped"] == [1, 3]


@req("CAL-12")
def test_cal_12_an_on_policy_claim_is_checked():
    """CAL-12: greedy traces claimed on-policy (mode rac) are replayed: another model's traces, though in the
    same tokenizer, are refused ("not this model's traces"); sampled traces cannot be replayed, and their mean
    log-probability under the model is reported, higher for the model's own samples than for another's."""
    other = rac.reference.collect_calibration(fresh("qwen2"), tokenizer("llama"), PROMPTS, mode="rac",
                                              max_new_tokens=12)
    with pytest.raises(ValueError, match="not this model's traces"):
        rac.reference.collect_calibration(fresh("llama"), tokenizer("llama"), PROMPTS, mode="rac",
                                          trace_ids=_given(other))
    own = _decoded(temperature=1.0, seed=4)
    foreign = rac.reference.collect_calibration(fresh("qwen2"), tokenizer("llama"), PROMPTS, mode="rac",
                                                max_new_tokens=12, temperature=1.0, seed=4)
    checks = [rac.reference.collect_calibration(fresh("llama"), tokenizer("llama"), PROMPTS, mode="rac",
                                                temperature=1.0, trace_ids=_given(cs)).meta["policy_check"]
              for cs in (own, foreign)]
    assert all("greedy_agreement" not in c for c in checks)
    assert checks[0]["mean_logprob"] > checks[1]["mean_logprob"], checks


@req("CAL-11")
def test_cal_11_rac_prune_takes_an_engines_token_ids(tmp_path, capsys, monkeypatch):
    """CAL-11 (command): `rac prune --trace-ids FILE` (docs/traces.md's format) prunes to bitwise the model
    that decoding the same greedy traces itself gives, says where the traces came from, and refuses
    --prompts beside it."""
    from rac.cli.data import read_problems
    from rac.cli.export import load_model, load_tokenizer
    from rac.fixtures import TOY_REASONER, TOY_TRAIN

    monkeypatch.chdir(tmp_path)
    quick = ["--quiet", "--no-eval", "--max-new-tokens", "16", "--sparsity", "0.5"]
    assert main(["prune", *quick, "--num-prompts", "3", "--out", "decoded"]) == 0
    capsys.readouterr()
    model, tokn = load_model(TOY_REASONER), load_tokenizer(TOY_REASONER)
    problems3 = read_problems(TOY_TRAIN)[:3]
    cs = rac.reference.collect_calibration(model, tokn, [p["problem"] for p in problems3], mode="rac",
                                           max_new_tokens=16)
    with open("traces.jsonl", "w") as f:
        for p, ids in zip(problems3, cs.sequences):
            prompt = template_prompt(tokn, p["problem"])
            f.write(json.dumps({"id": p["id"], "problem": p["problem"], "prompt_ids": prompt.tolist(),
                                "output_ids": ids[prompt.numel():].tolist(), "sampling": {"temperature": 0}}) + "\n")
    assert main(["prune", *quick, "--trace-ids", "traces.jsonl", "--out", "given"]) == 0
    printed = capsys.readouterr().out
    assert "token ids from traces.jsonl" in printed and "greedy agreement with the model 1.000" in printed
    given, decoded = ((tmp_path / d / "model.safetensors").read_bytes() for d in ("given", "decoded"))
    same = given == decoded
    assert same, "CAL-11: pruning with the engine's token ids differs from pruning with the decoded traces"
    assert main(["prune", *quick, "--trace-ids", "traces.jsonl", "--prompts", "traces.jsonl"]) == 2
    assert "--prompts cannot be used with --trace-ids" in capsys.readouterr().err
