"""Small helpers shared by the test modules."""

from __future__ import annotations

import pytest

req = pytest.mark.req


def needs(port, method: str, pattern: str = "unstructured", options=()) -> None:
    """Skip (with the reason) when the port declares it does not implement this."""
    if not port.supports(method, pattern, options):
        pytest.skip(f"port {port.name} does not declare {method} / {pattern} / options {sorted(options)}")
