"""Fault injection for the reliability tests (spec REL-*): kill the process at a named point.

``RAC_FAULT=kill:POINT`` makes ``rac prune`` SIGKILL itself when it reaches POINT, as a crash, an
out-of-memory kill or a pre-empted machine would: ``phase1`` (after the first calibration prompt),
``block:N`` (after decoder block N is pruned and checkpointed), ``export`` (with the pruned model
written to the temporary directory, before it is renamed into place). Nothing happens without the
variable; the tests use it to show that a re-run of the same command ends bitwise where an
uninterrupted run ends. ``phase2`` is reached when Phase II starts.

``RAC_MARKS=FILE`` appends ``<unix time> <point>`` to FILE at every point: the memory benchmark
(conformance/benchmarks/bench_stream_memory.py) uses it to find Phase II in its samples.
"""

from __future__ import annotations

import os
import signal
import time


def reached(point: str) -> None:
    """SIGKILL this process if ``RAC_FAULT`` is ``kill:<point>``; note the time in ``RAC_MARKS``'s file if set."""
    marks = os.environ.get("RAC_MARKS")
    if marks:
        with open(marks, "a", encoding="utf-8") as f:
            f.write(f"{time.time():.6f} {point}\n")
    if os.environ.get("RAC_FAULT") == f"kill:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
