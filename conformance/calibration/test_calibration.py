"""CAL-*: Phase I, the calibration set (``collect_calibration``).

Model level, on the three tiny fixture models (fixtures/models/{llama,qwen2,qwen3}) and
a few fixture problems. Tests that take ``collect`` drive the port under test (the
"calibration" level of the port protocol); the few that check how the reference
decodes (capture during decoding, one forward per token, the sampler's pieces)
call ``rac.reference`` directly and say so.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rac.conformance.checking.helpers import needs_level, req
from rac.reference.calibration import LABELS, collect_calibration, template_prompt
from rac.reference.sampling import sample_next_token, top_p_filter
from rac.reference.contract.models import decoder_blocks
from rac.cli.data import align_traces, read_corpus, read_problems, read_traces

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MODELS = ("llama", "qwen2", "qwen3")
PROMPT, DECODE, OFFPOLICY, TEXT = (LABELS.index(x) for x in ("prompt", "decode", "offpolicy", "text"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def loaded():
    """Each fixture model and its tokenizer, loaded once for the module."""
    cache = {}

    def get(name):
        if name not in cache:
            d = FIXTURES / "models" / name
            cache[name] = (AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d))
        return cache[name]

    return get


@pytest.fixture
def collect(port):
    """The port's collect_calibration (skips when the port has no calibration level)."""
    needs_level(port, "calibration")
    return port.collect_calibration


@pytest.fixture(scope="module")
def problems():
    return read_problems(FIXTURES / "data" / "problems.jsonl")


@pytest.fixture(scope="module")
def prompts(problems):
    return [p["problem"] for p in problems[:4]]


def _eos_heavy(model, factor=2.0):
    """A copy whose EOS logit row is scaled up, so greedy traces end at EOS after a few tokens
    (the fixtures shrink that row by 0.8 so that EOS is rare): both stop reasons get exercised."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.lm_head.weight[1] *= factor
    return m


def _generate(model, prompt_ids, max_new_tokens):
    """Hugging Face greedy generation: the reference point for CAL-2."""
    ids = prompt_ids[None]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=1, pad_token_id=2)
    return out[0]


class _count_forwards:
    """Counts the model's forward calls (a forward hook on the top module) while active."""

    def __init__(self, model):
        self.model, self.calls = model, [0]

    def __enter__(self):
        self.handle = self.model.register_forward_hook(lambda *a: self.calls.__setitem__(0, self.calls[0] + 1))
        return self.calls

    def __exit__(self, *exc):
        self.handle.remove()


def _chat_ids(tok, problem):
    """The templated prompt straight from the tokenizer (independent of template_prompt)."""
    turn = [{"role": "user", "content": problem}]
    return tok.apply_chat_template(turn, add_generation_prompt=True, return_dict=False)


# --------------------------------------------------------------------------- CAL-1


@req("CAL-1")
@pytest.mark.parametrize("name", MODELS)
def test_cal_1_decode_time_capture_equals_teacher_forced(loaded, prompts, name, measure):
    """CAL-1: the block inputs captured while decoding (prompt forward + one-token KV-cache steps)
    equal those of one teacher-forced forward over the finished sequence (causality: Phase II may
    recompute the decode-time activations of Algorithm 1 from the token ids alone). One trace ends
    at the limit, one (EOS-heavy copy of the model) at EOS: the last token is fed through too."""
    model, tok = loaded(name)
    cs = collect_calibration(model, tok, prompts[:1], mode="rac", max_new_tokens=24, capture=True)
    heavy = _eos_heavy(model, 3.0)
    cs_eos = collect_calibration(heavy, tok, prompts[:1], mode="rac", max_new_tokens=24, capture=True)
    assert cs_eos.meta["trace_stops"]["eos"] == 1, "CAL-1: the EOS-heavy model should end its trace at EOS"
    _assert_capture_matches(model, cs, name, measure)
    _assert_capture_matches(heavy, cs_eos, name, measure)


def _assert_capture_matches(model, cs, name, measure):
    model64 = copy.deepcopy(model).double()
    L = len(decoder_blocks(model))
    for ids, acts in zip(cs.sequences, cs.activations):
        assert acts.shape == (L, ids.numel(), model.config.hidden_size), "CAL-1: activations: [blocks, seq, hidden]"
        # hidden_states[l] is the input of block l for l < L (the last one is after the final norm)
        with torch.no_grad():
            truth = torch.stack(model64(input_ids=ids[None], output_hidden_states=True).hidden_states[:L])[:, 0]
            forced = torch.stack(model(input_ids=ids[None], output_hidden_states=True).hidden_states[:L])[:, 0]
        err_capture = float((acts.double() - truth).abs().max())
        err_forced = float((forced.double() - truth).abs().max())
        # Both paths compute the same maths in float32, in different orders (a KV cache and one
        # query per step vs one causal forward). Each is a float32 rounding of the float64 truth,
        # so, as the FlashAttention rule for comparing kernels has it, the decode-time error may be
        # at most twice the teacher-forced float32 error; the floor (1e-6 of max|x|, ~8 eps32) covers
        # sequences where the float32 errors happen to be tiny. A wrong position, offset or a missed
        # step gives O(max|x|) errors.
        bound = 2 * err_forced + 1e-6 * float(truth.abs().max())
        measure("CAL-1", err_capture, bound, "max |capture - float64 truth|")
        assert err_capture <= bound, f"CAL-1 ({name}): capture vs teacher forcing {err_capture:.3g} > {bound:.3g}"


# --------------------------------------------------------------------------- CAL-2


@req("CAL-2")
@pytest.mark.parametrize("eos_heavy", [False, True], ids=["fixture", "eos-heavy"])
@pytest.mark.parametrize("name", MODELS)
def test_cal_2_greedy_traces_equal_hf_generate(collect, loaded, prompts, name, eos_heavy):
    """CAL-2: greedy rac traces equal model.generate(do_sample=False) token for token (same prompt
    ids, max_new_tokens and EOS), including traces that end at EOS (EOS kept, as generate returns it)."""
    model, tok = loaded(name)
    model = _eos_heavy(model) if eos_heavy else model
    n = 24
    cs = collect(model, tok, prompts, mode="rac", max_new_tokens=n)
    stopped = 0
    for i, (problem, ids) in enumerate(zip(prompts, cs.sequences)):
        with torch.no_grad():
            ref = _generate(model, torch.tensor(_chat_ids(tok, problem)), n)
        assert torch.equal(ids, ref), f"CAL-2 ({name}, prompt {i}): rac trace {ids.tolist()} != generate {ref.tolist()}"
        stopped += int(ref.numel() < len(_chat_ids(tok, problem)) + n)
    assert cs.meta["trace_stops"]["eos"] == stopped, "CAL-2: meta must count the traces that ended at EOS"
    if eos_heavy:
        assert stopped > 0, "CAL-2: the EOS-heavy model should end some traces at EOS (the EOS path is untested)"


# --------------------------------------------------------------------------- CAL-3


@req("CAL-3")
@pytest.mark.parametrize("name", MODELS)
def test_cal_3_rac_with_zero_new_tokens_is_prompt(collect, loaded, prompts, name):
    """CAL-3: rac with max_new_tokens=0 gives exactly the prompt set (ids and labels)."""
    model, tok = loaded(name)
    rac = collect(model, tok, prompts, mode="rac", max_new_tokens=0, temperature=0.7)
    ref = collect(model, tok, prompts, mode="prompt")
    assert len(rac) == len(ref) == len(prompts)
    for a, b in zip(list(rac.sequences) + list(rac.labels), list(ref.sequences) + list(ref.labels)):
        assert torch.equal(a, b), "CAL-3: rac with max_new_tokens=0 must equal the prompt mode"


@req("CAL-3")
def test_cal_3_reference_prompt_phase_is_one_computation(loaded, prompts):
    """CAL-3 (reference): with capture, rac at max_new_tokens=0 and prompt capture bitwise the same
    block inputs: the prompt phase (Algorithm 1 line 3) is one and the same forward in both modes."""
    model, tok = loaded("qwen3")
    rac = collect_calibration(model, tok, prompts, mode="rac", max_new_tokens=0, temperature=0.7, capture=True)
    ref = collect_calibration(model, tok, prompts, mode="prompt", capture=True)
    for a, b in zip(rac.activations, ref.activations):
        assert torch.equal(a, b), "CAL-3: the prompt forward must be the same computation in both modes"


# --------------------------------------------------------------------------- CAL-4


@req("CAL-4")
@pytest.mark.parametrize("name", MODELS)
def test_cal_4_labels_line_up_with_positions(collect, loaded, prompts, name):
    """CAL-4: each sequence is the templated prompt ids (labelled prompt) then the generated tokens
    (labelled decode); decode count = generated count; a trace ends at its first EOS or at max_new_tokens."""
    model, tok = loaded(name)
    model = _eos_heavy(model, 1.5)
    n = 20
    cs = collect(model, tok, prompts, mode="rac", max_new_tokens=n, temperature=0.7, top_p=0.95, seed=3)
    stops = {"eos": 0, "limit": 0}
    for i, (problem, ids, lab) in enumerate(zip(prompts, cs.sequences, cs.labels)):
        p = torch.tensor(_chat_ids(tok, problem))
        assert torch.equal(ids[: p.numel()], p), f"CAL-4 (prompt {i}): must start with the templated prompt"
        assert bool((lab[: p.numel()] == PROMPT).all()), f"CAL-4 (prompt {i}): prompt tokens must be labelled prompt"
        gen, gen_lab = ids[p.numel():], lab[p.numel():]
        assert bool((gen_lab == DECODE).all()), f"CAL-4 (prompt {i}): generated tokens must be labelled decode"
        assert 1 <= gen.numel() <= n, f"CAL-4 (prompt {i}): {gen.numel()} generated tokens, expected 1..{n}"
        eos_at = (gen == 1).nonzero().flatten().tolist()
        if gen.numel() < n:
            assert eos_at == [gen.numel() - 1], f"CAL-4 (prompt {i}): a short trace must end at its first (only) EOS"
            stops["eos"] += 1
        else:
            assert eos_at in ([], [n - 1]), f"CAL-4 (prompt {i}): decoding went on after EOS"
            stops["eos" if eos_at else "limit"] += 1
    assert cs.count("decode") == sum(ids.numel() - len(_chat_ids(tok, q)) for q, ids in zip(prompts, cs.sequences))
    assert {k: cs.meta["trace_stops"][k] for k in stops} == stops, "CAL-4: meta must count stops at EOS and limit"


@req("CAL-4")
def test_cal_4_reference_decodes_one_token_per_forward(loaded, prompts):
    """CAL-4 (reference): Algorithm 1 as written, one forward over each prompt (line 3) and one per
    sampled token (line 6), so a reader can map the decode loop to the paper line by line."""
    model, tok = loaded("llama")
    model = _eos_heavy(model, 1.5)
    with _count_forwards(model) as calls:
        cs = collect_calibration(model, tok, prompts, mode="rac", max_new_tokens=20, temperature=0.7, top_p=0.95,
                                 seed=3)
    assert calls[0] == len(prompts) + cs.count("decode"), f"CAL-4: {calls[0]} forwards, not prompts + decode tokens"


# --------------------------------------------------------------------------- CAL-5


@req("CAL-5")
@pytest.mark.parametrize("mode", ["text", "prompt", "rac", "offpolicy"])
def test_cal_5_token_budget_is_exact(collect, loaded, problems, mode):
    """CAL-5: with a token budget, sequences are taken in order and the last one is cut, so the total
    is exactly the budget; everything before the cut is what an unbudgeted run gives."""
    model, tok = loaded("llama")
    data = problems[:8]
    kw = dict(
        prompts=[p["problem"] for p in data],
        mode=mode,
        max_new_tokens=32,
        corpus=read_corpus(FIXTURES / "data" / "corpus.txt"),
        traces=align_traces(data, read_traces(FIXTURES / "data" / "traces.jsonl")) if mode == "offpolicy" else None,
        window=64,
    )
    full = collect(model, tok, **kw)
    budget = full.sequences[0].numel() + full.sequences[1].numel() // 2 + 1 if len(full) > 1 else full.num_tokens - 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough data: no warning
        cut = collect(model, tok, **kw, token_budget=budget)
    assert cut.num_tokens == budget == cut.meta["tokens"], f"CAL-5 ({mode}): {cut.num_tokens} tokens, budget {budget}"
    flat_full, flat_cut = torch.cat(full.sequences), torch.cat(cut.sequences)
    assert torch.equal(flat_cut, flat_full[:budget]), f"CAL-5 ({mode}): budgeted set must prefix the full one"
    assert torch.equal(torch.cat(cut.labels), torch.cat(full.labels)[:budget]), f"CAL-5 ({mode}): labels follow the cut"
    if mode == "rac":
        assert cut.meta["trace_stops"]["budget"] == 1, "CAL-5: the last rac trace must stop at the budget"


@req("CAL-5")
def test_cal_5_reference_stops_decoding_at_the_budget(loaded, problems):
    """CAL-5 (reference): decoding stops as soon as the budget is reached (no token decoded and then
    thrown away): forwards = one per prompt + one per kept decode token."""
    model, tok = loaded("llama")
    prompts = [p["problem"] for p in problems[:8]]
    full = collect_calibration(model, tok, prompts, mode="rac", max_new_tokens=32)
    budget = full.sequences[0].numel() + full.sequences[1].numel() // 2 + 1
    with _count_forwards(model) as calls:
        cut = collect_calibration(model, tok, prompts, mode="rac", max_new_tokens=32, token_budget=budget)
    assert calls[0] == len(cut) + cut.count("decode"), "CAL-5: decoding must stop as soon as the budget is reached"


@req("CAL-5")
def test_cal_5_budget_not_reached_warns(collect, loaded, prompts):
    """CAL-5: when the data runs out before the budget, a UserWarning says how many tokens were
    collected, and everything there is comes back."""
    model, tok = loaded("llama")
    full = collect(model, tok, prompts, mode="prompt")
    with pytest.warns(UserWarning, match=rf"{full.num_tokens} tokens.*token_budget=100000"):
        cs = collect(model, tok, prompts, mode="prompt", token_budget=100_000)
    assert cs.num_tokens == full.num_tokens and len(cs) == len(prompts)


# --------------------------------------------------------------------------- CAL-6


@req("CAL-6")
@pytest.mark.parametrize("name", MODELS)
def test_cal_6_seed_determines_traces(collect, loaded, prompts, name):
    """CAL-6: sampling (T 0.7, top-p 0.95) with the same seed gives identical traces; another seed
    gives different traces (on at least one of several prompts)."""
    model, tok = loaded(name)
    kw = dict(mode="rac", max_new_tokens=16, temperature=0.7, top_p=0.95)
    a = collect(model, tok, prompts, seed=11, **kw)
    b = collect(model, tok, prompts, seed=11, **kw)
    c = collect(model, tok, prompts, seed=12, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.sequences, b.sequences)), "CAL-6: same seed, different traces"
    assert len(a) == len(c) and any(not torch.equal(x, y) for x, y in zip(a.sequences, c.sequences)), (
        "CAL-6: a different seed gave the same traces on every prompt (is the seed used?)"
    )
    assert a.meta["seed"] == 11


# --------------------------------------------------------------------------- CAL-7


@req("CAL-7")
def test_cal_7_top_p_keeps_the_smallest_nucleus():
    """CAL-7: top-p keeps the smallest prefix (by descending probability) whose mass is >= top_p."""
    p = torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=torch.float64)  # 0.5 + 0.3 == 0.8 exactly in binary
    kept = lambda top_p: set(top_p_filter(p, top_p).nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.8) == {1, 3}, "CAL-7: mass 0.5 + 0.3 reaches top_p = 0.8: exactly those two"
    assert kept(0.5) == {1} and kept(1e-9) == {1}, "CAL-7: the most likely token alone when it reaches top_p"
    assert kept(0.81) == {1, 2, 3} and kept(1.0) == {0, 1, 2, 3}
    assert torch.equal(top_p_filter(p, 0.8)[[1, 3]], p[[1, 3]]), "CAL-7: kept probabilities are left as they are"


@req("CAL-7")
def test_cal_7_sampler_draws_from_the_nucleus():
    """CAL-7: sample_next_token draws only nucleus ids, in proportion to their renormalised
    probability; temperature 0 is argmax (ties: lowest id); a temperature scales the logits;
    top-k keeps the k highest (ties at the k-th kept). Draws with different steps are independent
    draws (a binomial count stays within 5 sigma)."""
    p = torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=torch.float64)
    logits = p.log().float()
    n = 4000
    draw = lambda **kw: [sample_next_token(logits, seed=7, stream=1, step=t, **kw) for t in range(n)]  # noqa: E731
    draws = draw(temperature=1.0, top_p=0.75)
    assert set(draws) == {1, 3}, f"CAL-7: top_p 0.75 may only draw ids 1 and 3, drew {sorted(set(draws))}"
    q = 0.5 / 0.8  # renormalised nucleus
    assert abs(draws.count(1) - n * q) <= 5 * math.sqrt(n * q * (1 - q))
    # temperature 2 with top_p 1: P ~ sqrt(p); id 0 then has 0.05**.5 / sum(p**.5) ~ 0.098
    draws = draw(temperature=2.0)
    q = float(p[0].sqrt() / p.sqrt().sum())
    assert abs(draws.count(0) - n * q) <= 5 * math.sqrt(n * q * (1 - q)), "CAL-7: temperature must divide the logits"
    draws = draw(temperature=1.0, top_k=2)
    assert set(draws) == {1, 3}, "CAL-7: top_k 2 keeps the two most likely ids"
    q = 0.5 / 0.8
    assert abs(draws.count(1) - n * q) <= 5 * math.sqrt(n * q * (1 - q))
    tied = torch.tensor([0.0, 2.0, 1.0, 1.0])
    assert set(
        draw_tied := [sample_next_token(tied, temperature=1.0, top_k=2, seed=1, stream=0, step=t) for t in range(300)]
    ) == {1, 2, 3}, f"CAL-7: ties at the k-th are kept: {set(draw_tied)}"
    assert sample_next_token(logits, temperature=0.0, top_p=0.1) == 1, "CAL-7: temperature 0 is argmax"
    tie = torch.tensor([0.0, 2.0, 2.0, 1.0])
    assert sample_next_token(tie, temperature=0.0) == 1, "CAL-7: argmax ties go to the lowest id"


@req("CAL-7")
def test_cal_7_draws_are_keyed_by_seed_stream_and_step():
    """CAL-7: a draw depends only on (logits, seed, stream, step): the batched sampler gives each row
    what the single-stream sampler gives it, whatever the other rows are; changing any part of the
    key changes the draws (on 64 draws from a flat distribution over 640 ids)."""
    from rac.reference.sampling import sample_tokens

    logits = torch.zeros(640)
    one = lambda seed, stream, step: sample_next_token(logits, temperature=1.0, seed=seed, stream=stream, step=step)  # noqa: E731
    base = [one(3, 5, t) for t in range(64)]
    assert base == [one(3, 5, t) for t in range(64)], "CAL-7: the same key must give the same draw"
    for other in (
        [one(4, 5, t) for t in range(64)],
        [one(3, 6, t) for t in range(64)],
        [one(3, 5, t + 64) for t in range(64)],
    ):
        assert sum(a == b for a, b in zip(base, other)) <= 4, "CAL-7: a different seed, stream or step must draw anew"
    rows = torch.randn(6, 640, generator=torch.Generator().manual_seed(0))
    streams = torch.tensor([9, 2, 5, 5, 0, 1])
    batched = sample_tokens(rows, temperature=0.8, top_k=50, top_p=0.9, seed=3, streams=streams, step=11)
    single = [
        sample_next_token(rows[b], temperature=0.8, top_k=50, top_p=0.9, seed=3, stream=int(streams[b]), step=11)
        for b in range(6)
    ]
    assert batched.tolist() == single, "CAL-7: batching must not change any row's draw"


# --------------------------------------------------------------------------- CAL-8


@req("CAL-8")
@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_cal_8_offpolicy_trace_content(collect, loaded, problems, name):
    """CAL-8: offpolicy = templated prompt (labelled prompt) + the tokenised trace (labelled offpolicy),
    the trace's leading <think>\\n dropped as the prompt opens it; the pair reads as the chat template
    renders the whole conversation (minus its final EOS). Prompts without a trace are skipped."""
    model, tok = loaded(name)
    data = problems[:6]
    traces = align_traces(data, read_traces(FIXTURES / "data" / "traces.jsonl"))
    assert traces[0] is not None and traces[1] is None
    cs = collect(model, tok, [p["problem"] for p in data], mode="offpolicy", traces=traces)
    with_trace = [i for i, t in enumerate(traces) if t is not None]
    assert len(cs) == len(with_trace) and cs.meta["skipped"] == [i for i, t in enumerate(traces) if t is None]
    for i, ids, lab in zip(with_trace, cs.sequences, cs.labels):
        p = _chat_ids(tok, data[i]["problem"])
        assert traces[i].startswith("<think>\n")
        t = tok(traces[i][len("<think>\n") :], add_special_tokens=False)["input_ids"]
        assert ids.tolist() == p + t, f"CAL-8 (prompt {i}): sequence must be prompt ids + trace ids"
        assert lab.tolist() == [PROMPT] * len(p) + [OFFPOLICY] * len(t), f"CAL-8 (prompt {i}): labels"
        conv = [{"role": "user", "content": data[i]["problem"]}, {"role": "assistant", "content": traces[i]}]
        whole = tok.apply_chat_template(conv, tokenize=False)
        assert whole.endswith(tok.eos_token)
        assert ids.tolist() == tok(whole[: -len(tok.eos_token)], add_special_tokens=False)["input_ids"], (
            f"CAL-8 (prompt {i}): prompt + trace must read as the templated conversation (one <think>)"
        )


@req("CAL-8")
def test_cal_8_offpolicy_from_trace_model(collect, loaded, prompts):
    """CAL-8: offpolicy traces decoded by another model are that model's greedy traces, labelled offpolicy."""
    model, tok = loaded("llama")
    other, _ = loaded("qwen3")
    cs = collect(model, tok, prompts[:2], mode="offpolicy", trace_model=other, max_new_tokens=12)
    for problem, ids, lab in zip(prompts, cs.sequences, cs.labels):
        p = torch.tensor(_chat_ids(tok, problem))
        with torch.no_grad():
            assert torch.equal(ids, _generate(other, p, 12)), "CAL-8: trace must be trace_model's greedy decode"
        assert lab.tolist() == [PROMPT] * p.numel() + [OFFPOLICY] * (ids.numel() - p.numel())


@req("CAL-8")
def test_cal_8_text_windows_are_consecutive_corpus_tokens(collect, loaded):
    """CAL-8: text mode = consecutive, non-overlapping windows of the corpus tokens (no special tokens)."""
    model, tok = loaded("llama")
    corpus = read_corpus(FIXTURES / "data" / "corpus.txt")
    cs = collect(model, tok, None, mode="text", corpus=corpus, window=50, token_budget=1000)
    ref = tok(corpus, add_special_tokens=False, verbose=False)["input_ids"][:1000]
    assert [s.numel() for s in cs.sequences] == [50] * 20
    assert torch.cat(cs.sequences).tolist() == ref, "CAL-8: text windows must be the corpus tokens in order"
    assert all(bool((lab == TEXT).all()) for lab in cs.labels)


# --------------------------------------------------------------------------- CAL-9


@req("CAL-9")
def test_cal_9_bad_arguments_are_named(collect, loaded, prompts):
    """CAL-9: bad arguments raise ValueError naming the argument (and the prompt index)."""
    model, tok = loaded("llama")
    cases = [
        (dict(mode="decode"), "mode"),
        (dict(mode="rac", max_new_tokens=-1), "max_new_tokens"),
        (dict(mode="rac", top_p=0), "top_p"),
        (dict(mode="rac", top_p=1.5), "top_p"),
        (dict(mode="rac", temperature=-0.1), "temperature"),
        (dict(mode="rac", token_budget=0), "token_budget"),
        (dict(mode="text"), "corpus"),
        (dict(mode="offpolicy"), "traces"),
        (dict(mode="offpolicy", traces=["x"]), "traces"),
    ]
    for kw, name in cases:
        with pytest.raises(ValueError, match=name):
            collect(model, tok, prompts, **kw)
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ValueError, match="tokenizer"):
        collect(model, bare, prompts, mode="prompt")
    ctx = model.config.max_position_embeddings
    too_long = " ".join(["seven"] * ctx)
    with pytest.raises(ValueError, match=r"prompts\[1\].*context"):
        collect(model, tok, [prompts[0], too_long], mode="prompt")
    # a prompt of about ctx - 100 tokens: fits alone, not with 256 new tokens
    per_word = (len(template_prompt(tok, " ".join(["seven"] * 101))) - len(template_prompt(tok, "seven"))) / 100
    near = " ".join(["seven"] * int((ctx - 100) / per_word))
    assert len(template_prompt(tok, near)) <= ctx < len(template_prompt(tok, near)) + 256
    with pytest.raises(ValueError, match=r"prompts\[0\].*max_new_tokens"):
        collect(model, tok, [near], mode="rac", max_new_tokens=256)


@req("CAL-9")
def test_cal_9_bad_problem_files_name_the_line(tmp_path):
    """CAL-9: malformed JSON, a record without "problem" and an empty file raise ValueError naming file and line."""
    good = json.dumps({"id": "a", "problem": "What is 1+1?", "answer": "2"})
    for body, pattern in [
        (good + "\n{not json\n", "line 2"),
        (good + "\n" + json.dumps({"id": "b", "answer": "3"}) + "\n", "line 2.*problem"),
        ("\n", "no records"),
    ]:
        path = tmp_path / "problems.jsonl"
        path.write_text(body)
        with pytest.raises(ValueError, match=pattern) as info:
            read_problems(path)
        assert "problems.jsonl" in str(info.value)
    (tmp_path / "traces.jsonl").write_text(json.dumps({"id": "a"}) + "\n")
    with pytest.raises(ValueError, match="line 1.*trace"):
        read_traces(tmp_path / "traces.jsonl")


# --------------------------------------------------------------------------- CAL-10


@req("CAL-10")
def test_cal_10_model_left_as_found(collect, loaded, prompts):
    """CAL-10: collection leaves the model as it found it: training flag, parameters, no hooks left."""
    model, tok = loaded("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        collect(model, tok, prompts[:1], mode="rac", max_new_tokens=4)
        assert model.training, "CAL-10: the training flag must be restored"
    finally:
        model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "CAL-10: parameters changed"
    assert all(not layer._forward_pre_hooks for layer in decoder_blocks(model)), "CAL-10: capture hooks left behind"
