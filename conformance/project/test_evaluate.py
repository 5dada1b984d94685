"""EVAL-*: the evaluation harness (``rac.cli.answers``, ``evaluate``, ``eval_data``, ``rac eval``).

Grading is checked on hand-written replies whose right verdict is known by reading them;
statistics on hand-made generations whose numbers are worked out in the test; generation on
the committed toy reasoner (fixtures/toy-reasoner), whose greedy replies close </think> and
box an answer, and on the random fixture model, whose replies never do. No test downloads:
dataset loading is exercised on local files only.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rac.conformance.checking.helpers import one_thread, req
from rac.cli import answers
from rac.cli.answers import answers_match, extract_boxed, normalize_answer, split_reply
from rac.cli.main import main as rac_main
from rac.cli.eval_data import load_problems
from rac.cli.evaluate import Generation, accuracy_and_se, evaluate, grade, summarize

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TOY = FIXTURES / "toy-reasoner"
RANDOM_MODEL = FIXTURES / "models" / "qwen3"


@pytest.fixture(scope="module")
def toy_problems():
    return load_problems(TOY / "test.jsonl", limit=6)


# --------------------------------------------------------------------------- answers


@req("EVAL-1")
def test_eval_1_boxed_extraction():
    assert extract_boxed(r"so \boxed{12} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"  # the last one
    assert extract_boxed(r"\boxed{ {x}^{2} + \{1\} }") == r"{x}^{2} + \{1\}"  # nested and escaped braces
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed {7}") == "7"
    assert extract_boxed(r"\boxed{12") is None  # never closed (cut at max_new_tokens)
    assert extract_boxed("The answer is 12.") is None
    assert extract_boxed(r"\boxed{3} and \boxed{4") == "3"  # an unfinished last box does not hide the complete one


@req("EVAL-2")
def test_eval_2_normalised_exact_match():
    for gold, pred in [
        ("5560", " 5560 "),
        ("1/2", r"\frac{2}{4}"),
        ("1/2", "0.50"),
        ("-1/2", r"-\dfrac{1}{2}"),
        ("1000", "1,000"),
        ("5", "x = 5"),
        ("10", r"10^\circ"),
        ("3", "3."),
        ("(3,4)", r"\left(3, 4\right)"),
        (r"\text{(B)}", "(B)"),
    ]:
        assert answers_match(gold, pred, use_math_verify=False), (gold, pred)
    for gold, pred in [("5560", "5561"), ("1/2", "2"), ("12", "1 2 3"), ("3", None)]:
        assert not answers_match(gold, pred, use_math_verify=False), (gold, pred)
    assert normalize_answer("0.50") == normalize_answer("1/2") == "1/2"
    with pytest.raises(ValueError, match="gold"):
        answers_match("  ", "1")


@req("EVAL-3")
def test_eval_3_math_verify_gets_gold_first(monkeypatch):
    """With math-verify installed, verify(parse(gold), parse(pred)): gold first (its check is asymmetric).
    A stand-in module records the calls, so the order is checked whether or not the package is installed."""
    calls = []
    fake = types.ModuleType("math_verify")
    fake.parse = lambda text, **kw: [("parsed", text)]
    fake.verify = lambda gold, pred, **kw: calls.append((gold, pred)) or True
    monkeypatch.setitem(sys.modules, "math_verify", fake)
    assert answers.math_verify_available()
    assert answers_match("1/2", "0.4")  # normalised strings differ, so math-verify decides
    ((gold, pred),) = calls
    assert "1/2" in gold[0][1] and "0.4" in pred[0][1]
    calls.clear()
    assert not answers_match("1/2", "0.4", use_math_verify=False) and not calls
    fake.verify = lambda gold, pred, **kw: False
    assert answers_match("1/2", "0.5")  # an equal normalised form is accepted whatever math-verify says


@req("EVAL-3")
def test_eval_3_real_math_verify_if_installed():
    pytest.importorskip("math_verify", reason="math-verify is the optional 'eval' extra")
    assert answers_match(r"\frac{1}{2}", "0.5", use_math_verify=True)
    assert answers_match(r"\{1,3\} \cup \{2,4\}", r"\{1,2,3,4\}", use_math_verify=True)
    assert not answers_match("3", "4", use_math_verify=True)


# --------------------------------------------------------------------------- grading one reply


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(FIXTURES / "tokenizer"))  # the project's (the toy reasoner's too)


def _graded(tok, reply: str, gold="42", think_opened=True, stopped="eos"):
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    return grade("p1", 0, gold, ids, tok, think_opened, stopped, False, tok.convert_tokens_to_ids("</think>")), ids


@req("EVAL-4")
def test_eval_4_status_of_each_reply(tok):
    g, _ = _graded(tok, "6*7=42\n</think>\nThe answer is \\boxed{42}.")
    assert (g.status, g.prediction, g.correct) == ("correct", "42", True)
    g, _ = _graded(tok, "6*7=41\n</think>\nThe answer is \\boxed{41}.")
    assert (g.status, g.prediction, g.correct) == ("wrong", "41", False)
    # boxed inside the thoughts, but </think> never comes: no final answer, counted wrong
    g, _ = _graded(tok, "maybe \\boxed{42} hmm", stopped="limit")
    assert (g.status, g.prediction, g.correct) == ("no_think_close", None, False)
    g, _ = _graded(tok, "6*7=42\n</think>\nThe answer is 42.")
    assert (g.status, g.prediction, g.correct) == ("no_boxed", None, False)
    # the box in the thoughts does not count; the answer part's does
    g, _ = _graded(tok, "try \\boxed{41}</think>final \\boxed{42}")
    assert g.status == "correct"
    assert split_reply("no tags \\boxed{3}", think_opened=False) == ("", "no tags \\boxed{3}", True)


@req("EVAL-5")
def test_eval_5_thinking_tokens(tok):
    close = tok.convert_tokens_to_ids("</think>")
    g, ids = _graded(tok, "1+2+0=03 rest=+ c=0 s=3\n</think>\nThe answer is \\boxed{3}.", gold="3")
    assert g.thinking_tokens == ids.index(close) and g.generated_tokens == len(ids)
    assert 0 < g.thinking_tokens < len(ids)
    g, ids = _graded(tok, "1+2+0=03 rest=+ c=0", stopped="limit")
    assert g.thinking_tokens == g.generated_tokens == len(ids)  # never closed: all of it is thinking
    g, ids = _graded(tok, "The answer is \\boxed{42}.", think_opened=False)
    assert g.thinking_tokens == 0 and g.status == "correct"  # a model that does not think
    # the prompt did not open the block and the reply's <think> is corrupted, but </think> closes it: the
    # tokens before </think> are thinking all the same (they were counted 0)
    for corrupted in ("<thnk>", "think>", "<th"):
        reply = corrupted + "1+2=3 c=0\n</think>\nThe answer is \\boxed{3}."
        g, ids = _graded(tok, reply, gold="3", think_opened=False)
        assert g.thinking_tokens == ids.index(close) > 0 and g.status == "correct", corrupted
    # a tokenizer whose </think> is not one token (think_close_id None): counted from the text before it
    ids = tok("<thnk>1+2=3\n</think>\n\\boxed{3}", add_special_tokens=False)["input_ids"]
    g = grade("p1", 0, "3", ids, tok, False, "eos", False, None)
    assert g.thinking_tokens == ids.index(close) and g.status == "correct"


# --------------------------------------------------------------------------- statistics


def _gen(pid, sample, status, thinking=10, generated=12):
    return Generation(pid, sample, status, None, "1", generated, thinking, "eos", "")


@req("EVAL-6")
def test_eval_6_acc_se_and_counts():
    # 4 problems, 1 sample: 3 correct -> p = 0.75, SE = sqrt(0.75 * 0.25 / 4)
    gens = [
        _gen("a", 0, "correct", 10),
        _gen("b", 0, "correct", 20),
        _gen("c", 0, "correct", 30),
        _gen("d", 0, "no_think_close", 100),
    ]
    s = summarize(gens, 1, generation_time_s=2.0, wall_time_s=3.0)
    assert s["acc@1"] == 0.75 and math.isclose(s["se"], math.sqrt(0.75 * 0.25 / 4), rel_tol=1e-12)
    assert s["answered"] == 0.75 and s["counts"] == {"correct": 3, "wrong": 0, "no_think_close": 1, "no_boxed": 0}
    assert s["thinking_tokens_mean"] == 40 and s["thinking_tokens_median"] == 25
    assert s["tokens_per_s"] == 48 / 2.0 and s["wall_time_s"] == 3.0
    # 2 problems x 2 samples: per-problem accuracies 1 and 0.5; acc@1 is the mean over samples,
    # SE from the per-problem means: population variance ((1 - .75)^2 + (.5 - .75)^2) / 2 = 1/16,
    # over n = 2 problems: sqrt(1/32)
    gens = [_gen("a", 0, "correct"), _gen("a", 1, "correct"), _gen("b", 0, "wrong"), _gen("b", 1, "correct")]
    s = summarize(gens, 2, 1.0, 1.0)
    assert s["acc@1"] == 0.75 and math.isclose(s["se"], math.sqrt(1 / 32), rel_tol=1e-12) and s["problems"] == 2
    with pytest.raises(ValueError):
        accuracy_and_se([])


# --------------------------------------------------------------------------- generation


@req("EVAL-7")
def test_eval_7_toy_reasoner_end_to_end(toy, toy_problems):
    """Greedy evaluation of the toy reasoner: every reply closes </think>, boxes an answer, and the
    record's counts match the tokens; batching (left padding) does not change greedy replies."""
    model, tok = toy
    with one_thread():
        r1 = evaluate(model, tok, toy_problems, max_new_tokens=300, batch_size=6)
        r2 = evaluate(model, tok, toy_problems, max_new_tokens=300, batch_size=4)
    assert [g.text for g in r1.generations] == [g.text for g in r2.generations]
    s = r1.summary()
    assert s["answered"] == 1.0 and s["stopped_at_limit"] == 0
    for g, p in zip(r1.generations, toy_problems):
        assert g.id == p["id"] and g.gold == p["answer"] and g.stopped == "eos"
        assert "</think>" in g.text and g.correct == (g.prediction == p["answer"])
        assert 0 < g.thinking_tokens < g.generated_tokens
    assert s["acc@1_by_kind"].keys() == {"add", "mul", "div"}


@pytest.fixture(scope="module")
def random_model():
    """The random fixture model: its next-token distribution is flat, so samples differ at once."""
    model = AutoModelForCausalLM.from_pretrained(str(RANDOM_MODEL))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(RANDOM_MODEL))


@req("EVAL-8")
def test_eval_8_sampling_is_seeded(random_model, toy, toy_problems):
    model, tok = random_model
    probs = load_problems(FIXTURES / "data" / "problems.jsonl", limit=3)
    run = lambda seed: evaluate(
        model,
        tok,
        probs,
        max_new_tokens=16,
        samples=2,  # noqa: E731
        temperature=1.0,
        top_p=0.95,
        seed=seed,
        batch_size=4,
    )
    with one_thread():
        a, b, c = run(0), run(0), run(1)
        greedy = evaluate(model, tok, probs, max_new_tokens=16)
    texts = lambda r: [g.text for g in r.generations]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert texts(a)[0] != texts(a)[1]  # the two samples of one problem differ
    assert texts(a)[::2] != texts(greedy)
    assert [(g.id, g.sample) for g in a.generations] == [(p["id"], k) for p in probs for k in range(2)]
    with pytest.raises(ValueError, match="greedy"):
        evaluate(toy[0], toy[1], toy_problems, samples=2, temperature=0)


@req("EVAL-9")
def test_eval_9_bad_input(toy, toy_problems, tmp_path):
    model, tok = toy
    with pytest.raises(ValueError, match="no answer"):
        evaluate(model, tok, [{"id": "x", "problem": "What is 1 + 2?"}])
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate(model, tok, toy_problems, max_new_tokens=0)
    plain = AutoTokenizer.from_pretrained(str(TOY))
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat_template=False"):
        evaluate(model, plain, toy_problems[:1], max_new_tokens=4)
    # explicitly without a template: the raw text (with BOS), so no <think> was opened
    r = evaluate(model, plain, toy_problems[:1], max_new_tokens=4, chat_template=False)
    assert r.generations[0].generated_tokens == 4 and r.settings["chat_template"] is False


@req("EVAL-9")
def test_eval_9_random_model_never_answers(random_model):
    """A random model never closes </think>: every reply is wrong and reported as such."""
    model, tok = random_model
    probs = load_problems(FIXTURES / "data" / "problems.jsonl", limit=4)
    with one_thread():
        s = evaluate(model, tok, probs, max_new_tokens=12).summary()
    assert s["acc@1"] == 0 and s["answered"] == 0 and s["counts"]["no_think_close"] == 4
    assert s["thinking_tokens_mean"] == 12


# --------------------------------------------------------------------------- loading problems


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@req("EVAL-10")
def test_eval_10_local_problem_files(tmp_path):
    rows = [
        {"problem": "P1", "solution": r"so $x = \boxed{\frac{1}{2}}$.", "answer": r"\frac{1}{2}", "unique_id": "a/1"},
        {"problem": "P2", "solution": r"it is \boxed{\{1, 2\}}", "unique_id": "a/2"},  # no answer: from the solution
        {"question": "P3", "answer": "Work... #### 72", "unique_id": "a/3"},  # GSM8K style
        {"problem": "P4", "answer": 17, "unique_id": "a/4"},  # a number
    ]
    probs = load_problems(_write_jsonl(tmp_path / "m.jsonl", rows))
    assert [(p["id"], p["problem"], p["answer"]) for p in probs] == [
        ("a/1", "P1", r"\frac{1}{2}"),
        ("a/2", "P2", r"\{1, 2\}"),
        ("a/3", "P3", "72"),
        ("a/4", "P4", "17"),
    ]
    assert probs[0]["solution"] == rows[0]["solution"]  # other fields are kept
    (tmp_path / "m.json").write_text(json.dumps(rows))
    assert load_problems(tmp_path / "m.json", limit=2) == probs[:2]
    toy = load_problems(TOY / "test.jsonl")
    assert len(toy) >= 200 and {"id", "kind", "problem", "answer"} <= toy[0].keys()


@req("EVAL-10")
@pytest.mark.parametrize(
    "bad, match",
    [
        ({"problem": "P"}, "record 0 has no answer"),
        ({"problem": "P", "solution": "no box here"}, r"no \\boxed"),
        ({"problem": "P", "answer": "  "}, "empty answer"),
        ({"problem": "P", "answer": None}, "record 0 has no answer"),
        ({"problem": "", "answer": "1"}, "no problem text"),
        ({"problem": "P", "answer": ["1"]}, "must be a str or a number"),
    ],
)
def test_eval_10_bad_records(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        load_problems(_write_jsonl(tmp_path / "bad.jsonl", [bad]))


def _dataset_dir(tmp_path):
    rows = [{"problem": f"P{i}", "answer": str(i), "unique_id": f"u{i}"} for i in range(3)]
    data_dir = tmp_path / "MATH-500"
    data_dir.mkdir()
    _write_jsonl(data_dir / "test.jsonl", rows)  # a dataset repository laid out as on the Hub
    return rows, data_dir


@req("EVAL-10")
def test_eval_10_dataset_sources_without_datasets(tmp_path, monkeypatch):
    """Without the optional package, a dataset directory or name is a clear error (never a crash)."""
    _, data_dir = _dataset_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    for source in (data_dir, "hf:HuggingFaceH4/MATH-500"):
        with pytest.raises(ValueError, match="optional 'datasets' package"):
            load_problems(source)
    with pytest.raises(FileNotFoundError, match="no such file or directory.*hf:NAME"):
        load_problems("HuggingFaceH4/MATH-500")  # a name without hf: is a path: never sent to the Hub


@req("EVAL-10")
def test_eval_10_dataset_sources_with_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")
    rows, data_dir = _dataset_dir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    # a directory goes through load_dataset(name, split=...), the same call as a Hub name
    probs = load_problems(data_dir, split="test")
    assert [(p["id"], p["answer"]) for p in probs] == [("u0", "0"), ("u1", "1"), ("u2", "2")]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    assert [p["problem"] for p in load_problems(tmp_path / "t.parquet")] == ["P0", "P1", "P2"]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    assert [p["id"] for p in load_problems(tmp_path / "saved", limit=2)] == ["u0", "u1"]
    with pytest.raises(ValueError, match="validation"):
        load_problems(data_dir, split="validation")


# --------------------------------------------------------------------------- rac eval


@req("EVAL-11")
def test_eval_11_cli(tmp_path, capsys):
    out = tmp_path / "res.json"
    code = rac_main(
        [
            "eval",
            "--model",
            str(TOY),
            "--problems",
            str(TOY / "test.jsonl"),
            "--limit",
            "3",
            "--max-new-tokens",
            "300",
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "acc@1" in printed and "thinking tok" in printed and "tokens/s" in printed and "wall time" in printed
    res = json.loads(out.read_text())
    assert res["summary"]["problems"] == 3 and len(res["generations"]) == 3
    assert res["summary"]["settings"]["max_new_tokens"] == 300
    # an existing --out is not replaced without --overwrite
    assert rac_main(["eval", "--model", str(TOY), "--problems", str(TOY / "test.jsonl"), "--out", str(out)]) == 2
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "What is 1 + 2?"}])
    assert rac_main(["eval", "--model", str(TOY), "--problems", str(bad)]) == 2
    assert "no answer" in capsys.readouterr().err


@req("EVAL-11")
def test_eval_11_cli_needs_a_chat_template_or_the_flag(tmp_path, capsys):
    model_dir = tmp_path / "m"
    AutoModelForCausalLM.from_pretrained(str(TOY)).save_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(TOY))
    tok.chat_template = None
    tok.save_pretrained(str(model_dir))
    args = [
        "eval",
        "--model",
        str(model_dir),
        "--problems",
        str(TOY / "test.jsonl"),
        "--limit",
        "1",
        "--max-new-tokens",
        "4",
        "--quiet",
    ]
    assert rac_main(args) == 2
    assert "--no-chat-template" in capsys.readouterr().err
    assert rac_main(args + ["--no-chat-template"]) == 0
