"""TOY-*: the committed toy reasoner (fixtures/toy-reasoner) and its training script.

The toy reasoner is the small model on which the paper's experiment is run: it must load like any
Hugging Face reasoning model, actually solve its held-out problems by thinking at length, and be
reproducible from its script. Problem answers are re-derived here from the problem text with
Python's integers, independently of the script that wrote them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rac.conformance.checking.helpers import req
from rac.cli.eval_data import load_problems
from rac.cli.evaluate import evaluate

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TOY = FIXTURES / "toy-reasoner"
KINDS = ("add", "mul", "div")
SAMPLE = 48  # the first 48 held-out problems: 16 of each kind (the file interleaves add, mul, div)


def _train_module():
    spec = importlib.util.spec_from_file_location("toy_reasoner_train", TOY / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _operands(problem: str) -> tuple:
    a, b = (int(x) for x in re.findall(r"\d+", problem))
    return a, b


@pytest.fixture(scope="module")
def sample_run(toy):
    model, tok = toy
    problems = load_problems(TOY / "test.jsonl")[:SAMPLE]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # decoding a tiny model is latency-bound: one thread is fastest on a busy CPU
    try:
        return problems, evaluate(model, tok, problems, max_new_tokens=320, batch_size=SAMPLE)
    finally:
        torch.set_num_threads(threads)


@req("TOY-1")
def test_toy_1_loads_offline_as_a_reasoning_model(toy):
    model, tok = toy
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        assert (TOY / name).is_file(), name
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 5_000_000, n  # "a few million parameters"
    assert (TOY / "model.safetensors").stat().st_size < 20_000_000
    # the project's tokenizer and chat template, unchanged
    project = FIXTURES / "tokenizer"
    assert (TOY / "tokenizer.json").read_bytes() == (project / "tokenizer.json").read_bytes()
    assert tok.chat_template == AutoTokenizer.from_pretrained(str(project)).chat_template
    assert model.generation_config.eos_token_id == tok.eos_token_id == 1
    assert model.config.vocab_size == len(tok)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 345?"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt.endswith("<|assistant|><think>\n")


@req("TOY-2")
def test_toy_2_problem_files_are_right_and_disjoint():
    train, test = _read(TOY / "train.jsonl"), _read(TOY / "test.jsonl")
    assert len(test) >= 200
    for split in (train, test):
        assert len({p["id"] for p in split}) == len(split)
        for kind in KINDS:
            assert sum(p["kind"] == kind for p in split) >= len(split) // 4
    keys = {}
    for name, split in (("train", train), ("test", test)):
        keys[name] = set()
        for p in split:
            assert set(p) == {"id", "kind", "problem", "answer"}
            a, b = _operands(p["problem"])
            truth = {"add": a + b, "mul": a * b, "div": a // b}[p["kind"]]
            assert p["answer"] == str(truth), p
            if p["kind"] == "div":
                assert a % b == 0, p  # exact division only
            keys[name].add((p["kind"], a, b))
    assert len(keys["test"]) == len(test) and len(keys["train"]) == len(train)
    assert not keys["train"] & keys["test"]
    assert not {p["problem"] for p in train} & {p["problem"] for p in test}


@req("TOY-2")
def test_toy_2_files_are_what_the_script_trains_and_tests_on():
    module = _train_module()
    train, test = module.make_splits()
    keys = ("id", "kind", "problem", "answer")
    assert _read(TOY / "train.jsonl") == [{k: p[k] for k in keys} for p in train]
    assert _read(TOY / "test.jsonl") == [{k: p[k] for k in keys} for p in test]


@req("TOY-3")
def test_toy_3_accuracy_on_held_out_sample(sample_run):
    problems, result = sample_run
    s = result.summary()
    correct = s["counts"]["correct"]
    # Threshold. The committed model answers all 300 held-out problems right, greedily
    # (training_log.json, eval.test), so its accuracy is p >= 0.990 at 95 % confidence (one-sided,
    # 1 - 0.05**(1/300)). Greedy decoding is deterministic here, but on another BLAS or CPU a near-tie
    # can flip a token, so the sample is treated as X ~ Binomial(48, p). Requiring X >= 45:
    # a model at p = 0.99 fails with probability P(X <= 44) = 0.0014; one at p = 0.85 passes with
    # probability 0.057 and one at p = 0.80 with 0.008, so a real regression (a broken loader,
    # tokenizer or generation path) is caught. Per kind (16 problems each), >= 14: P(fail | p = 0.99)
    # = 0.0005, so one kind cannot break while the others carry the total.
    assert correct >= 45, f"{correct}/{SAMPLE} correct: {s}"
    assert s["answered"] >= 45 / SAMPLE
    for kind in KINDS:
        assert s["acc@1_by_kind"][kind] >= 14 / 16, s["acc@1_by_kind"]


@req("TOY-4")
def test_toy_4_thoughts_are_long_compared_with_the_prompt(sample_run, toy):
    problems, result = sample_run
    _, tok = toy
    prompt_tokens = [len(tok.apply_chat_template([{"role": "user", "content": p["problem"]}],
                                                 add_generation_prompt=True, tokenize=True)["input_ids"])
                     for p in problems]
    thinking = [g.thinking_tokens for g in result.generations]
    # the paper's regime |c| + |y| >> |x|: here every reply thinks at least 4x as long as its prompt
    for g, n in zip(result.generations, prompt_tokens):
        assert g.thinking_tokens >= 4 * n, (g.id, g.thinking_tokens, n)
    assert sum(thinking) / sum(prompt_tokens) >= 6


@req("TOY-5")
def test_toy_5_training_is_deterministic():
    """A few steps of the real training loop on a tiny model: same seed -> bitwise the same losses and
    weights; another seed -> different ones. (Bitwise equality holds on one machine and torch build.)"""
    module = _train_module()
    train_problems, _ = module.make_splits(n_test_per_kind=2, n_train_per_kind=12)
    tok = module.load_tokenizer()
    examples = [module.encode_example(tok, p["problem"], module.make_trace(p["kind"], p["a"], p["b"]))
                for p in train_problems]
    cfg = {**module.TRAIN, "steps": 4, "batch_tokens": 1024, "warmup": 2, "log_every": 100}

    def run(seed):
        model = module.build_model(module.TINY_MODEL, tok, seed)
        losses = module.train(model, examples, {**cfg, "seed": seed}, tok.pad_token_id, log=lambda *_: None)
        return losses, {k: v.clone() for k, v in model.state_dict().items()}

    threads = torch.get_num_threads()
    try:
        (l1, w1), (l2, w2), (l3, w3) = run(7), run(7), run(8)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    assert len(l1) == 4 and all(math.isfinite(x) for x in l1)
    assert l1 == l2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert l1 != l3 and any(not torch.equal(w1[k], w3[k]) for k in w1)
    assert l1[-1] < l1[0]  # it is actually learning


@req("TOY-6")
def test_toy_6_loss_is_on_the_reply_only():
    module = _train_module()
    tok = module.load_tokenizer()
    problem = "What is 4821 + 739?"
    trace = module.make_trace("add", 4821, 739)
    ids, mask = module.encode_example(tok, problem, trace)
    prompt = tok.apply_chat_template([{"role": "user", "content": problem}], add_generation_prompt=True, tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
    reply = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(reply) == trace[len("<think>\n"):] + "<|eos|>"
    assert trace.endswith("\\boxed{5560}.") and "</think>" in trace
    # the whole conversation, rendered by the chat template, tokenises to the same ids
    full = tok.apply_chat_template([{"role": "user", "content": problem}, {"role": "assistant", "content": trace}],
                                   tokenize=False)
    assert tok(full, add_special_tokens=False)["input_ids"] == ids
