"""REL-*: nothing silently wrong, every failure before the work, no state trusted unchecked (docs/spec.md 17).

Each case runs a ``rac`` command (in-process, through ``rac.cli.main.main``) or an API call with one
bad input or fault, and asserts the exit status (or exception), that the message names the offending
option or file, and that nothing was written or left half-written: the test's directory, the
current directory and the checkpoint directory are compared before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rac.cli.main import main
from rac.conformance.checking.fixture_models import calibration_set, fresh
from rac.conformance.checking.helpers import req
from rac.fixtures import TOY_REASONER, model_dir
from rac.fixtures.layers import make_layer

QUICK = ["--num-prompts", "2", "--max-new-tokens", "4", "--quiet", "--no-eval"]
NON_UTF8 = b'{"problem": "What is 1+1?", "answer": "2"}\n{"problem": "caf\xe9 \xff", "answer": "3"}\n'


def tree(*roots) -> dict:
    """{path: size or 'dir'} of everything under ``roots`` (what a failed run must not change)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")) if Path(root).exists() else ():
            out[str(p)] = "dir" if p.is_dir() else p.stat().st_size
    return out


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A work directory as the current directory, with the files the cases point at."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    files = tmp_path / "files"
    files.mkdir()
    (files / "plain").write_text("x")
    (files / "existing").mkdir()
    (files / "prompts_dir").mkdir()
    (files / "non_utf8.jsonl").write_bytes(NON_UTF8)
    (files / "non_utf8.txt").write_bytes(b"some text\nmore \xff text\n")
    (files / "bad_json.jsonl").write_text('{"problem": "1+1?"}\n{"problem": \n')
    (files / "blank.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "   ", "answer": "3"}\n')
    (files / "traces_non_utf8.jsonl").write_bytes(b'{"id": "1", "trace": "\xff"}\n')
    return tmp_path


def _model_copy(tmp_path, name: str) -> Path:
    target = tmp_path / "files" / name
    shutil.copytree(model_dir("llama"), target)
    return target


def _broken_models(tmp_path) -> dict:
    """Model directories each broken in one way."""
    pickled = _model_copy(tmp_path, "pickled")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    truncated = _model_copy(tmp_path, "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    config = _model_copy(tmp_path, "bad_config")
    (config / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": }\n')
    no_tok = _model_copy(tmp_path, "no_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / name).unlink()
    remote = _model_copy(tmp_path, "remote_code")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    return {"pickled": pickled, "truncated": truncated, "bad_config": config, "no_tokenizer": no_tok,
            "remote_code": remote}


def _run(argv, tmp_path, capsys, code, needles):
    """Run ``rac argv``; assert its exit status, that stderr's one line names every needle, and that
    nothing changed on disk."""
    before = tree(tmp_path)
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse
        got = exc.code
    err = capsys.readouterr().err
    assert got == code, f"exit {got}, expected {code}: {err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    for needle in needles:
        assert needle in err, f"the message must name {needle!r}: {err[-800:]}"
    assert tree(tmp_path) == before, "a failed command wrote or left files"


# --------------------------------------------------------------------------- REL-1: before any work


def _prune_cases(f: Path) -> list:
    cases = [
        ("out empty", ["--out", ""], ["--out", "empty"]),
        ("out is a file", ["--out", str(f / "plain"), "--overwrite"], ["--out", "is a file"]),
        ("out under a file", ["--out", str(f / "plain" / "sub")], ["--out", "is a file"]),
        ("out is the current directory", ["--out", "."], ["--out", "current directory"]),
        ("out is an ancestor of the current directory", ["--out", ".."], ["--out", "current directory"]),
        ("out exists", ["--out", str(f / "existing")], ["--out", "--overwrite"]),
        ("checkpoint dir is a file", ["--checkpoint-dir", str(f / "plain")], ["--checkpoint-dir", "is a file"]),
        ("checkpoint dir under a file", ["--checkpoint-dir", str(f / "plain" / "ck")], ["--checkpoint-dir"]),
        ("checkpoint dir empty", ["--checkpoint-dir", ""], ["--checkpoint-dir"]),
        ("device nonsense", ["--device", "nonsense"], ["--device", "nonsense"]),
        ("device meta", ["--device", "meta"], ["--device"]),
        ("traces with rac", ["--traces", str(f / "plain")], ["--traces", "--calibration rac"]),
        ("corpus with rac", ["--corpus", str(f / "plain")], ["--corpus", "--calibration rac"]),
        ("window with prompt", ["--calibration", "prompt", "--window", "16"], ["--window", "--calibration prompt"]),
        ("checkpoint dir with reference", ["--impl", "reference", "--checkpoint-dir", str(f / "ck")],
         ["--checkpoint-dir", "--impl reference"]),
        ("gen batch size with reference", ["--impl", "reference", "--gen-batch-size", "4"],
         ["--gen-batch-size", "--impl reference"]),
        ("device with reference", ["--impl", "reference", "--device", "cpu"], ["--device", "--impl reference"]),
        ("eval problems with no eval", ["--eval-problems", str(f / "plain")], ["--eval-problems", "--no-eval"]),
        ("num eval with no eval", ["--num-eval", "3"], ["--num-eval", "--no-eval"]),
        ("prompts is a directory", ["--prompts", str(f / "prompts_dir")], ["--prompts", "directory"]),
        ("prompts missing", ["--prompts", str(f / "missing.jsonl")], ["--prompts", "no such file"]),
        ("corpus missing", ["--calibration", "text", "--corpus", str(f / "no.txt")], ["--corpus", "no such file"]),
        ("traces missing", ["--calibration", "offpolicy", "--traces", str(f / "no.jsonl")], ["--traces"]),
        ("seed too large", ["--seed", "99999999999999999999"], ["--seed"]),
        ("seed negative", ["--seed", "-1"], ["--seed"]),
        ("model missing", ["--model", str(f / "no_model")], ["--model", "no such directory"]),
        ("model is a file", ["--model", str(f / "plain")], ["--model", "not a directory"]),
    ]
    return cases


PRUNE_CASES = _prune_cases(Path("FILES"))


@req("REL-1")
@pytest.mark.parametrize("name, extra, needles", PRUNE_CASES, ids=[c[0] for c in PRUNE_CASES])
def test_rel_1_prune_refuses_before_any_work(place, capsys, name, extra, needles):
    """REL-1: each mistake of the table is an error (exit 2) naming the option (both options for a
    conflict) before the model is loaded or anything computed; nothing is written anywhere."""
    files = str(place / "files")
    extra = [a.replace("FILES", files) for a in extra]
    _run(["prune", *QUICK, *extra], place, capsys, 2, needles)


@req("REL-1")
@pytest.mark.parametrize("option", ["--out", "--checkpoint-dir"])
def test_rel_1_a_full_disk_and_a_read_only_place_are_found_first(place, capsys, monkeypatch, option):
    """REL-1: too little free space for what the run will write, or a place it cannot write to, is an error
    naming the option before any work (the disk and the permission are simulated: the tests run as root)."""
    from rac.cli import preflight

    target = str(place / "files" / "new")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1024))
    _run(["prune", *QUICK, option, target], place, capsys, 2, [option, "MiB are free"])
    monkeypatch.undo()
    monkeypatch.chdir(place / "cwd")
    monkeypatch.setattr(preflight.os, "access", lambda p, mode: False)
    _run(["prune", *QUICK, option, target], place, capsys, 2, [option, "not writable"])


@req("REL-1")
def test_rel_1_cuda_without_cuda_is_found_first(place, capsys, monkeypatch):
    """REL-1: --device cuda where there is no CUDA (or cuda:N beyond the devices) is refused before the work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _run(["prune", *QUICK, "--device", "cuda"], place, capsys, 2, ["--device", "CUDA is not available"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _run(["prune", *QUICK, "--device", "cuda:3"], place, capsys, 2, ["--device", "1 CUDA device"])


# --------------------------------------------------------------------------- REL-2: messages name the file and line


FILE_CASES = [
    ("prompts not UTF-8", ["prune", *QUICK, "--prompts", "FILES/non_utf8.jsonl"],
     ["non_utf8.jsonl", "line 2", "UTF-8"]),
    ("prompts bad JSON", ["prune", *QUICK, "--prompts", "FILES/bad_json.jsonl"], ["bad_json.jsonl", "line 2"]),
    ("prompts blank problem", ["prune", *QUICK, "--prompts", "FILES/blank.jsonl"], ["blank.jsonl", "line 2"]),
    ("corpus not UTF-8", ["prune", *QUICK, "--calibration", "text", "--corpus", "FILES/non_utf8.txt"],
     ["non_utf8.txt", "line 2"]),
    ("traces not UTF-8", ["prune", *QUICK, "--calibration", "offpolicy", "--traces", "FILES/traces_non_utf8.jsonl"],
     ["traces_non_utf8.jsonl", "line 1"]),
    ("problems not UTF-8", ["eval", "--model", str(TOY_REASONER), "--problems", "FILES/non_utf8.jsonl"],
     ["non_utf8.jsonl", "line 2"]),
    ("problems blank problem", ["eval", "--model", str(TOY_REASONER), "--problems", "FILES/blank.jsonl"],
     ["blank.jsonl", "record 1"]),
    ("problems typo is not sent to the Hub", ["eval", "--model", str(TOY_REASONER), "--problems", "typo/path"],
     ["typo/path", "no such file"]),
    ("eval out empty", ["eval", "--model", str(TOY_REASONER), "--problems", "FILES/blank.jsonl", "--out", ""],
     ["--out"]),
    ("eval out a directory", ["eval", "--model", str(TOY_REASONER), "--problems", "FILES/blank.jsonl", "--out",
                              "FILES/existing"], ["--out", "directory"]),
    ("eval device nonsense", ["eval", "--model", str(TOY_REASONER), "--problems", "FILES/blank.jsonl", "--device",
                              "gpu0"], ["--device"]),
    ("eval seed too large", ["eval", "--model", str(TOY_REASONER), "--problems", "FILES/blank.jsonl", "--seed",
                             str(2**70)], ["--seed"]),
    ("eval model missing", ["eval", "--model", "FILES/none", "--problems", "FILES/blank.jsonl"],
     ["--model", "no such directory"]),
    ("layer tokens 0", ["layer", "--tokens", "0"], ["tokens"]),
    ("layer in 0", ["layer", "--in", "0"], ["in_features"]),
    ("layer pattern does not divide", ["layer", "--in", "30", "--pattern", "2:4"], ["--pattern", "divisible"]),
]


@req("REL-2")
@pytest.mark.parametrize("name, argv, needles", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_rel_2_file_errors_name_the_file_and_line(place, capsys, name, argv, needles):
    """REL-2: a file that cannot be read names itself and the line (a byte that is not UTF-8, a JSON
    error, a blank problem: rejected by prune as by eval); a path that does not exist is "no such file"
    and never a request to a hub; exit 2, one line, nothing written."""
    files = str(place / "files")
    _run([a.replace("FILES", files) for a in argv], place, capsys, 2, [n.replace("FILES", files) for n in needles])


MODEL_CASES = [
    ("pickle only", "pickled", ["safetensors", "pytorch_model.bin"]),
    ("truncated safetensors", "truncated", ["model.safetensors", "truncated"]),
    ("malformed config", "bad_config", ["config.json", "line 2"]),
    ("no tokenizer", "no_tokenizer", ["no tokenizer"]),
    ("needs its own code", "remote_code", ["--trust-remote-code"]),
]


@req("REL-3")
@pytest.mark.parametrize("command", ["prune", "eval"])
@pytest.mark.parametrize("name, broken, needles", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_rel_3_loading_is_safe_and_named_in_every_command(place, capsys, command, name, broken, needles):
    """REL-3: every command loads safetensors only (a pickle is never unpickled: rac eval refuses it as rac
    prune does), names a truncated weights file or a damaged config.json, says when the tokenizer is
    missing, and refuses a model that needs its own code without --trust-remote-code, never asking."""
    model = _broken_models(place)[broken]
    argv = (["prune", *QUICK, "--model", str(model)] if command == "prune"
            else ["eval", "--model", str(model), "--problems", str(place / "files" / "blank.jsonl")])
    if command == "eval" and broken == "no_tokenizer":
        argv += ["--limit", "1"]
    _run(argv, place, capsys, 2, needles)


# --------------------------------------------------------------------------- REL-4: checkpoints that cannot lie


def _compress_args():
    return dict(method="sparsegpt", sparsity=0.5, batch_size=2)


def _checkpointed(tmp_path):
    """A finished checkpoint of the llama fixture and the model it produced."""
    import rac.fast

    ck = tmp_path / "ck"
    model, _ = rac.fast.compress(fresh("llama"), calibration_set("llama"), checkpoint_dir=ck, **_compress_args())
    return ck, model


@req("REL-4")
@pytest.mark.parametrize("damage, needles", [
    ("flip low mantissa bits", ["block-1.safetensors", "checksum"]),
    ("flip an exponent bit", ["block-1.safetensors", "checksum"]),
    ("truncate a block", ["block-1.safetensors"]),
    ("remove a block", ["block-1.safetensors", "missing"]),
    ("truncate state.json", ["state.json"]),
    ("empty state.json", ["state.json"]),
])
def test_rel_4_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage, needles):
    """REL-4: every block file is checked against the SHA-256 recorded when it was written, and the state file
    must parse: damage is an error naming the file and saying what to do, never a silently wrong model
    (a flipped low bit would have left a block mostly unpruned; a flipped exponent blamed float16)."""
    import rac.fast

    ck, _ = _checkpointed(tmp_path)
    block = ck / "block-1.safetensors"
    data = bytearray(block.read_bytes())
    if damage == "flip low mantissa bits":
        data[-8] ^= 0x03
    elif damage == "flip an exponent bit":
        data[-5] ^= 0x40
    elif damage == "truncate a block":
        del data[len(data) // 2:]
    if damage == "remove a block":
        block.unlink()
    elif damage.endswith("state.json"):
        state = ck / "state.json"
        state.write_text("" if damage.startswith("empty") else state.read_text()[:40])
    else:
        block.write_bytes(bytes(data))
    model = fresh("llama")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as info:
        rac.fast.compress(model, calibration_set("llama"), checkpoint_dir=ck, **_compress_args())
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert "delete" in str(info.value), "REL-4: the message says what to do"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "REL-4: the model was changed"


@req("REL-4")
@pytest.mark.parametrize("change, part", [
    ("other weights at the same path", "model weights"),
    ("another batch size", "arguments"),
    ("another chunk size", "arguments"),
    ("another calibration", "calibration"),
    ("another tokenizer", "tokenizer"),
])
def test_rel_4_a_resume_must_match_model_options_and_data(tmp_path, change, part):
    """REL-4: a checkpoint is resumed only with the same model weights, options (batch size and chunking
    included: they change the rounding), calibration and caller's extras; otherwise an error names what
    differs (the old run resumed all four blocks of another model's linears)."""
    import rac.fast

    ck = tmp_path / "ck"
    rac.fast.compress(fresh("llama"), calibration_set("llama"), checkpoint_dir=ck, fingerprint_extra={"tokenizer": "a"},
                      **_compress_args())
    model, calib, args, extra = fresh("llama"), calibration_set("llama"), _compress_args(), {"tokenizer": "a"}
    if change == "other weights at the same path":
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
    elif change == "another batch size":
        args["batch_size"] = 3
    elif change == "another chunk size":
        args["chunk_tokens"] = 64
    elif change == "another calibration":
        calib = calibration_set("llama", n=2)
    else:
        extra = {"tokenizer": "b"}
    with pytest.raises(ValueError, match=part):
        rac.fast.compress(model, calib, checkpoint_dir=ck, fingerprint_extra=extra, **args)


@req("REL-4")
def test_rel_4_two_runs_cannot_share_a_directory_and_a_finished_run_is_marked(tmp_path):
    """REL-4: a lock held by a live process stops a second run; a lock left by a dead one is taken over;
    a finished run marks its checkpoint complete, and resuming a complete checkpoint gives the same model."""
    import rac.fast

    ck, model = _checkpointed(tmp_path)
    state = json.loads((ck / "state.json").read_text())
    assert state["complete"] is True and not (ck / "lock").exists()
    (ck / "lock").write_text(str(os.getppid()))  # a live process (this test's parent)
    with pytest.raises(ValueError, match="in use by process"):
        rac.fast.compress(fresh("llama"), calibration_set("llama"), checkpoint_dir=ck, **_compress_args())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (ck / "lock").write_text(dead.stdout.strip())
    again, report = rac.fast.compress(fresh("llama"), calibration_set("llama"), checkpoint_dir=ck, **_compress_args())
    assert report["resumed_blocks"] == state["done"], "REL-4: a complete checkpoint resumes every block"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# --------------------------------------------------------------------------- REL-5: rac.fast never returns Inf or NaN


@req("REL-5")
@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude", "alps"])
def test_rel_5_out_of_range_inputs_are_errors_or_correct(method):
    """REL-5: W beyond float32's range is a ValueError naming W; a float32 W whose updates overflow is a
    FloatingPointError (never Inf/NaN weights); an H of tiny or huge scale (1e-300, 1e300) gives the same
    mask and weights as H itself, since rac.fast rescales it by an exact power of four (INV-1)."""
    import rac.fast

    layer = make_layer("gaussian", 8, 16, 40, seed=0)
    with pytest.raises(ValueError, match="W has entries .* beyond float32"):
        rac.fast.prune_layer(layer.W * 1e39, layer.H, method=method, sparsity=0.5)
    base = rac.fast.prune_layer(layer.W, layer.H, method=method, sparsity=0.5)
    for scale in (1e-300, 1e300):
        got = rac.fast.prune_layer(layer.W, layer.H * scale, method=method, sparsity=0.5)
        assert torch.isfinite(got.weight).all(), f"REL-5: non-finite weights at H * {scale}"
        assert torch.equal(got.mask, base.mask), f"REL-5: the mask changed at H * {scale}"
        # float32 rounds H * 1e-300 and H once each: the results agree to a few float32 roundings
        err = float((got.weight - base.weight).abs().max()) / max(1.0, float(base.weight.abs().max()))
        assert err <= 1e-4, f"REL-5: weights moved by {err:.3g} at H * {scale}"
    if method in ("sparsegpt", "alps"):
        W = (layer.W / layer.W.abs().max() * 3e38).to(torch.float32)
        try:
            w, _ = rac.fast.prune_layer(W, layer.H.to(torch.float32), method=method, sparsity=0.5)
        except FloatingPointError as exc:
            assert "overflow" in str(exc)
        else:
            assert torch.isfinite(w).all(), "REL-5: a non-finite weight was returned"


@req("REL-5")
@pytest.mark.parametrize("impl", ["rac.reference", "rac.fast"])
def test_rel_5_alps_refuses_an_indefinite_h_as_sparsegpt_does(impl):
    """REL-5: ALPS checks H as SparseGPT does: an H that passes GEN-5 but is not PSD even with the ridge is a
    CholeskyError, not a result."""
    import importlib

    from rac.reference.sparsegpt import CholeskyError

    prune = importlib.import_module(impl).prune_layer
    H = torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=torch.float64)
    for method in ("sparsegpt", "alps"):
        with pytest.raises(CholeskyError, match="positive"):
            prune(torch.ones(2, 2, dtype=torch.float64), H, method=method, sparsity=0.5)


# --------------------------------------------------------------------------- REL-6: Ctrl-C


@req("REL-6")
def test_rel_6_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    """REL-6: Ctrl-C prints one line saying how to go on and exits 130, no traceback."""
    import rac.cli.commands.prune as prune_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_command, "run", interrupted)
    assert main(["prune"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "--checkpoint-dir" in err[0], err


# --------------------------------------------------------------------------- REL-7: a kill, then the same command


def _prune_process(tmp_path, out, fault=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if fault:
        env["RAC_FAULT"] = fault
    cmd = [sys.executable, "-m", "rac.cli.main", "prune", *QUICK, "--num-prompts", "3", "--sparsity", "0.5",
           "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


@req("REL-7")
def test_rel_7_a_killed_run_then_the_same_command_ends_bitwise_the_same(tmp_path):
    """REL-7: killed (SIGKILL) in Phase I, after a Phase II block, or while the export is being written,
    the same command run again ends with bitwise the model an uninterrupted run exports, and a killed export
    leaves no --out that looks complete."""
    clean = tmp_path / "clean"
    clean.mkdir()
    done = _prune_process(clean, clean / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    want = (clean / "out" / "model.safetensors").read_bytes()
    for fault in ("kill:phase1", "kill:block:1", "kill:export"):
        place = tmp_path / fault.replace(":", "-")
        place.mkdir()
        killed = _prune_process(place, place / "out", fault)
        assert killed.returncode == -signal.SIGKILL, f"{fault}: {killed.returncode} {killed.stderr[-800:]}"
        assert not (place / "out").exists(), f"{fault}: a killed run left --out"
        again = _prune_process(place, place / "out")
        assert again.returncode == 0, again.stderr[-2000:]
        assert (place / "out" / "model.safetensors").read_bytes() == want, f"REL-7: {fault} then resume differs"
        assert [p.name for p in place.iterdir() if p.name.startswith(".out")] == [], "REL-7: a partial export left"
