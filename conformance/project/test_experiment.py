"""XP-*: ``rac experiment``, the paper's calibration x method x sparsity grid (cli/experiment.py).

The reduced grid CI runs: one method (SparseGPT), one sparsity (60 %), the three calibrations, a
1,024-token budget per calibration and the first 12 held-out problems of the toy reasoner, through
the command line, once per module. The numbers of every cell are re-derived here from the graded
replies the run keeps (acc@1, SE, thinking tokens), the dense row is compared with what ``rac eval``
says on the same problems, and bad input must fail before any work, naming the argument.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rac.conformance.checking.helpers import one_thread, read_png, req
from rac.cli.main import main as rac_main
from rac.cli.experiment import Cell, prune_copy

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TOY = FIXTURES / "toy-reasoner"
BUDGET = 1024
NUM_EVAL = 12
MAX_NEW = 320
SPARSITY = 0.6
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
REDUCED = ["experiment", "--methods", "sparsegpt", "--sparsities", str(SPARSITY), "--patterns", "none",
           "--token-budget", str(BUDGET), "--num-eval", str(NUM_EVAL), "--max-new-tokens", str(MAX_NEW),
           "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    """The reduced experiment through ``rac experiment`` (with the plot when matplotlib is installed)."""
    root = tmp_path_factory.mktemp("xp")
    out = root / "out"
    code = rac_main(REDUCED + ["--out", str(out)] + ([] if HAS_MPL else ["--no-plot"]))
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


@req("XP-1")
def test_xp_1_reduced_experiment_writes_its_outputs(reduced_run):
    out, results = reduced_run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "results.md"] + (["results.png"] if HAS_MPL else [])
    )
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left
    env = results["environment"]
    assert env["date"] and env["torch"] == torch.__version__ and env["cpu"]
    table = (out / "results.md").read_text()
    for c in results["cells"]:  # every cell's accuracy and SE appear in the table's row of its setting
        row = next(line for line in table.splitlines() if line.startswith(f"| {c['method']} | {c['setting']} |"))
        assert f"{c['acc']:.3f} ({c['se']:.3f})" in row and f"{c['thinking_mean']:.1f}" in row


@req("XP-1")
def test_xp_1_plot_is_a_png(reduced_run):
    out, _ = reduced_run
    image = read_png(out / "results.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas: lines, text and markers were drawn


@req("XP-2")
def test_xp_2_every_cell_with_statistics_rederived_from_its_replies(reduced_run):
    _, results = reduced_run
    cells = results["cells"]
    assert [(c["calibration"], c["method"], c["sparsity"], c["pattern"]) for c in cells] == [
        (cal, "sparsegpt", SPARSITY, "unstructured") for cal in ("text", "prompt", "rac")
    ]
    problems = [json.loads(line)["id"] for line in (TOY / "test.jsonl").read_text().splitlines()[:NUM_EVAL]]
    for c in [results["dense"], *cells]:
        recs = c["records"]
        assert [r["id"] for r in recs] == problems
        n = len(recs)
        p = sum(r["status"] == "correct" for r in recs) / n
        assert 0 <= c["acc"] <= 1 and c["problems"] == n == NUM_EVAL
        assert c["acc"] == pytest.approx(p, abs=1e-12)
        # the paper's SE for one sample per problem; 1e-12: two float64 evaluations of the same formula
        assert c["se"] == pytest.approx(math.sqrt(p * (1 - p) / n), abs=1e-12)
        assert c["thinking_mean"] == pytest.approx(statistics.fmean(r["thinking_tokens"] for r in recs), abs=1e-9)
        assert c["thinking_median"] == statistics.median(r["thinking_tokens"] for r in recs)
        assert c["stopped_at_limit"] == sum(r["stopped"] == "limit" for r in recs)
        assert c["answered"] == pytest.approx(sum(r["status"] in ("correct", "wrong") for r in recs) / n, abs=1e-12)
        assert all(r["thinking_tokens"] <= r["generated_tokens"] <= MAX_NEW for r in recs)
    for c in cells:
        assert c["prune_s"] > 0 and c["eval_s"] > 0
        # SparseGPT zeroes floor(0.6 |g|) weights of every column block g (CNT-2: all rows x 128 columns, the
        # last block of a 192-input linear 64 wide), at most one weight short of 0.6 per block: > 0.5999 overall
        assert 0.5999 < c["objective"]["sparsity_reached"] <= SPARSITY
        assert c["objective"]["linears"] == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 blocks


@req("XP-3")
def test_xp_3_every_calibration_has_the_same_token_budget(reduced_run):
    _, results = reduced_run
    cal = results["calibration"]
    assert set(cal) == {"text", "prompt", "rac"}
    for mode, c in cal.items():
        assert c["tokens"] == BUDGET, mode
        assert sum(c[label] for label in ("text", "prompt", "decode", "offpolicy")) == BUDGET
    assert cal["text"]["text"] == BUDGET and cal["prompt"]["prompt"] == BUDGET
    assert cal["rac"]["decode"] > 4 * cal["rac"]["prompt"] > 0  # the toy reasoner thinks ~8x its prompt
    # each cell's report saw its own calibration's sources, and only those
    for c in results["cells"]:
        sources = set(c["objective"]["relative_objective_by_source_mean"])
        assert sources == {"text": {"text"}, "prompt": {"prompt"}, "rac": {"prompt", "decode"}}[c["calibration"]]


@req("XP-4")
def test_xp_4_dense_row_is_what_rac_eval_reports(reduced_run, tmp_path):
    _, results = reduced_run
    out = tmp_path / "eval.json"
    assert (
        rac_main(
            [
                "eval",
                "--model",
                str(TOY),
                "--problems",
                str(TOY / "test.jsonl"),
                "--limit",
                str(NUM_EVAL),
                "--max-new-tokens",
                str(MAX_NEW),
                "--threads",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    ev = json.loads(out.read_text())
    dense = results["dense"]
    assert dense["acc"] == ev["summary"]["acc@1"] and dense["se"] == ev["summary"]["se"]
    assert dense["thinking_mean"] == ev["summary"]["thinking_tokens_mean"]
    assert [(r["id"], r["status"], r["thinking_tokens"]) for r in dense["records"]] == [
        (g["id"], g["status"], g["thinking_tokens"]) for g in ev["generations"]
    ]


@req("XP-5")
def test_xp_5_every_cell_prunes_a_fresh_copy_of_the_dense_model():
    """prune_copy leaves the dense model bitwise as it was, so the cells of a grid are independent."""
    from rac.fast import collect_calibration, compress

    model = AutoModelForCausalLM.from_pretrained(str(TOY))
    tok = AutoTokenizer.from_pretrained(str(TOY))
    before = copy.deepcopy(model.state_dict())
    problems = [json.loads(line)["problem"] for line in (TOY / "train.jsonl").read_text().splitlines()[:40]]
    with one_thread():
        calib = collect_calibration(model, tok, problems, mode="prompt", token_budget=256)
        pruned, report, seconds = prune_copy(
            model,
            calib,
            Cell("prompt", "wanda", "unstructured", 0.5),
            compress=compress,
            compress_extra={"device": "cpu"},
        )
    assert pruned is not model and seconds > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    q = pruned.model.layers[0].self_attn.q_proj.weight
    assert float((q == 0).double().mean()) == 0.5 and not torch.equal(q, model.model.layers[0].self_attn.q_proj.weight)


def _no_chat_template_model(tmp_path) -> Path:
    model_dir = tmp_path / "plain"
    AutoModelForCausalLM.from_pretrained(str(TOY)).save_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(TOY))
    tok.chat_template = None
    tok.save_pretrained(str(model_dir))
    return model_dir


@req("XP-6")
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "sparsegpt,obs"], "unknown method 'obs'"),
        (["--calibrations", "prompt,c4"], "unknown calibration 'c4'"),
        (["--sparsities", "0.5,1.0"], r"sparsities must be in \[0, 1\)"),
        (["--sparsities", "-0.1"], r"sparsities must be in \[0, 1\)"),
        (["--sparsities", "half"], "--sparsities: 'half' is not a number"),
        (["--sparsities", "none", "--patterns", "none"], "nothing to prune"),
        (["--patterns", "unstructured"], "patterns takes N:M"),
        (["--patterns", "2:5"], "needs in_features divisible by M=5"),
        (["--token-budget", "100000"], "token_budget=100000 exceeds the text corpus"),
        (
            ["--calibrations", "prompt", "--token-budget", "100000", "--calibration-count", "10"],
            "token_budget=100000 exceeds the",
        ),
        (["--calibration-problems", str(TOY / "test.jsonl")], "share 12 problem"),
        (["--calibration-start", "999999"], "past the end"),
        (["--impl", "fast", "--max-new-tokens", "0"], "max_new_tokens must be an int >= 1"),
        (["--temperature", "-1"], "temperature"),
    ],
)
def test_xp_6_bad_input_exits_2_naming_the_argument(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    args = [
        "experiment",
        "--methods",
        "sparsegpt",
        "--sparsities",
        "0.5",
        "--patterns",
        "none",
        "--num-eval",
        str(NUM_EVAL),
        "--out",
        str(out),
        "--quiet",
        "--no-plot",
    ]
    assert rac_main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar, if the model loaded
    assert err.startswith("rac experiment: error:")
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary directory


@req("XP-6")
def test_xp_6_model_without_chat_template_and_existing_out(tmp_path, capsys):
    plain = _no_chat_template_model(tmp_path)
    base = ["experiment", "--methods", "sparsegpt", "--sparsities", "0.5", "--patterns", "none", "--no-plot", "--quiet"]
    assert rac_main(base + ["--model", str(plain), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"--model {plain}" in err and "no chat template" in err
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "b"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert rac_main(base + ["--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert f"--out {existing} already exists" in err and "--overwrite" in err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


@req("XP-6")
def test_xp_6_a_failed_write_leaves_nothing(reduced_run, tmp_path, monkeypatch):
    """Outputs go to a temporary directory renamed at the end: a failure while writing leaves neither a
    partial output directory nor the temporary one, and an existing output stays as it was."""
    from rac.cli import experiment_report

    _, results = reduced_run

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(experiment_report, "markdown_tables", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        experiment_report.write_outputs(results, tmp_path / "new", plot=False)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text("previous")
    with pytest.raises(RuntimeError, match="disk full"):
        experiment_report.write_outputs(results, old, overwrite=True, plot=False)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (old / "results.json").read_text() == "previous"


@req("XP-7")
def test_xp_7_an_interrupted_experiment_resumes_with_its_finished_cells(reduced_run, tmp_path, monkeypatch, capsys):
    """XP-7: killed after its first cell, the run has written the dense row and that cell to OUT.partial.json;
    --resume computes only the other cells and ends with the results an uninterrupted run gives (the
    module's reduced run); every reply is kept with its text, and regrading the text gives its status."""
    from rac.cli import experiment
    from rac.cli.answers import extract_boxed, split_reply

    _, full = reduced_run
    out = tmp_path / "out"
    real, calls = experiment.run_cell, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or the job's time limit
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "run_cell", dies_on_the_second)
    argv = REDUCED + ["--out", str(out), "--no-plot"]
    assert rac_main(argv) == 130
    assert "--resume" in capsys.readouterr().err  # the interrupted run says how to go on
    partial = json.loads((tmp_path / "out.partial.json").read_text())
    assert len(partial["cells"]) == 1 and partial["dense"]["acc"] == full["dense"]["acc"]
    assert not out.exists()
    assert rac_main(argv) == 2 and "--resume" in capsys.readouterr().err  # never overwritten silently
    calls.clear()
    monkeypatch.setattr(experiment, "run_cell", lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1])
    assert rac_main(argv + ["--resume"]) == 0
    assert len(calls) == len(full["cells"]) - 1  # the finished cell was kept
    results = json.loads((out / "results.json").read_text())
    assert not (tmp_path / "out.partial.json").exists()
    for mine, theirs in zip(results["cells"], full["cells"]):
        assert {k: mine[k] for k in ("calibration", "acc", "se", "thinking_mean")} == \
               {k: theirs[k] for k in ("calibration", "acc", "se", "thinking_mean")}
    for cell in [results["dense"], *results["cells"]]:
        for r in cell["records"]:
            _, answer, closed = split_reply(r["text"], think_opened=True)
            assert (extract_boxed(answer) if closed else None) == r["prediction"]
    with pytest.raises(ValueError, match="token_budget"):  # a resume with other settings is refused by name
        experiment.check_resumable(partial, dict(partial["settings"], token_budget=BUDGET + 1))
