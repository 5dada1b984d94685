"""Markdown tables of a bench_layer.py JSON (the tables of docs/benchmarks.md are pasted from this).

    python conformance/benchmarks/summarise.py docs/bench/layer-cpu-1024-<stamp>.json [more.json ...]

Times are pytest-benchmark's minimum over the rounds; "bound" is the lower bound
stored with each case (FLOPs over the GEMM rate of the same run, or bytes over
its copy bandwidth, whichever is larger); "x bound" = time / bound; "speed-up" =
reference time / fast time for the same case.
"""

from __future__ import annotations

import json
import sys


def _fmt(t: float) -> str:
    return f"{t:.3g}"


def header(data: dict, path: str) -> str:
    machine, commit = data.get("machine_info", {}), data.get("commit_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", "?"))
    first = data["benchmarks"][0]["extra_info"] if data["benchmarks"] else {}
    return (f"`{path}`: {data.get('datetime', '?')}, commit {commit.get('id', '?')[:10]}"
            f"{' (dirty tree)' if commit.get('dirty') else ''}, device {first.get('device', '?')} ({cpu}), "
            f"torch threads {first.get('torch_threads', '?')}, torch {machine.get('torch', '')}")


def layer_table(benchmarks: list) -> list:
    rows = {}
    for b in benchmarks:
        e = b["extra_info"]
        if "impl" not in e:
            continue
        rows[(e["size"], e["method"], e["setting"], e["impl"])] = (b["stats"]["min"], e)
    lines = [
        "| size | method | setting | impl | time (s) | bound (s) | x bound | speed-up "
        "| objective / tr(WHWᵀ) | load | run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (size, method, setting, impl), (t, e) in sorted(rows.items()):
        ref = rows.get((size, method, setting, "reference"))
        speed = _fmt(ref[0] / t) + "x" if impl == "fast" and ref else ""
        if speed and ref[1].get("run", 1) != e.get("run", 1):
            speed += " (runs differ)"  # machine load differed between the runs: compare the bounds too
        bound = e["lower_bound_s"]
        lines.append(
            f"| {size} | {method} | {setting} | {impl} | {_fmt(t)} | {_fmt(bound)} | {_fmt(t / bound)} | "
            f"{speed} | {e['objective_relative']:.6g} | {e['loadavg_1min']:.1f} | {e.get('run', 1)} |"
        )
    return lines


def other_table(benchmarks: list, key: str, title: str) -> list:
    rows = [b for b in benchmarks if key in b["extra_info"]]
    if not rows:
        return []
    lines = [f"| size | {title} | time (s) | bound (s) | x bound | load |", "| --- | --- | --- | --- | --- | --- |"]
    for b in sorted(rows, key=lambda b: (b["extra_info"]["size"], b["name"])):
        e = b["extra_info"]
        label = e[key] + (f", {e['dtype']}" if "dtype" in e else "")
        t = b["stats"]["min"]
        lines.append(
            f"| {e['size']} | {label} | {_fmt(t)} | {_fmt(e['lower_bound_s'])} | {_fmt(t / e['lower_bound_s'])} | "
            f"{e['loadavg_1min']:.1f} |"
        )
    return lines


def rates(benchmarks: list) -> list:
    seen = {}
    for b in benchmarks:
        e = b["extra_info"]
        for dt, r in e.get("gemm_flops_per_s", {}).items():
            seen[(e["size"], dt)] = r
    return [f"- GEMM {dt} at {size}: {r / 1e9:.1f} GFLOP/s" for (size, dt), r in sorted(seen.items())]


def main(paths) -> None:
    """One block per file; with several files, also one merged layer table (a later file's case replaces an
    earlier file's, and the "run" column names the file)."""
    merged = []
    for i, path in enumerate(paths, 1):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        bench = data["benchmarks"]
        print(f"run {i}: " + header(data, path), "\n")
        print("\n".join(rates(bench)), "\n")
        bw = {b["extra_info"].get("bandwidth_bytes_per_s") for b in bench} - {None}
        if bw:
            print(f"- copy bandwidth: {max(bw) / 1e9:.2f} GB/s\n")
        for b in bench:
            b["extra_info"]["run"] = i
        merged += bench
        for table in (other_table(bench, "variant", "sweep variant"), other_table(bench, "recipe", "factorisation")):
            if len(table) > 2:
                print("\n".join(table), "\n")
    table = layer_table(merged)
    if len(table) > 2:
        print("\n".join(table), "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
