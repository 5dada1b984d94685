"""MEM-2: Phase II with streamed weights (rac.fast.streamed) prunes the model the whole-model path prunes.

Every block lives on the meta device until Phase II reaches it, is read from the safetensors files,
pruned, propagated through, written to its own shard and released. The result must be the same
tensors, bitwise, as pruning the model held wholly in memory (the same code runs on the same values
in the same order; only where the weights live differs), and the export must load as a model.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import rac.fast
from rac.cli.main import main
from rac.conformance.checking.fixture_models import calibration_set, fresh, state
from rac.conformance.checking.helpers import req
from rac.fast.streamed import INDEX, StreamedWeights, check_materialised
from rac.fixtures import model_dir

ARGS = dict(method="sparsegpt", sparsity=0.5, propagation="sequential", device="cpu")


def _export_tensors(out) -> dict:
    index = json.loads((out / INDEX).read_text())["weight_map"]
    tensors = {}
    for shard in sorted(set(index.values())):
        tensors.update(load_file(str(out / shard)))
    assert set(tensors) == set(index), "the index names exactly the tensors the shards hold"
    return tensors


def _source(tmp_path, name: str, shard_size=None):
    """The fixture model saved as safetensors (sharded when ``shard_size`` is given)."""
    src = tmp_path / f"src-{name}"
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    fresh(name).save_pretrained(src, safe_serialization=True, **kwargs)
    return src


@req("MEM-2")
@pytest.mark.parametrize("name,shard_size", [("llama", None), ("qwen2", "40KB"), ("qwen3", None)])
def test_mem_2_streamed_phase_2_prunes_as_the_whole_model(tmp_path, name, shard_size):
    """MEM-2: bitwise the whole-model result (every tensor of the export, pruned or not), from one file or
    many; the blocks are back on meta after Phase II; the report's rows are the same."""
    calib = calibration_set(name)
    whole, whole_report = rac.fast.compress(fresh(name), calib, **ARGS)
    src = _source(tmp_path, name, shard_size)
    if shard_size:
        assert len(list(src.glob("*.safetensors"))) > 1, "the source must really be sharded"
    weights = StreamedWeights(src)
    skeleton = weights.skeleton()
    assert all(p.is_meta for p in rac.reference.contract.models.decoder_blocks(skeleton).parameters())
    out = tmp_path / "out"
    out.mkdir()
    skeleton, report = rac.fast.compress(skeleton, calib, stream=weights.into(out), **ARGS)
    weights.finish(skeleton)
    assert all(p.is_meta for p in rac.reference.contract.models.decoder_blocks(skeleton).parameters())
    got = _export_tensors(out)
    expected = {k: v for k, v in state(whole).items() if k in got or k != "lm_head.weight"}
    assert set(got) == set(expected), set(got) ^ set(expected)
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, f"streamed tensors differ from the whole-model prune: {different[:4]}"
    assert [r["objective"] for r in report["layers"]] == [r["objective"] for r in whole_report["layers"]]
    loaded = rac.cli.export.load_model(out)
    for key, value in state(loaded).items():
        assert torch.equal(value, state(whole)[key]), key


@req("MEM-2")
def test_mem_2_blocks_past_the_pruned_scope_are_copied_unchanged(tmp_path):
    """MEM-2: pruning only block 0 writes every other block as it was in the files."""
    calib = calibration_set("llama")
    dense = state(fresh("llama"))
    src = _source(tmp_path, "llama")
    weights = StreamedWeights(src)
    skeleton = weights.skeleton()
    out = tmp_path / "out"
    out.mkdir()
    skeleton, _ = rac.fast.compress(skeleton, calib, stream=weights.into(out), blocks=[0], **ARGS)
    weights.finish(skeleton)
    got = _export_tensors(out)
    pruned = [k for k in got if not torch.equal(got[k], dense[k])]
    assert pruned and all(k.startswith("model.layers.0.") for k in pruned), pruned[:4]


@req("MEM-2")
def test_mem_2_weights_on_meta_without_a_stream_are_named(tmp_path):
    """MEM-2: a model whose weights are on the meta device (what an accelerate device_map offloading to disk
    leaves) is refused before any work, saying what is needed."""
    weights = StreamedWeights(_source(tmp_path, "llama"))
    skeleton = weights.skeleton()
    with pytest.raises(ValueError, match=r"meta device.*StreamedWeights.*--stream-weights"):
        rac.fast.compress(skeleton, calibration_set("llama"), **ARGS)
    with pytest.raises(ValueError, match="meta device"):
        check_materialised(skeleton)
    check_materialised(fresh("llama"))  # a model in memory passes


@req("MEM-2")
def test_mem_2_a_directory_without_safetensors_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        StreamedWeights(tmp_path)


def _prune(tmp_path, out, *extra):
    return main(["prune", "--model", str(model_dir("llama")), "--method", "wanda", "--sparsity", "0.5",
                 "--calibration", "prompt", "--num-prompts", "4", "--no-eval", "--device", "cpu",
                 "--out", str(out), *extra])


@req("MEM-2", "CLI-1")
def test_mem_2_rac_prune_stream_weights_exports_the_whole_model_result(tmp_path, capsys):
    """MEM-2: ``rac prune --stream-weights`` writes the export (shards, index, config, tokenizer, report) that
    the whole-model run writes, tensor for tensor."""
    assert _prune(tmp_path, tmp_path / "whole") == 0
    assert _prune(tmp_path, tmp_path / "streamed", "--stream-weights") == 0
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    streamed = _export_tensors(tmp_path / "streamed")
    assert set(whole) == set(streamed)
    assert all(torch.equal(whole[k], streamed[k]) for k in whole)
    for name in ("config.json", "tokenizer.json", "report.json"):
        assert (tmp_path / "streamed" / name).is_file(), name
    assert json.loads((tmp_path / "streamed" / "report.json").read_text())["command"]["stream_weights"] is True


@req("MEM-2", "REL-1")
@pytest.mark.parametrize("extra,named", [
    (("--no-eval",), "--out"),
    (("--no-eval", "--out", "{out}", "--impl", "reference"), "--impl reference"),
    (("--no-eval", "--out", "{out}", "--calibration", "rac"), "--trace-ids"),
    (("--out", "{out}"), "--no-eval"),
])
def test_mem_2_stream_weights_conflicts_are_named_before_the_work(tmp_path, capsys, extra, named):
    """MEM-2: what streaming cannot do (decode, evaluate, the reference) is refused before loading anything,
    naming both options; so is a missing --out."""
    out = tmp_path / "out"
    argv = ["prune", "--model", str(model_dir("llama")), "--method", "wanda", "--sparsity", "0.5",
            "--calibration", "prompt", "--num-prompts", "4", "--stream-weights"]
    assert main(argv + [a.format(out=out) for a in extra]) == 2
    err = capsys.readouterr().err
    assert "--stream-weights" in err and named in err, err
    assert not out.exists()


@req("MEM-2", "REL-3")
def test_mem_2_a_failure_mid_stream_leaves_no_export(tmp_path, monkeypatch, capsys):
    """MEM-2: blocks are written into the export's temporary directory; a failure in Phase II (here: writing
    block 1) leaves no --out and no temporary directory."""
    release = StreamedWeights.release

    def failing(self, block, index):
        if index == 1:
            raise OSError("disk full (injected)")
        return release(self, block, index)

    monkeypatch.setattr(StreamedWeights, "release", failing)
    out = tmp_path / "out"
    assert _prune(tmp_path, out, "--stream-weights") != 0
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
