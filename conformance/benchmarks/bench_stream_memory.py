"""Peak host memory of `rac prune`, whole model against streamed weights (docs/benchmarks.md).

    python conformance/benchmarks/bench_stream_memory.py [--json docs/bench/stream-memory-cpu-<time>.json]

Runs `rac prune` (Phase I in prompt mode, which decodes nothing; Phase II SparseGPT 50 %; export) in a
child process per run, sampling the child's memory every 5 ms (VmRSS, and its two parts RssAnon, what the
process allocated, and RssFile, pages of mapped files the kernel may drop): ``imports`` (torch,
transformers, rac imported: a floor every run pays), ``whole`` (the model loaded, then pruned) and
``streamed`` (``--stream-weights``). Models: the toy reasoner (the largest fixture) and two random Llamas
written for the run, 12 and 48 blocks of hidden size 512 (13.4 MB a block in float32), so that what
grows with the model shows above what every run pays: the whole-model peak grows by about the model's
size, the streamed peak should not grow with the number of blocks at all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IMPORTS_ONLY = "import torch, transformers, safetensors; import rac.cli.main, rac.fast, rac.cli.export"


FIELDS = ("VmRSS", "RssAnon", "RssFile")


def peak_rss(cmd, env, marks: Path | None = None) -> dict:
    """Peak of each of FIELDS in bytes for a child process, sampled every 5 ms. RssAnon is the memory the
    process allocated; RssFile counts pages of files it maps (safetensors read through mmap), which the
    kernel can drop under pressure: both are kept so neither hides the other. With ``marks`` (the child's
    RAC_MARKS file, rac.cli.faults) also Phase II's own: the memory when it starts, its peak, and the peak's
    excess over the start ("phase2_*")."""
    if marks is not None:
        env = dict(env, RAC_MARKS=str(marks))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = dict.fromkeys(FIELDS, 0)
    samples = []

    def sample():
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                now, row = time.time(), {}
                for line in status.read_text().splitlines():
                    field = line.split(":")[0]
                    if field in peak:
                        row[field] = int(line.split()[1]) * 1024
                        peak[field] = max(peak[field], row[field])
                samples.append((now, row))
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.005)

    thread = threading.Thread(target=sample)
    thread.start()
    _, err = proc.communicate()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    if marks is not None and marks.is_file():
        times = dict(reversed(line.split()) for line in marks.read_text().splitlines() if line.strip())
        start, end = float(times["phase2"]), float(times["phase2-done"])
        inside = [row for t, row in samples if start <= t <= end and len(row) == len(FIELDS)]
        before = [row for t, row in samples if t < start and len(row) == len(FIELDS)]
        if inside and before:
            for f in FIELDS:
                peak[f"phase2_start_{f}"] = before[-1][f]
                peak[f"phase2_peak_{f}"] = max(row[f] for row in inside)
                peak[f"phase2_excess_{f}"] = peak[f"phase2_peak_{f}"] - before[-1][f]
    return peak


def random_llama(directory: Path, blocks: int = 24, hidden: int = 512, intermediate: int = 1536) -> Path:
    """A random Llama with the fixtures' tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rac.fixtures import TOKENIZER

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=blocks, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


def measure(model: Path, work: Path, prompts: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    common = [sys.executable, "-m", "rac.cli.main", "prune", "--model", str(model), "--calibration", "prompt",
              "--num-prompts", str(prompts), "--no-eval", "--quiet", "--sparsity", "0.5", "--device", "cpu"]
    runs = {"imports": peak_rss([sys.executable, "-c", IMPORTS_ONLY], env)}
    for name, extra in (("whole", []), ("streamed", ["--stream-weights"])):
        out = work / f"{model.name}-{name}"
        runs[name] = peak_rss([*common, *extra, "--out", str(out)], env, marks=work / f"{model.name}-{name}.marks")
        report = json.loads((out / "report.json").read_text())
    config = json.loads((model / "config.json").read_text())
    tokens = report["calibration"]["tokens"]
    return {
        "model": model.name, "model_bytes": sum(p.stat().st_size for p in model.glob("*.safetensors")),
        "blocks": config["num_hidden_layers"], "hidden": config["hidden_size"], "calibration_tokens": tokens,
        "calibration_store_bytes": tokens * config["hidden_size"] * 4, "peak_rss_bytes": runs,
        "excess_over_imports_bytes": {k: {f: v[f] - runs["imports"][f] for f in FIELDS}
                                      for k, v in runs.items() if k != "imports"},
        "phase2_excess_over_its_start_bytes": {k: {f: v.get(f"phase2_excess_{f}") for f in FIELDS}
                                               for k, v in runs.items() if k != "imports"},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--blocks", type=int, nargs="+", default=[12, 48], help="random Llamas of these depths")
    args = parser.parse_args(argv)
    from rac.fixtures import TOY_REASONER

    # the commit the children run, read before the first one starts (and whether the tree differs from it)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    results = []
    with tempfile.TemporaryDirectory(prefix="rac-stream-") as tmp:
        work = Path(tmp)
        models = [TOY_REASONER, *(random_llama(work / f"llama-{n}x512", blocks=n) for n in args.blocks)]
        for model in models:
            r = measure(Path(model), work, args.prompts)
            results.append(r)
            mb = 2**20
            excess = r["excess_over_imports_bytes"]
            print(f"{r['model']}: model {r['model_bytes'] / mb:.1f} MB, "
                  f"store {r['calibration_store_bytes'] / mb:.2f} MB; "
                  f"peak RSS of imports {r['peak_rss_bytes']['imports']['VmRSS'] / mb:.0f} MB; over it: " + ", ".join(
                      f"{run} " + " ".join(f"{f} +{excess[run][f] / mb:.0f}" for f in FIELDS) for run in excess))
            own = r["phase2_excess_over_its_start_bytes"]
            print("  Phase II's peak over its start: " + ", ".join(
                f"{run} RssAnon +{own[run]['RssAnon'] / mb:.1f} MB, VmRSS +{own[run]['VmRSS'] / mb:.1f} MB"
                for run in own if own[run]["RssAnon"] is not None))
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit + ("+uncommitted changes" if dirty else ""),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "threads": 1,
              "command": " ".join(["python", "conformance/benchmarks/bench_stream_memory.py", *(argv or sys.argv[1:])]),
              "load_average": os.getloadavg(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
