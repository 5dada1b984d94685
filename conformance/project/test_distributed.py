"""DIST-*: rac.fast on K processes (torch.distributed, gloo on the CPU) gives the one-process result.

Every run here is a separate process tree: one plain process for K = 1 (no process group, the
one-process code path), ``python -m torch.distributed.run --standalone --nproc-per-node K`` for
K = 2 and 3. Every process uses one thread (``torch.set_num_threads(1)``), so K is the only thing
that differs. The workers are this file run as a script (``_worker``); rank 0 saves what it got.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from rac.conformance.checking.fast_checks import fast_fixture  # noqa: F401  (the ``fast`` fixture)
from rac.conformance.checking.helpers import req

HERE = Path(__file__).resolve()
#: a K-process run of these fixtures takes 10-40 s on 2 cores; anything beyond this is a hang
RUN_TIMEOUT_S = 240
#: Phase I and II options of the worker (sampled traces, a token budget that cuts a trace, several chunks)
SAMPLING = dict(temperature=0.7, top_k=50, top_p=0.95, seed=3)
PROMPTS = 6
MAX_NEW_TOKENS = 12
GEN_BATCH = 2
#: cuts the third of six traces (the uncut set has 369 tokens; the budget lands inside a round of K batches)
TOKEN_BUDGET = 150
PRUNE = dict(method="sparsegpt", sparsity=0.5, batch_size=1)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", RAC_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1")
    env.pop("RAC_FAULT", None)
    return env


def _launch(k: int, args: list, env=None, timeout=RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    if k == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}", *args]
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


@lru_cache(maxsize=None)
def _result(k: int, tmp: str) -> dict:
    out = Path(tmp) / f"k{k}.pt"
    proc = _launch(k, [str(HERE), "worker", str(out)])
    assert proc.returncode == 0, f"K={k} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return torch.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("dist"))
    return lambda k: _result(k, tmp)


# --------------------------------------------------------------------------- DIST-1: Phase I


@req("DIST-1")
@pytest.mark.parametrize("k", [2, 3])
def test_dist_1_traces_are_the_same_for_any_world_size(fast, runs, k):
    """DIST-1: the calibration set (sampled traces, token ids, labels, the budget's cut, stops) of K ranks
    is the one-process set token for token, on every rank (rank 0 saves it; each rank also compares its
    own with rank 0's, ``all_ranks_same``)."""
    one, many = runs(1)["calibration"], runs(k)["calibration"]
    assert len(many["sequences"]) == len(one["sequences"]), f"DIST-1 (K={k}): another number of sequences"
    for i, (a, b) in enumerate(zip(one["sequences"], many["sequences"])):
        assert torch.equal(a, b), f"DIST-1 (K={k}): sequence {i} differs"
    for i, (a, b) in enumerate(zip(one["labels"], many["labels"])):
        assert torch.equal(a, b), f"DIST-1 (K={k}): labels of sequence {i} differ"
    assert many["meta"] == one["meta"], f"DIST-1 (K={k}): meta differs: {many['meta']} vs {one['meta']}"
    assert one["meta"]["trace_stops"]["budget"] == 1, "the fixture must cut one trace at the token budget"
    assert runs(k)["all_ranks_same"], f"DIST-1 (K={k}): the ranks do not hold the same calibration set"


# --------------------------------------------------------------------------- DIST-2: Phase II


@req("DIST-2")
@pytest.mark.parametrize("k", [2, 3])
def test_dist_2_weights_masks_and_token_counts_are_the_same_for_any_world_size(fast, runs, k):
    """DIST-2: with dense and with sequential propagation, every layer pruned by K ranks has bitwise the
    one-process weights (so the same mask), and the report the same token counts per layer and the same
    calibration summary (integer sums).

    Tolerance 0, derived: the only arithmetic that K could change is H = sum over chunks of float32 terms
    x^T x. Each term is the same GEMM on the same chunk (the chunks are one process's, run one at a time by
    the rank that holds them, one thread per process), and the owner rank adds the terms in one process's
    order (chunk 0, 1, 2, ...; within a chunk, the order of the hooks and sources): the same float32
    additions of the same operands, so H is bitwise the same, and so is everything computed from it. (A
    reduce of per-rank partial sums adds in another order: |dH| <= 2 (m - 1) eps32 sqrt(H_jj H_kk) for m
    chunks (Higham 4.2 with Cauchy-Schwarz), enough to flip near-ties of the mask.)"""
    one, many = runs(1), runs(k)
    for prop in ("dense", "sequential"):
        for key, W1 in one[prop]["weights"].items():
            WK = many[prop]["weights"][key]
            assert torch.equal(W1 != 0, WK != 0), f"DIST-2 (K={k}, {prop}, {key}): " \
                f"{int(((W1 != 0) != (WK != 0)).sum())} mask entries differ"
            assert torch.equal(W1, WK), f"DIST-2 (K={k}, {prop}, {key}): weights differ by " \
                f"{float((W1 - WK).abs().max()):.3g} (the H sum must be bitwise the one-process sum)"
    for prop in ("dense", "sequential"):
        a, b = one[prop]["report"], many[prop]["report"]
        assert b["world_size"] == k and "world_size" not in a
        assert b["calibration"] == a["calibration"] and b["chunks"] == a["chunks"]
        assert [(r["block"], r["name"], r["tokens"]) for r in b["layers"]] == \
            [(r["block"], r["name"], r["tokens"]) for r in a["layers"]], f"DIST-2 (K={k}, {prop}): token counts"


# --------------------------------------------------------------------------- DIST-3, DIST-4: the rac command

#: the bundled toy reasoner (4 blocks), 4 prompts, one sequence per Phase II chunk (so K ranks share them),
#: a 4-problem evaluation before and after
CLI = ["-m", "rac.cli.main", "prune", "--num-prompts", "4", "--max-new-tokens", "8", "--sparsity", "0.5",
       "--batch-size", "1", "--gen-batch-size", "1", "--quiet"]
EVAL = ["--num-eval", "4", "--eval-max-new-tokens", "320"]


def _masks(out: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v != 0 for k, v in load_file(out / "model.safetensors").items() if k.endswith("proj.weight")}


@lru_cache(maxsize=None)
def _cli(k: int, tmp: str) -> Path:
    out = Path(tmp) / f"cli-k{k}"
    proc = _launch(k, [*CLI, *EVAL, "--out", str(out)])
    assert proc.returncode == 0, f"K={k}: {proc.stdout[-1000:]}\n{proc.stderr[-3000:]}"
    return out


@req("DIST-3")
def test_dist_3_torchrun_prunes_the_toy_reasoner_as_one_process(fast, tmp_path_factory):
    """DIST-3: ``torchrun --nproc-per-node 2 -m rac.cli.main prune`` on the bundled toy reasoner exports the
    one-process masks, the same token counts and the same accuracy before and after pruning (rank 0
    evaluates; the dense toy answers some of the 4 problems within 320 tokens), bitwise the same exported
    weights; only rank 0 writes."""
    tmp = str(tmp_path_factory.mktemp("cli"))
    one, two = _cli(1, tmp), _cli(2, tmp)
    a, b = _masks(one), _masks(two)
    assert a.keys() == b.keys() and len(a) == 4 * 7
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes(), \
        "DIST-3: the exported weights differ from one process's (DIST-2 makes them bitwise the same)"
    differ = {k: int((a[k] != b[k]).sum()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"DIST-3: masks differ from one process: {differ}"
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert rb["world_size"] == 2 and rb["chunks"] == ra["chunks"] == 4
    assert rb["calibration"] == ra["calibration"]
    assert [r["tokens"] for r in rb["layers"]] == [r["tokens"] for r in ra["layers"]]
    assert ra["evaluation"]["dense"]["answered"] > 0, "the evaluation must be able to tell models apart"
    for when in ("dense", "pruned"):
        ea, eb = ra["evaluation"][when], rb["evaluation"][when]
        same = ("acc@1", "answered", "counts", "generated_tokens", "acc@1_by_kind")
        assert {k: eb[k] for k in same} == {k: ea[k] for k in same}, f"DIST-3: {when} evaluation differs"
    assert sorted(p.name for p in Path(tmp).iterdir()) == ["cli-k1", "cli-k2"]


@req("DIST-4")
def test_dist_4_a_killed_rank_ends_the_job_naming_it_and_a_resume_ends_the_same(fast, tmp_path):
    """DIST-4: rank 1 killed (SIGKILL) after block 1 ends the whole job within seconds (no hang: the
    collectives of rank 0 fail as the connection closes; RAC_DIST_TIMEOUT bounds a silent rank), with
    torchrun naming rank 1 and its signal and rank 0 naming the collective; no --out is written. The same
    command again resumes from rank 0's checkpoint and exports bitwise what an uninterrupted 2-rank run
    exports; a resume of that checkpoint by one process (another K) exports the same bytes too."""
    args = [*CLI, "--no-eval", "--checkpoint-dir", str(tmp_path / "ck")]
    whole = _launch(2, [*CLI, "--no-eval", "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    env = dict(_env(), RAC_FAULT="kill:block:1", RAC_FAULT_RANK="1")
    started = time.perf_counter()
    killed = _launch(2, [*args, "--out", str(tmp_path / "out")], env=env)
    seconds = time.perf_counter() - started
    assert killed.returncode != 0 and not (tmp_path / "out").exists()
    text = killed.stdout + killed.stderr
    assert "rank    : 1" in text or "rank: 1" in text, f"DIST-4: torchrun does not name rank 1:\n{text[-3000:]}"
    assert "Signal 9" in text or "SIGKILL" in text, f"DIST-4: the kill is not named:\n{text[-3000:]}"
    assert "DistributedError: rank 0" in text, f"DIST-4: rank 0 does not name the failed step:\n{text[-3000:]}"
    assert seconds < RUN_TIMEOUT_S / 2, f"DIST-4: the failure took {seconds:.0f} s to end the job"
    assert (tmp_path / "ck" / "block-0.safetensors").is_file()
    again = _launch(2, [*args, "--out", str(tmp_path / "out")])
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["resumed_blocks"][:1] == [0], report["resumed_blocks"]
    want = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == want, "DIST-4: the resumed run ends elsewhere"
    # another K: the first blocks come from the 2-rank checkpoint, the rest is computed by one process
    shutil.copytree(tmp_path / "ck", tmp_path / "ck1")
    state = json.loads((tmp_path / "ck1" / "state.json").read_text())
    state["done"], state["complete"] = [0], False
    state["rows"] = [r for r in state["rows"] if r["block"] == 0]
    (tmp_path / "ck1" / "state.json").write_text(json.dumps(state))
    one = _launch(1, [*CLI, "--no-eval", "--checkpoint-dir", str(tmp_path / "ck1"), "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads((tmp_path / "one" / "report.json").read_text())["resumed_blocks"] == [0]
    assert (tmp_path / "one" / "model.safetensors").read_bytes() == want, "DIST-4: a one-process resume differs"


# --------------------------------------------------------------------------- worker


def _worker(out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    import rac.fast as fast
    from rac.conformance.checking.fixture_models import fresh, problems, target_weights, tokenizer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    model = fresh("llama")
    calib = fast.collect_calibration(model, tokenizer("llama"), list(problems(PROMPTS)), mode="rac",
                                     max_new_tokens=MAX_NEW_TOKENS, token_budget=TOKEN_BUDGET, batch_size=GEN_BATCH,
                                     **SAMPLING)
    result = {"calibration": {"sequences": calib.sequences, "labels": calib.labels, "meta": calib.meta}}
    same = True
    if dist.is_initialized():
        mine = [torch.cat(calib.sequences), torch.cat(calib.labels)]
        theirs = [None] * dist.get_world_size()
        dist.all_gather_object(theirs, mine)
        same = all(torch.equal(t[0], mine[0]) and torch.equal(t[1], mine[1]) for t in theirs)
    result["all_ranks_same"] = same
    for prop in ("dense", "sequential"):
        pruned = fresh("llama")
        _, report = fast.compress(pruned, calib, propagation=prop, **PRUNE)
        result[prop] = {"weights": {k: v.clone() for k, v in target_weights(pruned).items()}, "report": report}
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(result, out)
    if dist.is_initialized():
        # every rank past its last receive before any tears its connections down: without it a rank that returned
        # early (a broadcast's root) could close while another still read, and that one aborted in gloo
        # ("terminate called without an active exception", SIGABRT; about 1 run in 6 of K = 3 on 2 cores)
        dist.barrier()
        dist.destroy_process_group()


def _bench(tokens: int, out: str) -> None:
    """docs/benchmarks.md, "Distributed (CPU, measured)": Phase II (SparseGPT 50 %, sequential) of the
    Llama benchmark shape (bench_model.random_model(1024, 2816, 4)) on ``tokens`` random calibration tokens,
    one thread per process; each rank writes its wall time and peak RSS to ``out``.rank<r>.json."""
    import resource

    import torch.distributed as dist

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import rac.fast as fast
    from rac.conformance.benchmarks.bench_model import random_calibration, random_model

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    model, calib = random_model(1024, 2816, 4), random_calibration(tokens)
    started = time.perf_counter()
    _, report = fast.compress(model, calib, method="sparsegpt", sparsity=0.5, batch_size=8, device="cpu")
    seconds = time.perf_counter() - started
    rank = dist.get_rank() if dist.is_initialized() else 0
    Path(f"{out}.rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": report.get("world_size", 1), "phase2_s": seconds, "chunks": report["chunks"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
        "activations_plan_mib": report["memory_plan_bytes"]["activations"] / 2**20}))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(sys.argv[2])
    elif sys.argv[1] == "bench":
        _bench(int(sys.argv[2]), sys.argv[3])


_SIGTERM_SCRIPT = """
import os, signal, time
from rac.fast import distributed
distributed.install_sigterm_handler()
distributed._collective("Phase II H terms, block 1", lambda: None)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(5)
print("not stopped")
"""


@req("DIST-4")
def test_dist_4_a_rank_stopped_by_torchrun_names_its_last_collective(fast, tmp_path):
    """DIST-4: torchrun ends the other ranks with SIGTERM when one fails, which can arrive before their own next
    collective fails; the stopped rank still says what it was doing (the last collective it entered)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _SIGTERM_SCRIPT], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode != 0 and "not stopped" not in proc.stdout
    assert "DistributedError: this rank: stopped by SIGTERM after the collective 'Phase II H terms, block 1'" in \
        proc.stderr, proc.stderr[-2000:]
