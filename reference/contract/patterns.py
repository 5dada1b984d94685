"""Sparsity patterns and exact counts: the rules every pruner shares (spec NM-1, CNT-1, CNT-3).

- ``Pattern`` / ``parse_pattern``: ``"unstructured"`` or ``"N:M"``, at most N non-zeros (N kept)
  in every M consecutive inputs of a row, groups aligned at 0, M, 2M, ...;
- ``check_sparsity_for_pattern``: unstructured needs a sparsity, N:M fixes it at 1 - N/M;
- ``pruned_count``: floor(s * n) evaluated exactly on the decimal the user wrote.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .values import check_sparsity

#: The pattern kinds of the spec: unstructured, and N:M (NM-1).
PATTERN_KINDS = ("unstructured", "nm")


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: ``unstructured`` or ``N:M`` (N kept of every M, spec NM-1)."""

    kind: str  # "unstructured" or "nm"
    n: int = 0
    m: int = 0

    def __str__(self) -> str:
        return "unstructured" if self.kind == "unstructured" else f"{self.n}:{self.m}"


_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern, in_features: int | None = None, name: str = "pattern") -> Pattern:
    """Read ``"unstructured"`` or ``"N:M"`` (at most N non-zeros in every M consecutive inputs)."""
    if isinstance(pattern, Pattern):
        p = pattern
    elif not isinstance(pattern, str):
        raise TypeError(f"{name} must be a string, 'unstructured' or 'N:M' such as '2:4', got {pattern!r}")
    elif pattern == "unstructured":
        p = Pattern("unstructured")
    else:
        match = _NM.match(pattern)
        if match is None:
            raise ValueError(f"{name} must be 'unstructured' or 'N:M' such as '2:4', got {pattern!r}")
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ValueError(f"{name} {pattern!r} must satisfy 0 < N < M (N = non-zeros kept per M inputs)")
        p = Pattern("nm", n, m)
    if p.kind == "nm" and in_features is not None and in_features % p.m != 0:
        raise ValueError(
            f"{name} {str(p)!r} needs in_features divisible by M={p.m}, got in_features={in_features}"
        )
    return p


def check_sparsity_for_pattern(sparsity, pattern: Pattern) -> float:
    """Unstructured needs a sparsity; N:M fixes it (1 - N/M) and takes none."""
    if pattern.kind == "nm":
        if sparsity is not None:
            raise ValueError(
                f"sparsity must be None with pattern {str(pattern)!r}: an N:M pattern fixes the sparsity "
                f"at 1 - N/M = {1 - pattern.n / pattern.m:g}; got sparsity={sparsity!r}"
            )
        return 1 - pattern.n / pattern.m
    if sparsity is None:
        raise ValueError("sparsity is required with pattern 'unstructured' (a number in [0, 1))")
    return check_sparsity(sparsity)


def pruned_count(sparsity: float, group_size: int) -> int:
    """Number of weights pruned in a comparison group of ``group_size`` (spec CNT-1).

    floor(s * n), evaluated exactly on the decimal the user wrote: 0.29 means
    29/100, so floor(0.29 * 100) = 29, whereas float arithmetic gives
    28.999999999999996 and a naive floor 28.
    """
    return math.floor(Fraction(repr(float(sparsity))) * group_size)
