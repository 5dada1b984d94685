"""The reproductions of docs/ports/llmcompressor.md still reproduce (run by `nox -s conformance_llmcompressor`).

Each ```python block of the page whose first line is ``# LC-n`` runs after the
``# setup`` block, in a fresh namespace; its asserts state the deviation. When
llm-compressor changes and a block stops reproducing, its test fails and the
page (and conformance/ports_llmcompressor.xfail) must be updated.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("llmcompressor", reason="llm-compressor is installed only in `nox -s conformance_llmcompressor`")

PAGE = Path(__file__).with_name("llmcompressor.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> dict:
    out = {}
    for body in _BLOCK.findall(PAGE.read_text(encoding="utf-8")):
        tag = body.splitlines()[0].lstrip("# ").strip()
        assert tag not in out, f"{PAGE.name}: two blocks tagged {tag!r}"
        out[tag] = body
    return out


BLOCKS = _blocks()
CASES = sorted((t for t in BLOCKS if t != "setup"), key=lambda t: int(t.split("-")[1]))


def test_page_has_a_setup_and_every_deviation():
    assert "setup" in BLOCKS
    assert CASES == [f"LC-{i}" for i in range(1, len(CASES) + 1)], f"blocks found: {CASES}"


@pytest.mark.parametrize("tag", CASES)
def test_reproduction_reproduces(tag):
    namespace: dict = {}
    exec(compile(BLOCKS["setup"], f"{PAGE.name}:setup", "exec"), namespace)
    exec(compile(BLOCKS[tag], f"{PAGE.name}:{tag}", "exec"), namespace)
