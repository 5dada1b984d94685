"""The CLI as practitioners use it on a model nobody here trained (spec EVAL-12, EVAL-13, CLI-5, CLI-6, XP-8).

The model "trained elsewhere" is built here: a one-block Llama whose attention and MLP write nothing,
so the residual stream is the current token's one-hot embedding and the head maps each token to the
next one of a scripted reply (a bigram chain). Whatever the problem, the greedy reply is that script:
some thinking, ``</think>``, then the answer in the model's own format, ``Answer: 42``, never boxed.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rac.cli import evaluate as ev
from rac.cli.evaluate import evaluate
from rac.cli.experiment_report import markdown_tables
from rac.cli.main import main
from rac.conformance.checking.fixture_models import fresh, tokenizer
from rac.conformance.checking.helpers import req
from rac.fixtures import model_dir
from rac.reference.calibration import template_prompt

REPLY = "so</think>Answer: 42"
REGEX = r"Answer:\s*(\S+)"
PROBLEMS = [{"id": "a", "problem": "What is 6*7?", "answer": "42"},
            {"id": "b", "problem": "What is 6*7-1?", "answer": "41"}]


def scripted_model(tok, reply: str = REPLY, dtype=torch.float32) -> LlamaForCausalLM:
    """A Llama whose greedy reply to any chat-templated prompt is ``reply`` then EOS (module docstring)."""
    vocab = len(tok)
    config = LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    start = int(template_prompt(tok, "x")[-1])  # the generation prompt's last token, the same for every problem
    chain = [start, *tok(reply, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert len(set(chain)) == len(chain), "a bigram chain needs each token once"
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))   # one-hot residual stream
        model.model.norm.weight.fill_(1.0)
        model.model.layers[0].input_layernorm.weight.fill_(1.0)
        model.model.layers[0].post_attention_layernorm.weight.fill_(1.0)
        model.lm_head.weight[tok.eos_token_id, :] = 1.0            # off the script: stop
        for here, after in zip(chain, chain[1:]):
            model.lm_head.weight[:, here] = 0.0
            model.lm_head.weight[after, here] = 1.0
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """The scripted model saved with the fixtures' tokenizer (bfloat16, as models are shipped), problems file."""
    root = tmp_path_factory.mktemp("elsewhere")
    tok = tokenizer("llama")
    scripted_model(tok, dtype=torch.bfloat16).save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    problems = root / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return root / "model", problems


def test_the_scripted_model_replies_its_script():
    tok = tokenizer("llama")
    result = evaluate(scripted_model(tok), tok, PROBLEMS[:1], max_new_tokens=32, answer_regex=REGEX)
    assert result.generations[0].text == REPLY


@req("EVAL-12")
def test_eval_12_answer_regex_grades_a_model_in_its_own_format(elsewhere, tmp_path, capsys):
    """EVAL-12: with --answer-regex the first group of the last match after </think> is graded: 42 is right for
    problem a, wrong for b (acc 0.5, both answered); the default grader finds no box and says so loudly."""
    model, problems = elsewhere
    out = tmp_path / "eval.json"
    common = ["eval", "--model", str(model), "--problems", str(problems), "--max-new-tokens", "32", "--device", "cpu",
              "--quiet"]
    assert main([*common, "--answer-regex", REGEX, "--out", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["acc@1"] == 0.5 and summary["answered"] == 1.0, summary
    assert summary["settings"]["answer_regex"] == REGEX
    with pytest.warns(ev.NoAnswersWarning, match="the grader finds no answers.*--answer-regex"):
        assert main(common) == 0


@req("EVAL-12")
def test_eval_12_the_warning_needs_a_near_zero_answered_fraction():
    tok = tokenizer("llama")
    model = scripted_model(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ev.NoAnswersWarning)  # answered 1.0: no warning
        evaluate(model, tok, PROBLEMS, max_new_tokens=32, answer_regex=REGEX)
    with pytest.warns(ev.NoAnswersWarning, match=re.escape("--answer-regex Result=(\\d+)")):
        evaluate(model, tok, PROBLEMS, max_new_tokens=32, answer_regex=r"Result=(\d+)")


@req("EVAL-12")
@pytest.mark.parametrize("pattern,message", [("Answer: \\S+", "has no group"), ("Answer: (", "not a regular expr")])
def test_eval_12_a_bad_answer_regex_is_named_before_the_work(elsewhere, capsys, pattern, message):
    model, problems = elsewhere
    for command in (["eval", "--model", str(model), "--problems", str(problems)],
                    ["prune", "--model", str(model), "--prompts", str(problems), "--eval-problems", str(problems)]):
        assert main([*command, "--answer-regex", pattern]) == 2
        err = capsys.readouterr().err
        assert "--answer-regex" in err and message in err, err


@req("EVAL-13")
def test_eval_13_rac_eval_loads_the_stored_dtype(elsewhere, tmp_path):
    """EVAL-13: rac eval without --dtype evaluates the weights as stored (bfloat16 here), not float32."""
    model, problems = elsewhere
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--problems", str(problems), "--max-new-tokens", "32",
                 "--device", "cpu", "--quiet", "--answer-regex", REGEX, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["summary"]["settings"]["dtype"] == "bfloat16"


# --------------------------------------------------------------------------- chat templates


@pytest.fixture(scope="module")
def untemplated(tmp_path_factory):
    """The llama fixture with its tokenizer's chat template removed (a model prompted with raw text)."""
    root = tmp_path_factory.mktemp("untemplated") / "model"
    fresh("llama").save_pretrained(root, safe_serialization=True)
    tok = tokenizer("llama")
    template = tok.chat_template
    try:
        tok.chat_template = None
        tok.save_pretrained(root)
    finally:
        tok.chat_template = template
    config = json.loads((root / "tokenizer_config.json").read_text())
    assert not config.get("chat_template") and not (root / "chat_template.jinja").exists()
    return root


@req("CLI-5")
def test_cli_5_no_chat_template_on_prune_and_calibrate(untemplated, tmp_path, capsys):
    """CLI-5: rac prune and rac calibrate refuse a tokenizer with no template naming the way out, and with
    --no-chat-template calibrate on the raw text; the export's tokenizer is left without a template."""
    prune = ["prune", "--model", str(untemplated), "--method", "wanda", "--calibration", "prompt", "--num-prompts",
             "4", "--no-eval", "--device", "cpu", "--quiet"]
    assert main([*prune, "--out", str(tmp_path / "refused")]) == 2
    assert "--no-chat-template" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main([*prune, "--no-chat-template", "--out", str(tmp_path / "raw")]) == 0
    report = json.loads((tmp_path / "raw" / "report.json").read_text())
    assert report["calibration"]["tokens"] > 0
    exported = json.loads((tmp_path / "raw" / "tokenizer_config.json").read_text())
    assert not exported.get("chat_template") and not (tmp_path / "raw" / "chat_template.jsonl").exists()


@req("CLI-5")
def test_cli_5_raw_prompts_are_the_tokenizers_own_encoding():
    """CLI-5: --no-chat-template gives each prompt as ``tokenizer(text)`` encodes it (its BOS included), the
    encoding rac eval's raw path uses."""
    from argparse import Namespace

    from rac.cli.options import apply_template_options

    tok = tokenizer("llama")
    own = tok.chat_template
    try:
        assert apply_template_options(tok, Namespace(no_chat_template=True, chat_template=None), "m") == own
        for text in ("What is 6*7?", "a  b\n c"):
            assert template_prompt(tok, text).tolist() == tok(text)["input_ids"]
    finally:
        tok.chat_template = own


@req("CLI-5")
def test_cli_5_chat_template_file(untemplated, tmp_path, capsys):
    """CLI-5: --chat-template FILE is the template Phase I uses; a missing file is named."""
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}Q: {{ m['content'] }}\nA:{% endfor %}")
    prune = ["prune", "--model", str(untemplated), "--calibration", "prompt", "--num-prompts", "2", "--no-eval",
             "--device", "cpu", "--quiet"]
    assert main([*prune, "--chat-template", str(tmp_path / "missing.jinja"), "--out", str(tmp_path / "c0")]) == 2
    assert "--chat-template" in capsys.readouterr().err and not (tmp_path / "c0").exists()
    calib = ["calibrate", *prune[1:-4], "--device", "cpu", "--quiet"]
    pytest.importorskip("datasets")  # rac calibrate writes a datasets dataset
    assert main([*calib, "--chat-template", str(template), "--out", str(tmp_path / "c1")]) == 0
    first = json.loads((tmp_path / "c1" / "calibration.jsonl").read_text().splitlines()[1])
    tok = tokenizer("llama")
    assert tok.decode(first["input_ids"]).startswith("Q: ") and tok.decode(first["input_ids"]).endswith("\nA:")


@req("CLI-5")
@pytest.mark.parametrize("command", [
    ["experiment", "--methods", "wanda", "--sparsities", "0.5", "--patterns", "none", "--no-plot"],
    ["diagnose"],
])
def test_cli_5_experiment_and_diagnose_name_the_way_out(untemplated, tmp_path, capsys, command):
    out = ["--out", str(tmp_path / "o")] if command[0] == "experiment" else ["--json", str(tmp_path / "o.json")]
    assert main([*command, "--model", str(untemplated), *out]) == 2
    assert "--no-chat-template" in capsys.readouterr().err


# --------------------------------------------------------------------------- threads, sampling options


@req("CLI-6")
def test_cli_6_rac_prune_runs_on_its_threads(monkeypatch, tmp_path):
    """CLI-6: rac prune --threads N runs Phase II on N torch threads and puts the count back afterwards."""
    import rac.fast

    seen = []
    real = rac.fast.compress

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(rac.fast, "compress", spy)
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    assert main(["prune", "--model", str(model_dir("llama")), "--method", "wanda", "--calibration", "prompt",
                 "--num-prompts", "2", "--no-eval", "--device", "cpu", "--quiet", "--threads", str(want)]) == 0
    assert seen == [want] and torch.get_num_threads() == before


@req("CLI-6")
@pytest.mark.parametrize("extra,named", [(["--threads", "0"], "--threads"), (["--top-p", "1.5"], "top_p")])
def test_cli_6_experiment_sampling_and_threads_options_are_checked(tmp_path, capsys, extra, named):
    """CLI-6: rac experiment takes every sampling option of Phase I (--top-k, --top-p) and --threads, checked
    before any work."""
    assert main(["experiment", "--methods", "wanda", "--sparsities", "0.5", "--patterns", "none", "--no-plot",
                 "--out", str(tmp_path / "o"), *extra]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- the experiment's table


@req("XP-8")
def test_xp_8_no_best_when_a_row_is_all_equal():
    """XP-8: a row whose cells all score the same (a grader finding no answers gives all zeros) marks none
    as best; a row with a best marks it."""
    cell = dict(method="sparsegpt", pattern="unstructured", sparsity=0.6, nominal_sparsity=0.6, setting="60%",
                se=0.0, thinking_mean=1.0, thinking_median=1, problems=2, answered=0.0, stopped_at_limit=0,
                prune_s=0.0, eval_s=0.0,
                objective={"relative_objective_mean": 0.1, "relative_objective_by_source_mean": {},
                           "sparsity_reached": 0.6, "linears": 1}, counts={}, tokens_per_s=1.0)
    results = {"settings": {"max_new_tokens": 8, "token_budget": 16},
               "dense": {"acc": 0.0, "se": 0.0, "thinking_mean": 1.0, "thinking_median": 1, "problems": 2,
                         "answered": 0.0, "stopped_at_limit": 0, "eval_s": 0.0},
               "calibration": {"prompt": {}, "rac": {}},
               "cells": [dict(cell, calibration="prompt", acc=0.0), dict(cell, calibration="rac", acc=0.0)]}
    row = next(line for line in markdown_tables(results).splitlines() if line.startswith("| sparsegpt |"))
    assert "**" not in row, row
    results["cells"][1]["acc"] = 0.5
    row = next(line for line in markdown_tables(results).splitlines() if line.startswith("| sparsegpt |"))
    assert "**0.500" in row and "**0.000" not in row, row


# --------------------------------------------------------------------------- unknown tokens


def _char_model_dir(root):
    """The llama fixture's weights with a character-level tokenizer that knows ASCII only (unknown token
    [UNK]), as a small model trained elsewhere on arithmetic would have."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, "[PAD]": 3}
    for c in map(chr, range(32, 127)):
        vocab[c] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
                                  pad_token="[PAD]")
    fresh("llama").save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    return root, tok


@req("CAL-15")
def test_cal_15_a_corpus_the_tokenizer_cannot_write_is_reported(tmp_path, recwarn):
    """CAL-15: more than 1 % unknown tokens in the calibration set warns, naming the fraction, and report.json
    keeps the count; an in-vocabulary corpus gives no warning and a count of 0."""
    from rac.cli.data import UnknownTokensWarning

    model, tok = _char_model_dir(tmp_path / "model")
    assert tok("é")["input_ids"] == [tok.unk_token_id]
    english = tmp_path / "english.txt"
    english.write_text("the sum of two and three is five. " * 200)
    greek = tmp_path / "greek.txt"
    greek.write_text(("the sum is " + "το άθροισμα είναι πέντε. ") * 200)
    prune = ["prune", "--model", str(model), "--method", "magnitude", "--calibration", "text", "--token-budget",
             "512", "--window", "64", "--no-eval", "--device", "cpu", "--quiet"]
    with pytest.warns(UnknownTokensWarning, match=r"unknown token '\[UNK\]'"):
        assert main([*prune, "--corpus", str(greek), "--out", str(tmp_path / "g")]) == 0
    entry = json.loads((tmp_path / "g" / "report.json").read_text())["calibration"]["meta"]["unknown_tokens"]
    assert entry["fraction"] > 0.5 and entry["count"] == round(entry["fraction"] * 512)
    recwarn.clear()
    assert main([*prune, "--corpus", str(english), "--out", str(tmp_path / "e")]) == 0
    assert not [w for w in recwarn if issubclass(w.category, UnknownTokensWarning)]
    entry = json.loads((tmp_path / "e" / "report.json").read_text())["calibration"]["meta"]["unknown_tokens"]
    assert entry == {"unk_token": "[UNK]", "count": 0, "fraction": 0.0}


# --------------------------------------------------------------------------- one data loader


@req("CAL-9")
def test_cal_9_prompts_in_any_format_and_field(tmp_path, capsys):
    """CAL-9: rac prune --prompts reads what rac eval reads: a `prompt` field, a JSON list, a named field
    (--problem-field), and parquet / CSV through datasets; a missing field is named with the way out."""
    rows = [{"prompt": "What is 2+2?"}, {"prompt": "What is 3+5?"}]
    files = {"prompt.jsonl": "".join(json.dumps(r) + "\n" for r in rows), "list.json": json.dumps(rows),
             "named.jsonl": "".join(json.dumps({"q": r["prompt"]}) + "\n" for r in rows)}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    prune = ["prune", "--model", str(model_dir("llama")), "--method", "magnitude", "--calibration", "prompt",
             "--no-eval", "--device", "cpu", "--quiet"]
    sizes = {}
    for name, extra in (("prompt.jsonl", []), ("list.json", []), ("named.jsonl", ["--problem-field", "q"])):
        out = tmp_path / f"out-{name}"
        assert main([*prune, "--prompts", str(tmp_path / name), *extra, "--out", str(out)]) == 0, name
        sizes[name] = json.loads((out / "report.json").read_text())["calibration"]["tokens"]
    assert len(set(sizes.values())) == 1 and sizes["prompt.jsonl"] > 0, sizes  # the same two prompts each time
    assert main([*prune, "--prompts", str(tmp_path / "named.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "--problem-field" in capsys.readouterr().err
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list([{"question": r["prompt"]} for r in rows])
    data.to_parquet(str(tmp_path / "p.parquet"))
    data.to_csv(str(tmp_path / "p.csv"), index=False)
    for name in ("p.parquet", "p.csv"):
        out = tmp_path / f"out-{name}"
        assert main([*prune, "--prompts", str(tmp_path / name), "--out", str(out)]) == 0, name
        assert json.loads((out / "report.json").read_text())["calibration"]["tokens"] == sizes["prompt.jsonl"]


# --------------------------------------------------------------------------- configs


@req("CLI-7")
def test_cli_7_a_report_re_runs_its_job_and_a_toml_config_is_the_command_line(tmp_path, capsys):
    """CLI-7: report.json's command.config, given back as --config, re-runs the same job (the same weights);
    a TOML file of options is the command line it spells; the bundled model's directory is named in it."""
    from safetensors.torch import load_file

    argv = ["prune", "--method", "wanda", "--sparsity", "0.4", "--calibration", "prompt", "--num-prompts", "3",
            "--no-eval", "--device", "cpu", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    config = report["command"]["config"]
    assert config["model"] and config["method"] == "wanda" and config["sparsity"] == 0.4 and "out" not in config
    assert main(["prune", "--config", str(tmp_path / "a" / "report.json"), "--out", str(tmp_path / "b")]) == 0
    toml = tmp_path / "job.toml"
    toml.write_text('method = "wanda"\nsparsity = 0.4\ncalibration = "prompt"\nnum-prompts = 3\nno-eval = true\n'
                    'device = "cpu"\n')
    assert main(["prune", "--config", str(toml), "--quiet", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (load_file(str(tmp_path / d / "model.safetensors")) for d in "abc")
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "b" / "report.json").read_text())["command"]["config"] == config
    # the command line overrides the file
    assert main(["prune", "--config", str(toml), "--sparsity", "0.6", "--quiet", "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "report.json").read_text())["command"]["config"]["sparsity"] == 0.6


@req("CLI-7")
@pytest.mark.parametrize("text,named", [
    ('methd = "wanda"\n', "unknown option 'methd'"),
    ('sparsity = "half"\n', "'sparsity' must be a float"),
    ('method = "obs"\n', "'method' must be one of"),
    ('no-eval = "yes"\n', "'no-eval' is a switch"),
    ('out = "x"\n', "'out' is not taken from a file"),
    ('method = \n', "not valid TOML"),
])
def test_cli_7_a_bad_config_is_named_before_the_work(tmp_path, capsys, text, named):
    config = tmp_path / "job.toml"
    config.write_text(text)
    assert main(["prune", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and named in err, err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- progress


@req("CLI-8")
def test_cli_8_progress_bars_say_the_rate_and_the_time_left(capsys):
    """CLI-8: the commands' bar (Phase I, Phase II, rac eval) shows done/total, the rate in its unit and the
    time left, and draws as the work goes, not once at the end."""
    import io

    from rac.cli.commands.prune import _bar

    stream = io.StringIO()
    from rac.cli.progress import bar

    progress = bar("Phase I ", "prompts", file=stream, mininterval=0)  # every update drawn
    progress(1, 4, "batch 1")
    drawn_before_the_end = stream.getvalue()
    for done in (2, 3, 4):
        progress(done, 4)
    text = stream.getvalue()
    assert "1/4" in drawn_before_the_end and "batch 1" in drawn_before_the_end
    assert "4/4" in text and "prompts/s" in text and re.search(r"\d\d:\d\d<\d\d:\d\d", text), text
    assert callable(_bar("Phase II", "blocks"))  # rac prune's and rac calibrate's bars are this one


@req("CLI-8")
def test_cli_8_quiet_silences_notices(tmp_path):
    """CLI-8: --quiet shows no notices (CPUNotice when --device auto finds no CUDA); without it the notice is
    shown. Warnings are recorded here, so 'shown' means warned."""
    from rac.fast.plan import CPUNotice

    if torch.cuda.is_available():
        pytest.skip("the CPU notice is only given without CUDA")
    argv = ["prune", "--model", str(model_dir("llama")), "--method", "magnitude", "--calibration", "prompt",
            "--num-prompts", "2", "--no-eval", "--device", "auto"]
    for extra, expect in (([], True), (["--quiet"], False)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert main([*argv, *extra, "--out", str(tmp_path / str(expect))]) == 0
        assert any(issubclass(w.category, CPUNotice) for w in seen) is expect, (extra, [w.message for w in seen])
