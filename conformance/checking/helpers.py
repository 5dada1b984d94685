"""Small helpers shared by the test modules."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

req = pytest.mark.req


def needs(port, method: str, pattern: str = "unstructured", options=()) -> None:
    """Skip (with the reason) when the port declares it does not implement this."""
    if not port.supports(method, pattern, options):
        pytest.skip(f"port {port.name} does not declare {method} / {pattern} / options {sorted(options)}")


def needs_level(port, level: str) -> None:
    """Skip (with the reason) when the port does not implement this level of the protocol."""
    if not port.supports_level(level):
        pytest.skip(f"port {port.name} does not implement the {level!r} level")



def unchanged(port, got, W) -> bool:
    """``got`` is W left as it was: bitwise W, or W rounded once to the dtype the port declares (a
    float32 port that leaves a weight alone returns float32(W); rac.fast returns W's own dtype)."""
    import torch

    return torch.equal(got, W) or torch.equal(got, W.to(getattr(torch, port.dtype)).to(W.dtype))


@contextmanager
def one_thread():
    """Run the block with one torch CPU thread. Decoding a tiny model is latency-bound: one thread
    is as fast as two on an idle machine and several times faster on a busy one (measured: 1.3 s
    against 11.8 s for six toy problems)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_png(path):
    """The image at ``path`` (an array, via matplotlib), after checking the file is a PNG; skips
    when matplotlib is not installed (the 'test' extra installs it)."""
    pytest.importorskip("matplotlib", reason="reading a PNG needs matplotlib (the 'test' extra installs it)")
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return imread(path)
