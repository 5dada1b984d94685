"""What ``alloc.retain_freed`` (spec FAST-13) buys and costs in Phase II on a CPU: time and peak memory of
``rac.fast.compress`` with it and with ``RAC_FAST_RETAIN_FREED=0`` (quoted in fast/alloc.py and
docs/benchmarks.md).

    python conformance/benchmarks/probe_retain.py [blocks] [tokens] [threads] [rounds]   # default 2 32768 1 2

Each run is a child process (the peak is a process's high-water mark, VmHWM, and the thresholds are process
state): the Phase II case of cases_phase2.py (Llama 1024/2816, SparseGPT 50 %, sequential propagation, batch
16 x 512, 8,192-token chunks) cut to ``blocks`` blocks and ``tokens`` tokens, the two settings alternating
round by round. Prints one line per run: setting, Phase II seconds, peak memory (MiB), load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import json, sys, time, torch
sys.path.insert(0, {here!r})
torch.set_num_threads({threads})
import cases_phase2 as c
from rac.fast import compress
model = c.random_model(1024, 2816, {blocks})
calib = c.random_calibration({tokens}, 512)
t = time.perf_counter()
compress(model, calib, method="sparsegpt", sparsity=0.5, device="cpu", batch_size=16, chunk_tokens=8192)
seconds = time.perf_counter() - t
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(json.dumps({{"seconds": seconds, "peak_mib": hwm / 1024}}))
"""


def run(setting: str, blocks: int, tokens: int, threads: int) -> dict:
    env = dict(os.environ, RAC_FAST_RETAIN_FREED="1" if setting == "retain" else "0")
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, threads=threads, blocks=blocks,
                                                                 tokens=tokens)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]), setting=setting, load=load)


def main(blocks: int = 2, tokens: int = 32768, threads: int = 1, rounds: int = 2) -> None:
    for r in range(rounds):
        for setting in ("plain", "retain") if r % 2 == 0 else ("retain", "plain"):
            row = run(setting, blocks, tokens, threads)
            print(f"round {r} {row['setting']:6s} {row['seconds']:7.1f} s  peak {row['peak_mib']:6.0f} MiB  "
                  f"load {row['load']:.2f}", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
