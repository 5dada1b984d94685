"""CLI-*: the ``rac prune`` command on the bundled fixtures (in-process, through ``rac.cli.main.main``)."""

from __future__ import annotations

import json
import re

import torch

from rac.conformance.checking.helpers import req
from rac.conformance.checking.fixture_models import state
from rac.fixtures import model_dir
from rac.reference.contract.models import decoder_blocks
from rac.cli.main import main
from rac.cli.export import load_model

QUICK = ["--num-prompts", "2", "--max-new-tokens", "8", "--quiet", "--no-eval"]


@req("CLI-1")
def test_cli_1_prune_runs_on_the_bundled_default_and_exports(tmp_path, capsys):
    """CLI-1: with no --model/--prompts, `rac prune` prunes the bundled toy reasoner on its training
    problems, prints one summary row per pruned linear, and --out holds a model that loads and is 2:4 sparse."""
    out = tmp_path / "pruned"
    assert main(["prune", *QUICK, "--method", "wanda", "--pattern", "2:4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    model = load_model(out)
    linears = [n for blk in decoder_blocks(model) for n, m in blk.named_modules() if isinstance(m, torch.nn.Linear)]
    rows = [line for line in printed.splitlines() if re.match(r"\s*\d+ \S+\s+\d+x\d+ ", line)]
    assert len(rows) == len(linears), f"CLI-1: {len(rows)} summary rows for {len(linears)} linears"
    for blk in decoder_blocks(model):
        w = blk.mlp.up_proj.weight
        assert bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()), "CLI-1: --pattern 2:4 not applied"
    report = json.loads((out / "report.json").read_text())
    assert report["pattern"] == "2:4" and report["command"]["calibration"] == "rac"


@req("CLI-2")
def test_cli_2_mistakes_exit_2_with_a_named_cause(tmp_path, capsys):
    """CLI-2: user mistakes exit with status 2 and one line naming the cause (the file and line of a
    malformed prompts file, the existing --out, the missing weights, the bad option), never a traceback."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "What is 1+1?"}\n{"problem": 3}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    exists = tmp_path / "exists"
    exists.mkdir()
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((model_dir("llama") / "config.json").read_text())
    cases = [
        (["--prompts", str(bad)], r"bad\.jsonl: line 2"),
        (["--prompts", str(empty)], r"empty\.jsonl.*no records"),
        (["--out", str(exists)], r"exists.*--overwrite"),
        (["--model", str(weightless)], r"safetensors"),
        (["--option", "blocksize"], r"KEY=VALUE"),
        (["--option", "blocksize=0"], r"blocksize"),
        (["--calibration", "offpolicy"], r"--traces"),
        (["--blocks", "first,second"], r"--blocks"),
        (["--sparsity", "1.0"], r"sparsity"),
    ]
    for extra, pattern in cases:
        code = main(["prune", *QUICK, *extra])
        err = capsys.readouterr().err
        assert code == 2, f"CLI-2: {extra} exited {code}"
        assert len(err.strip().splitlines()) == 1 and re.search(pattern, err), f"CLI-2: {extra}: {err!r}"
    assert [p.name for p in exists.iterdir()] == [], "CLI-2: the refused --out was written to"


@req("CLI-3")
def test_cli_3_same_seed_same_pruned_model(tmp_path, capsys):
    """CLI-3: sampled traces (T 0.7, top-p 0.95) with the same --seed give bitwise the same exported
    model; another seed gives other traces, hence another model. (On a random fixture model: the toy
    reasoner is so sure of its arithmetic that two seeds can give the same 8 tokens.)"""
    runs = {}
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / tag
        args = ["prune", *QUICK, "--model", str(model_dir("qwen3")), "--temperature", "0.7", "--top-p", "0.95",
                "--seed", str(seed), "--out", str(out)]
        assert main(args) == 0
        runs[tag] = state(load_model(out))
    capsys.readouterr()
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"]), "CLI-3: same seed, different models"
    assert any(not torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"]), "CLI-3: the seed is not used"


@req("CLI-4")
def test_cli_4_the_bundled_default_reports_accuracy_before_and_after(tmp_path, capsys):
    """CLI-4: by default the bundled model is evaluated on held-out problems before and after pruning;
    the table and report.json give both, on the same problems, and the dense row is what `rac eval`
    finds for the dense model on them (same greedy generations)."""
    from rac.fixtures import TOY_REASONER, TOY_TEST

    out = tmp_path / "pruned"
    assert main(["prune", "--num-prompts", "4", "--quiet", "--num-eval", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"evaluation on 6 held-out problems", printed) and re.search(r"^dense .*\n^pruned ", printed, re.M)
    report = json.loads((out / "report.json").read_text())
    dense, pruned = report["evaluation"]["dense"], report["evaluation"]["pruned"]
    assert dense["problems"] == pruned["problems"] == 6
    assert main(["eval", "--model", str(TOY_REASONER), "--problems", str(TOY_TEST), "--limit", "6", "--max-new-tokens",
                 "512", "--out", str(tmp_path / "eval.json")]) == 0
    capsys.readouterr()
    direct = json.loads((tmp_path / "eval.json").read_text())
    direct = direct.get("summary", direct)
    assert direct["acc@1"] == dense["acc@1"] and direct["thinking_tokens_mean"] == dense["thinking_tokens_mean"]
