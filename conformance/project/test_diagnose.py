"""DIAG-*: ``rac diagnose``, the paper's Figure 2 (cli/diagnose.py).

Run once per module through the command line on 3 held-out problems of the toy reasoner
(SparseGPT 60 %, 1,024 calibration tokens each for prompt-only, RAC and, with --with-text, the
generic corpus; pruned models saved).
The test then rebuilds every number on its own: the dense model's greedy rollout with
``generate``, the last hidden state x_t^(L) as the base model's ``last_hidden_state`` (the
final norm's output, which the LM head multiplies; diagnose reads it with a hook on the LM head
instead), e_t and r_t = e_t(prompt) / e_t(rac).
"""

from __future__ import annotations

import contextlib
import io

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rac.conformance.checking.helpers import one_thread, read_png, req
from rac.reference.calibration import template_prompt
from rac.cli.main import main as rac_main
from rac.cli.diagnose import aligned_matrix

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TOY = FIXTURES / "toy-reasoner"
PROBLEMS = 3
BUDGET = 1024
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def diag_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    args = ["diagnose", "--num-problems", str(PROBLEMS), "--token-budget", str(BUDGET), "--threads", "1",
            "--json", str(root / "fig.json"), "--save-models", str(root / "models"), "--with-text", "--quiet"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert rac_main(args + (["--png", str(root / "fig.png")] if HAS_MPL else [])) == 0
    (root / "stdout.txt").write_text(printed.getvalue())
    return root, json.loads((root / "fig.json").read_text())


@req("CLI-6")
def test_cli_6_diagnose_quiet_prints_only_what_it_wrote(diag_run):
    """CLI-6: rac diagnose --quiet prints no calibration, pruning or summary lines, only the files it wrote."""
    root, _ = diag_run
    lines = (root / "stdout.txt").read_text().splitlines()
    assert lines and all(line.startswith("wrote ") for line in lines), lines


def _final_states(model, ids: torch.Tensor) -> torch.Tensor:
    """x_t^(L) for every position: the base model's last_hidden_state (after the final norm), float64."""
    with torch.no_grad():
        return model.model(input_ids=ids[None]).last_hidden_state[0].double()


@req("DIAG-1")
def test_diag_1_ratios_equal_an_independent_teacher_forced_recomputation(diag_run):
    root, result = diag_run
    tok = AutoTokenizer.from_pretrained(str(TOY))
    dense = AutoModelForCausalLM.from_pretrained(str(TOY)).eval()
    pruned = {
        m: AutoModelForCausalLM.from_pretrained(str(root / "models" / m)).eval() for m in ("prompt", "rac", "text")
    }
    problems = [json.loads(line) for line in (TOY / "test.jsonl").read_text().splitlines()[:PROBLEMS]]
    assert [r["id"] for r in result["problems"]] == [p["id"] for p in problems]
    with one_thread():
        for row, problem in zip(result["problems"], problems):
            prompt = template_prompt(tok, problem["problem"])
            with torch.no_grad():
                full = dense.generate(
                    prompt[None], do_sample=False, max_new_tokens=320, eos_token_id=dense.generation_config.eos_token_id
                )[0]
            # the positions: prompt + rollout without its last token (whose state decoding never computes)
            assert row["tokens"] == full[:-1].tolist()
            ids = full[:-1]
            x_dense = _final_states(dense, ids)
            e = {
                m: torch.linalg.vector_norm(x_dense - _final_states(model, ids), dim=-1) for m, model in pruned.items()
            }
            # Tolerance: the same float32 forwards; a different kernel path could move each state by a few
            # float32 ulps of |x| (~ 1e-6 |x|), so e_t moves by ~2e-6 |x|. Below we check e_t >= 1e-2 |x| at every
            # position, so the relative change of e_t, and of r_t, stays under ~4e-4.
            norm = torch.linalg.vector_norm(x_dense, dim=-1)
            assert all(bool((err >= 1e-2 * norm).all()) for err in e.values())
            assert row["e_prompt"] == pytest.approx(e["prompt"].tolist(), rel=1e-3)
            assert row["e_rac"] == pytest.approx(e["rac"].tolist(), rel=1e-3)
            assert row["e_text"] == pytest.approx(e["text"].tolist(), rel=1e-3)
            assert row["ratio"] == pytest.approx((e["prompt"] / e["rac"]).tolist(), rel=1e-3)


@req("DIAG-2")
def test_diag_2_boundary_is_the_prompt_length_and_the_heatmap_aligns_on_it(diag_run):
    _, result = diag_run
    tok = AutoTokenizer.from_pretrained(str(TOY))
    problems = [json.loads(line) for line in (TOY / "test.jsonl").read_text().splitlines()[:PROBLEMS]]
    rows = result["problems"]
    for row, problem in zip(rows, problems):
        n = template_prompt(tok, problem["problem"]).numel()
        assert row["boundary"] == n
        assert row["tokens"][:n] == template_prompt(tok, problem["problem"]).tolist()
        assert len(row["ratio"]) == len(row["e_prompt"]) == len(row["e_rac"]) == len(row["tokens"]) > n
    M, offset = aligned_matrix(rows)
    assert offset == max(r["boundary"] for r in rows)
    for i, row in enumerate(rows):  # column `offset` is the first generated token's position in every row
        b = row["boundary"]
        assert M[i, offset].item() == row["ratio"][b] and M[i, offset - 1].item() == row["ratio"][b - 1]
        assert int(torch.isfinite(M[i]).sum()) == len(row["ratio"])
    # the summary's split is at the boundary: recompute the decode part's geometric mean
    logs = [math.log(r) for row in rows for r in row["ratio"][row["boundary"] :]]
    decode = result["summary"]["decode_positions"]
    assert decode["geomean_ratio"] == pytest.approx(math.exp(sum(logs) / len(logs)), rel=1e-12)
    for name in ("prompt", "rac", "text"):
        prompt_part = [e for row in rows for e in row[f"e_{name}"][: row["boundary"]]]
        assert result["summary"]["prompt_positions"]["mean_e"][name] == pytest.approx(
            sum(prompt_part) / len(prompt_part), rel=1e-12
        )


@req("DIAG-3")
def test_diag_3_same_budget_method_and_sparsity_for_both_models(diag_run):
    root, result = diag_run
    cal = result["calibration"]
    assert cal["prompt"]["tokens"] == cal["rac"]["tokens"] == cal["text"]["tokens"] == BUDGET
    assert cal["prompt"]["decode"] == 0 and cal["rac"]["decode"] > 0 and cal["text"]["text"] == BUDGET
    for mode in ("prompt", "rac", "text"):
        model = AutoModelForCausalLM.from_pretrained(str(root / "models" / mode))
        report = json.loads((root / "models" / mode / "report.json").read_text())
        assert report["method"] == "sparsegpt" and report["sparsity"] == 0.6
        assert report["calibration"]["tokens"] == BUDGET
        for block in model.model.layers:
            # SparseGPT's comparison group (CNT-2) is a column block, all 192 rows x 128 columns of the
            # 512 inputs: floor(0.6 * 192 * 128) = 14745 zeros in each of the 4 blocks
            w = block.mlp.down_proj.weight
            assert [int((w[:, j : j + 128] == 0).sum()) for j in range(0, 512, 128)] == [14745] * 4


@req("DIAG-3")
def test_diag_3_heatmap_png(diag_run):
    root, _ = diag_run
    image = read_png(root / "fig.png")
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left


@req("DIAG-4")
@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give --png FILE and/or --json FILE"),
        (["--json", "{tmp}/a.json", "--method", "obs"], "--method must be one of"),
        (["--json", "{tmp}/a.json", "--sparsity", "1.0"], r"--sparsity must be in \[0, 1\)"),
        (["--json", "{tmp}/a.json", "--pattern", "2:4", "--sparsity", "0.5"], "--sparsity must not be given"),
        (["--json", "{tmp}/a.json", "--pattern", "2:5"], "needs in_features divisible by M=5"),
        (["--json", "{tmp}/a.json", "--num-problems", "0"], "--num-problems must be a positive integer"),
        (["--json", "{tmp}/a.json", "--calibration-problems", str(TOY / "test.jsonl")], "share 3 problem"),
        (["--json", "{tmp}/a.json", "--token-budget", "0"], "token_budget must be an int >= 1"),
    ],
)
def test_diag_4_bad_input_exits_2_naming_the_argument(tmp_path, capsys, extra, message):
    import re

    args = ["diagnose", "--num-problems", str(PROBLEMS)] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert rac_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar, if the model loaded
    assert err.startswith("rac diagnose: error:") and re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


@req("DIAG-4")
def test_diag_4_existing_outputs_are_not_replaced(tmp_path, capsys):
    existing = tmp_path / "fig.json"
    existing.write_text("mine")
    assert rac_main(["diagnose", "--json", str(existing), "--png", str(tmp_path / "new.png")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["fig.json"]
