"""EXP-*: exporting a pruned model and loading models safely (``rac.cli.export``).

Reference-level: export is not part of the port protocol; every port's pruned model is an
ordinary ``transformers`` model and is exported the same way.
"""

from __future__ import annotations

import json

import pytest
import torch

from rac.conformance.checking.helpers import req
from rac.conformance.checking.fixture_models import MODEL_NAMES, fresh, problems, same, state, tokenizer
from rac.fixtures import model_dir
from rac.reference import collect_calibration, compress
from rac.reference.contract.models import decoder_blocks
from rac.cli.export import export_pruned, load_model


def pruned(name: str, pattern: str = "unstructured"):
    """A fixture model pruned with SparseGPT (50% or an N:M pattern) on a small rac calibration set."""
    model = fresh(name)
    calib = collect_calibration(model, tokenizer(name), list(problems(2)), mode="rac", max_new_tokens=8)
    sparsity = 0.5 if pattern == "unstructured" else None
    return compress(model, calib, method="sparsegpt", sparsity=sparsity, pattern=pattern)


def batch(tok, n: int = 3):
    """A left-padded batch of templated prompts (the tokenizer pads left, as for generation)."""
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in problems(n)]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@req("EXP-1")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_exp_1_round_trip_gives_identical_logits(tmp_path, name):
    """EXP-1: export, reload with AutoModelForCausalLM.from_pretrained (safetensors), and the reloaded
    model gives bitwise the same logits on a padded batch, with every pruned zero in place and every
    parameter bitwise equal (safetensors stores float32 exactly)."""
    model, report = pruned(name, "2:4" if name == "qwen2" else "unstructured")
    out = export_pruned(model, tokenizer(name), tmp_path / "out", report=report)
    back = load_model(out)
    a, b = state(model), state(back)
    assert set(a) == set(b) and all(same(a[k], b[k]) for k in a), (
        f"EXP-1 ({name}): parameters changed in the round trip"
    )
    enc = batch(tokenizer(name))
    with torch.no_grad():
        la = model(**enc).logits
        lb = back(**enc).logits
    assert torch.equal(la, lb), f"EXP-1 ({name}): logits differ after the round trip"
    zeros = sum(int((blk.mlp.down_proj.weight == 0).sum()) for blk in decoder_blocks(back))
    assert zeros == sum(int((blk.mlp.down_proj.weight == 0).sum()) for blk in decoder_blocks(model)) > 0


@req("EXP-2")
def test_exp_2_directory_holds_safetensors_tokenizer_and_report(tmp_path):
    """EXP-2: the directory holds config.json, *.safetensors (no pickle checkpoint), the tokenizer
    with its chat template and a report.json equal to the report compress returned (JSON-safe)."""
    model, report = pruned("qwen3")
    out = export_pruned(model, tokenizer("qwen3"), tmp_path / "out", report=report)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "report.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names), f"EXP-2: pickle files in {names}"
    saved = json.loads((out / "report.json").read_text())
    assert saved["method"] == "sparsegpt" and len(saved["layers"]) == len(report["layers"])
    assert [r["objective"] for r in saved["layers"]] == [r["objective"] for r in report["layers"]]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == tokenizer("qwen3").chat_template, "EXP-2: the chat template must travel with the model"


@req("EXP-3")
def test_exp_3_existing_out_is_refused_unless_overwrite(tmp_path):
    """EXP-3: an existing --out is refused (FileExistsError naming it) and left untouched; with
    overwrite it is replaced by the complete new export."""
    model, report = pruned("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="out"):
        export_pruned(model, tokenizer("llama"), out, report=report)
    assert (out / "keep.txt").read_text() == "user data"
    export_pruned(model, tokenizer("llama"), out, report=report, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "EXP-3: temporary directories left behind"


@req("EXP-3")
@pytest.mark.parametrize("existing", [False, True])
def test_exp_3_an_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, existing):
    """EXP-3: if writing fails midway (here: after the weights, while saving the tokenizer), no
    directory appears at --out (or the old one stays as it was) and no temporary directory remains."""
    model, report = pruned("llama")
    tok = tokenizer("llama")
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old export")

    def fail(*args, **kwargs):
        raise KeyboardInterrupt("interrupted while writing")

    monkeypatch.setattr(type(tok), "save_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        export_pruned(model, tok, out, report=report, overwrite=True)
    if existing:
        assert [p.name for p in out.iterdir()] == ["old.txt"], "EXP-3: the old export was damaged"
    else:
        assert not out.exists(), "EXP-3: a half-written export sits at --out"
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if existing else []), "EXP-3: temporary files left"


@req("EXP-4")
def test_exp_4_loading_refuses_what_it_cannot_load_safely(tmp_path):
    """EXP-4: load_model raises naming the problem: FileNotFoundError for a missing directory, ValueError for
    a file where a directory belongs, a directory without config.json, one whose weights are only a pickle
    checkpoint (never unpickled), and trust_remote_code stays False unless asked."""
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_model(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        load_model(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path / "empty")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir("llama") / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ValueError, match=r"safetensors.*pytorch_model\.bin"):
        load_model(pickled)


@req("EXP-4")
def test_exp_4_a_model_without_decoder_blocks_is_named():
    """EXP-4: a model with no recognisable decoder blocks is a ValueError naming its class."""
    from rac.reference.compress import compress as reference_compress

    class NoBlocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match="NoBlocks"):
        decoder_blocks(NoBlocks())
    with pytest.raises(ValueError, match="decoder blocks"):
        reference_compress(
            NoBlocks(),
            collect_calibration(fresh("llama"), tokenizer("llama"), list(problems(1)), mode="prompt"),
            method="wanda",
            sparsity=0.5,
        )


def _hub_cache(root, repo_id: str, source) -> str:
    """A Hugging Face cache laid out as huggingface_hub leaves it: models--org--name/snapshots/<rev> + refs/main."""
    import shutil

    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return str(snapshot)


@req("EXP-5")
def test_exp_5_model_ids_resolve_through_the_local_cache(tmp_path, monkeypatch, capsys):
    """EXP-5: --model takes a Hugging Face id ("org/name" or "hf:org/name"), resolved through the local cache
    (HF_HUB_CACHE), offline; an id that is not cached is a FileNotFoundError saying nothing is downloaded."""
    from rac.cli.export import resolve_model
    from rac.cli.main import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _hub_cache(tmp_path / "hub", "acme/tiny-llama", model_dir("llama"))
    assert str(resolve_model("acme/tiny-llama")) == snapshot
    assert str(resolve_model("hf:acme/tiny-llama")) == snapshot
    model = load_model("acme/tiny-llama")
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(FileNotFoundError, match="not in .*nothing is downloaded"):
        resolve_model("acme/not-cached")
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "--model", "acme/tiny-llama", "--num-prompts", "2", "--max-new-tokens", "2", "--quiet",
                 "--no-eval", "--out", "out"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["command"]["model_dir"] == snapshot
