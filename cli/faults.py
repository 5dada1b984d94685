"""Fault injection for the reliability tests (spec REL-*): kill the process at a named point.

``RAC_FAULT=kill:POINT`` makes ``rac prune`` SIGKILL itself when it reaches POINT, as a crash, an
out-of-memory kill or a pre-empted machine would: ``phase1`` (after the first calibration prompt),
``block:N`` (after decoder block N is pruned and checkpointed), ``export`` (with the pruned model
written to the temporary directory, before it is renamed into place). Nothing happens without the
variable; the tests use it to show that a re-run of the same command ends bitwise where an
uninterrupted run ends.
"""

from __future__ import annotations

import os
import signal


def reached(point: str) -> None:
    """SIGKILL this process if ``RAC_FAULT`` is ``kill:<point>``."""
    if os.environ.get("RAC_FAULT") == f"kill:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
