"""The one harness for every comparison between implementations (issue #15).

A case runs its implementations interleaved in one process (round r: A, B, C; round r + 1: A, B,
C; ...), so every implementation sees the same load periods and the ratio is computed within the
run, round by round. Around the rounds, with the case's torch thread count fixed (and recorded),
the harness measures the float32 and float64 GEMM rates and the copy bandwidth before and after
(the best of the two is kept: a lower bound needs the fastest rate the device showed) and records
os.getloadavg() at every round. The result keeps every round, so the ratio's spread can be shown
(``summarise.py``). Nothing here asserts a time.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time

import torch


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def rates(gemm_size: int, repeats: int = 3) -> dict:
    """float32 / float64 GEMM FLOP/s (square, full float32 precision) and copy bytes/s (64 MiB float32)."""
    out = {}
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for dtype in (torch.float32, torch.float64):
            a = torch.randn(gemm_size, gemm_size, dtype=dtype)
            a @ a  # warm-up
            out[f"gemm_{dtype}".replace("torch.", "")] = 2 * gemm_size**3 / _best(lambda a=a: a @ a, repeats)
    finally:
        torch.set_float32_matmul_precision(previous)
    src = torch.ones(16 * 2**20, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    out["copy_bytes_per_s"] = 2 * src.numel() * 4 / _best(lambda: dst.copy_(src), repeats)
    return out


def machine() -> dict:
    """Device name, cores, torch, commit: what every figure names (docs/benchmarks.md)."""
    name = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        try:
            proc = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
            return proc.stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "device": f"cpu ({name}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty_paths": [p[3:] for p in git("status", "--porcelain", "--untracked-files=no").splitlines()],
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def compare(name: str, impls: dict, *, threads: int, rounds: int, gemm_size: int, warmup: bool = True,
            rate_repeats: int = 3, meta: dict | None = None) -> dict:
    """Run ``impls`` ({label: zero-argument callable}) interleaved for ``rounds`` rounds at ``threads`` threads.

    Returns a JSON-ready dict: the case's name and ``meta``, threads, rates before/after and the best,
    every round's seconds and 1-minute load per implementation, and each implementation's last result
    under ``results`` (not serialised; the caller checks objectives from it).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        before = rates(gemm_size, rate_repeats)
        results = {}
        if warmup:
            for label, fn in impls.items():
                results[label] = fn()
        samples = []
        for r in range(rounds):
            for label, fn in impls.items():
                load = os.getloadavg()[0]
                t = time.perf_counter()
                results[label] = fn()
                samples.append({"round": r, "impl": label, "seconds": time.perf_counter() - t, "loadavg_1min": load})
        after = rates(gemm_size, rate_repeats)
    finally:
        torch.set_num_threads(previous_threads)
    best = {k: max(before[k], after[k]) for k in before}
    return {
        "name": name, **(meta or {}), "threads": threads, "rounds": rounds, "warmup": warmup,
        "gemm_size": gemm_size, "rates_before": before, "rates_after": after, "rates": best,
        "samples": samples, "results": results,
    }


def times(case: dict, impl: str) -> list:
    return [s["seconds"] for s in case["samples"] if s["impl"] == impl]


def ratios(case: dict, slower: str, faster: str) -> list:
    """Per-round time(slower) / time(faster), same round (interleaved, so the same load period)."""
    return [a / b for a, b in zip(times(case, slower), times(case, faster))]
