"""CAL-14: llm-compressor's SparseGPT calibrated on ``rac calibrate``'s dataset accumulates rac.fast's H.

Runs only where llm-compressor is installed (``nox -s conformance_llmcompressor``). The Hessians are
read where llm-compressor's SparseGPT uses them: its ``sparsify_weight`` is replaced, for the test,
by one that records H and leaves the weight dense, so every block sees the dense model's inputs
(rac.fast runs with ``propagation="dense"``) and H depends on the calibration data alone, not on
either pruner's mask (whose own differences are LC-1..5). rac.fast's H is read at the same point
(``StreamedBlockHessians.by_source``, summed over sources as Phase II sums them).

llm-compressor's H is (2 / S) Σ_t x_t x_tᵀ over the S sequences (a mean, LC-6); rac.fast's is
Σ_t x_t x_tᵀ. The comparison is entrywise, relative to sqrt(H_ii H_jj), the Cauchy-Schwarz bound
of Σ_t |x_ti x_tj|, which is what float32 summation errors scale with.
"""

from __future__ import annotations

import runpy

import pytest
import torch

pytest.importorskip("llmcompressor", reason="llm-compressor is installed only by nox -s conformance_llmcompressor")

from rac.cli.commands.calibrate import DATASET_DIR, RECIPE_NAME, llmcompressor_recipe, write_calibration  # noqa: E402
from rac.cli.data import read_problems  # noqa: E402
from rac.cli.export import load_model, load_tokenizer  # noqa: E402
from rac.conformance.checking.helpers import req  # noqa: E402
from rac.fixtures import PROBLEMS, model_dir  # noqa: E402
from rac.reference.calibration_set import LABELS, CalibrationSet  # noqa: E402

U32 = 2.0**-24  # float32 unit roundoff


def _rac_hessians(calib) -> dict:
    """(block, linear name) -> rac.fast's float32 H for ``calib`` (dense propagation, one sequence per forward,
    so its forwards are llm-compressor's batch-1 forwards: no padding, the same shapes)."""
    import rac.fast.blocks as blocks
    from rac.fast import compress

    got = {}
    real = blocks.StreamedBlockHessians.by_source

    def by_source(self, leader):
        out = real(self, leader)
        for name in self.groups()[leader]:
            got[self.block_index, name] = sum(out.values()).clone()
        return out

    blocks.StreamedBlockHessians.by_source = by_source
    try:
        compress(load_model(model_dir("llama")), calib, method="sparsegpt", sparsity=0.5, propagation="dense",
                 batch_size=1, device="cpu")
    finally:
        blocks.StreamedBlockHessians.by_source = real
    return got


def _lc_hessians(run) -> dict:
    """(block, linear name) -> the H llm-compressor's SparseGPT would prune with, for ``run(model, tokenizer)``
    (a oneshot call); its sparsify_weight is replaced by one that records H and keeps the weight dense."""
    import llmcompressor.modifiers.pruning.sparsegpt.base as sgpt

    model = load_model(model_dir("llama"))
    names = {module: name for name, module in model.named_modules()}
    got = {}

    def record(module, hessians_dict, **_):
        parts = names[module].split(".")  # model.layers.<block>.<linear name>
        got[int(parts[2]), ".".join(parts[3:])] = hessians_dict.pop(module).clone()
        return 0.0, module.weight.data.clone()

    real = sgpt.sparsify_weight
    sgpt.sparsify_weight = record
    try:
        run(model, load_tokenizer(model_dir("llama")))
    finally:
        sgpt.sparsify_weight = real
    return got


def _oneshot(dataset, **options):
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    def run(model, tokenizer):
        oneshot(model=model, tokenizer=tokenizer, dataset=dataset,
                recipe=SparseGPTModifier(sparsity=0.5, ignore=["re:.*lm_head"]), **options)

    return run


def _deviation(lc: dict, rac: dict, calib) -> tuple:
    """(largest |H_lc - (2/S) H_rac|_ij / sqrt(R_ii R_jj) over every linear, the float32 bound it must stay under
    for the same tokens). Bound: each H is a float32 sum of the N token products (plus, in llm-compressor, a
    rescaling, a scaling and an add per sequence: 3 S more roundings, and 1 for 2/S here), and a float32 sum of
    n terms errs by at most n u Σ|x_ti x_tj| <= n u sqrt(H_ii H_jj) (Higham, Thm 3.5 / Cauchy-Schwarz)."""
    assert set(lc) == set(rac), f"CAL-14: llm-compressor calibrated {sorted(set(lc) ^ set(rac))} differently"
    S, N = len(calib), calib.num_tokens
    worst = 0.0
    for key, H in lc.items():
        R = rac[key].double() * (2.0 / S)
        scale = torch.sqrt(torch.outer(R.diagonal(), R.diagonal()))
        diff = (H.double() - R).abs()
        assert bool((diff[scale == 0] == 0).all()), f"{key}: a dead input has H entries in one of them only"
        worst = max(worst, float((diff / scale.clamp_min(torch.finfo(torch.float64).tiny)).max()))
    return worst, (2 * N + 3 * S + 1) * U32


@pytest.fixture(scope="module")
def rac_set(tmp_path_factory):
    """rac calibrate's output for the llama fixture: 6 prompts + their greedy traces (24 tokens), on disk."""
    from rac.fast import collect_calibration

    d = model_dir("llama")
    problems = [p["problem"] for p in read_problems(PROBLEMS)][:6]
    calib = collect_calibration(load_model(d), load_tokenizer(d), problems, mode="rac", max_new_tokens=24, seed=0)
    calib.activations = None
    out = tmp_path_factory.mktemp("calibrate")
    write_calibration(calib, out)
    (out / RECIPE_NAME).write_text(llmcompressor_recipe(calib))
    return calib, out, _rac_hessians(calib)


def _dataset(out):
    from datasets import load_from_disk

    return load_from_disk(str(out / DATASET_DIR)).select_columns(["input_ids"])


@req("CAL-14")
def test_cal_14_faithful_oneshot_accumulates_rac_fast_hessians(rac_set):
    """The recipe rac calibrate writes, run as written (its ``prune``), gives llm-compressor's SparseGPT the H of
    rac.fast for every linear of every block, up to the 2/S scale, within float32 summation error."""
    calib, out, rac = rac_set
    # RAC's Phase II weights every token 1 (H sums over sources): what llm-compressor can do (it cannot weight, LC-7)
    assert all(bool((calib.token_weights(i) == 1).all()) for i in range(len(calib)))
    assert calib.count("prompt") > 0 and calib.count("decode") > 0, "the set must hold prompts and traces"
    recipe = runpy.run_path(str(out / RECIPE_NAME))
    lc = _lc_hessians(lambda model, tokenizer: recipe["prune"](model, tokenizer, sparsity=0.5))
    assert len(lc) == 14, f"every linear of both blocks calibrated, got {sorted(lc)}"
    worst, bound = _deviation(lc, rac, calib)
    print(f"CAL-14 faithful: max |H_lc - 2/S H_rac| / sqrt(H_ii H_jj) = {worst:.2e} (float32 bound {bound:.2e})")
    assert worst <= bound, f"CAL-14: llm-compressor's H is {worst:.2e} from rac.fast's, beyond {bound:.2e}"


#: llm-compressor settings that change what it calibrates on; the set's longest sequence is 85 tokens, its
#: shortest 65 (asserted below), so the limit 48 cuts every sequence and batches of 3 are cut or padded.
UNFAITHFUL = {
    "max_seq_length 48 (below the longest sequence)": dict(max_seq_length=48),
    "batch_size 3, default truncation collator (each batch cut to its shortest)": dict(batch_size=3),
    "batch_size 3, padding collator (padding positions enter H)": dict(batch_size=3, data_collator="padding"),
}


@req("CAL-14")
@pytest.mark.parametrize("case", list(UNFAITHFUL))
def test_cal_14_other_settings_calibrate_on_other_tokens(rac_set, case):
    """Truncation and padding change llm-compressor's H far beyond rounding (the shuffle default left on)."""
    calib, out, rac = rac_set
    lengths = sorted(s.numel() for s in calib.sequences)
    assert 48 < lengths[0] < lengths[-1], f"the cases assume lengths above 48, not all equal: {lengths}"
    worst, bound = _deviation(_lc_hessians(_oneshot(_dataset(out), **UNFAITHFUL[case])), rac, calib)
    print(f"CAL-14 {case}: max |H_lc - 2/S H_rac| / sqrt(H_ii H_jj) = {worst:.2e} (float32 bound {bound:.2e})")
    # 1e-2: a hundredth of the largest product, hundreds of times the rounding bound: other tokens, not rounding
    assert worst > 1e-2, f"CAL-14: {case} should calibrate on other tokens, H differs by only {worst:.2e}"


@req("CAL-14")
def test_cal_14_defaults_with_few_sequences_only_reorder(rac_set):
    """With llm-compressor 0.14's own defaults (batch 1, no max_seq_length, shuffled, 512 samples) a set of fewer
    than 512 sequences is calibrated whole; shuffling changes only the float32 rounding (LC-6)."""
    calib, out, rac = rac_set
    worst, bound = _deviation(_lc_hessians(_oneshot(_dataset(out))), rac, calib)
    print(f"CAL-14 defaults, {len(calib)} sequences: {worst:.2e} (float32 bound {bound:.2e})")
    assert worst <= bound


@req("CAL-14")
def test_cal_14_defaults_take_512_random_sequences_of_a_larger_set(tmp_path):
    """The default num_calibration_samples=512 (shuffled) calibrates on a random 512 of a larger set; the
    recipe's num_calibration_samples=len(dataset) on all of them."""
    g = torch.Generator().manual_seed(0)
    S, T = 600, 3
    calib = CalibrationSet([torch.randint(3, 600, (T,), generator=g) for _ in range(S)],
                           [torch.full((T,), LABELS.index("text")) for _ in range(S)])
    write_calibration(calib, tmp_path)
    (tmp_path / RECIPE_NAME).write_text(llmcompressor_recipe(calib))
    rac = _rac_hessians(calib)
    recipe = runpy.run_path(str(tmp_path / RECIPE_NAME))
    faithful, bound = _deviation(_lc_hessians(lambda m, t: recipe["prune"](m, t)), rac, calib)
    default, _ = _deviation(_lc_hessians(_oneshot(_dataset(tmp_path))), rac, calib)
    print(f"CAL-14 {S} sequences: recipe {faithful:.2e}, defaults (512 of them) {default:.2e} (bound {bound:.2e})")
    assert faithful <= bound
    # 512 of 600 i.i.d. sequences: H moves by about the weight of the 88 left out, ~88/600 of an entry's scale
    assert default > 1e-2, f"CAL-14: 512 of {S} sequences should change H, it moved by {default:.2e}"
