"""CAL-13: ``rac calibrate`` writes the calibration set (JSONL and a datasets dataset) and the llm-compressor
recipe, all or nothing; ``CalibrationSet.save`` is atomic. (CAL-14, llm-compressor on that dataset:
test_calibrate_llmcompressor.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from rac.cli.commands import calibrate
from rac.cli.main import main
from rac.conformance.checking.helpers import req
from rac.fixtures import model_dir
from rac.reference.calibration_set import LABELS, CalibrationSet

QUICK = ["--model", str(model_dir("llama")), "--num-prompts", "3", "--max-new-tokens", "6", "--quiet"]


def _same(a: CalibrationSet, b: CalibrationSet) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        assert torch.equal(a.sequences[i], b.sequences[i]), f"sequence {i}: token ids differ"
        assert torch.equal(a.labels[i], b.labels[i]), f"sequence {i}: labels differ"


def _leftovers(parent) -> list:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


@req("CAL-13")
def test_cal_13_calibrate_writes_the_set_that_reloads_exactly(tmp_path, monkeypatch, capsys):
    """Both files reload to the in-memory set (ids, labels, weights 1); the recipe keeps every token."""
    pytest.importorskip("datasets", reason="rac calibrate writes a datasets dataset (extra eval)")
    seen = []
    real = calibrate.write_calibration
    monkeypatch.setattr(calibrate, "write_calibration", lambda calib, d: (seen.append(calib), real(calib, d)))
    out = tmp_path / "calib"
    assert main(["calibrate", *QUICK, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (calib,) = seen
    assert calib.count("prompt") > 0 and calib.count("decode") == 3 * 6, "3 prompts, 6 greedy trace tokens each"
    assert sorted(p.name for p in out.iterdir()) == [calibrate.JSONL_NAME, calibrate.DATASET_DIR,
                                                     calibrate.RECIPE_NAME]
    from_jsonl = CalibrationSet.load(out / calibrate.JSONL_NAME)
    _same(from_jsonl, calib)
    assert from_jsonl.meta["mode"] == "rac" and from_jsonl.meta["problem_ids"] == ["p0001", "p0002", "p0003"]
    _same(calibrate.load_dataset_set(out), calib)
    from datasets import load_from_disk

    ds = load_from_disk(str(out / calibrate.DATASET_DIR))
    assert ds["token_weight"] == [[1.0] * s.numel() for s in calib.sequences]  # Phase II weighs every token 1
    assert ds["source"] == [[LABELS[c] for c in lab.tolist()] for lab in calib.labels]
    with open(out / calibrate.JSONL_NAME) as f:
        rows = [json.loads(line) for line in f][1:]
    assert [r["token_weights"] for r in rows] == ds["token_weight"]
    longest = max(s.numel() for s in calib.sequences)
    recipe = (out / calibrate.RECIPE_NAME).read_text()
    for needle in (f"max_seq_length={longest},", "shuffle_calibration_samples=False", "batch_size=1,",
                   "num_calibration_samples=len(dataset)", "pad_to_max_length=False", 'select_columns(["input_ids"])'):
        assert needle in recipe, f"CAL-13: the recipe lacks {needle}"
    compile(recipe, calibrate.RECIPE_NAME, "exec")
    assert recipe in printed and f"wrote {out}" in printed
    assert _leftovers(tmp_path) == []


@req("CAL-13")
def test_cal_13_a_recipe_for_weighted_tokens_says_it_is_not_faithful():
    """llm-compressor cannot weight tokens (LC-7): a set whose weights are not all 1 gets a warning, not a claim."""
    calib = CalibrationSet([torch.tensor([5, 6, 7])], [torch.tensor([1, 2, 2])])
    assert "WARNING" not in calibrate.llmcompressor_recipe(calib)
    calib.token_weights = lambda i: torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)  # e.g. decode tokens only
    assert "WARNING: the tokens are not uniformly weighted" in calibrate.llmcompressor_recipe(calib)


@req("CAL-13")
def test_cal_13_a_failure_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    """A bad --out is refused before Phase I naming --out; a failure while writing leaves no --out and no
    temporary; a kill while writing (RAC_FAULT=kill:export) leaves no --out, and the same command then ends."""
    pytest.importorskip("datasets", reason="rac calibrate writes a datasets dataset (extra eval)")
    from datasets import Dataset

    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    assert main(["calibrate", *QUICK, "--out", str(a_file)]) == 2
    assert "--out" in capsys.readouterr().err and a_file.read_text() == "keep"

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Dataset, "save_to_disk", disk_full)
    out = tmp_path / "calib"
    assert main(["calibrate", *QUICK, "--out", str(out)]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()

    env = dict(os.environ, OMP_NUM_THREADS="1", RAC_FAULT="kill:export")
    cmd = [sys.executable, "-m", "rac.cli.main", "calibrate", *QUICK, "--out", str(out)]
    killed = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-800:]
    assert not out.exists(), "CAL-13: a run killed while writing left --out"
    env.pop("RAC_FAULT")
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / calibrate.JSONL_NAME).is_file() and _leftovers(tmp_path) == [], "the stale temporary is removed"


@req("CAL-13")
def test_cal_13_without_datasets_it_stops_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setattr(calibrate, "calibration_inputs", lambda *a: pytest.fail("Phase I started"))
    assert main(["calibrate", *QUICK, "--out", str(tmp_path / "calib")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "datasets" in err and "pip install" in err
    assert list(tmp_path.iterdir()) == []


@req("CAL-13")
def test_cal_13_calibration_set_save_is_atomic_and_load_names_the_line(tmp_path, monkeypatch):
    calib = CalibrationSet([torch.tensor([5, 6, 7]), torch.tensor([8])], [torch.tensor([1, 1, 2]), torch.tensor([0])],
                           meta={"mode": "rac", "ids": torch.tensor([1, 2])})
    path = calib.save(tmp_path / "set.jsonl")
    back = CalibrationSet.load(path)
    _same(back, calib)
    assert back.meta == {"mode": "rac", "ids": [1, 2]}
    before = path.read_bytes()
    monkeypatch.setattr(CalibrationSet, "records", lambda self: [{"input_ids": [1]}, object()])  # fails midway
    with pytest.raises(TypeError):
        calib.save(path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    lines = before.decode().splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join([lines[0], lines[1], '{"input_ids": [1]}']) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: line 3"):
        CalibrationSet.load(tmp_path / "bad.jsonl")
    (tmp_path / "other.jsonl").write_text('{"problem": "1+1?"}\n')
    with pytest.raises(ValueError, match="other.jsonl: line 1"):
        CalibrationSet.load(tmp_path / "other.jsonl")
