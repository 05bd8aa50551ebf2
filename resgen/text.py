"""How resgen writes shapes, sizes and counts for people: one formatter for each."""

from __future__ import annotations

from collections.abc import Iterable


def shape_text(shape: Iterable[int] | None, times: str = "x", unknown: str = "?") -> str:
    """`64x56x56` (C x H x W), `1000` (flat); `unknown` when there is no shape."""
    return unknown if shape is None else times.join(str(v) for v in shape)


def size_text(value, times: str = "×") -> str:
    """A kernel or output size: 3 -> 3×3, (1, 7) -> 1×7."""
    if isinstance(value, tuple | list) and len(value) == 2:
        return f"{value[0]}{times}{value[1]}"
    return "?" if value is None else f"{value}{times}{value}"


def axis_text(value, times: str = "×") -> str:
    """A per-axis argument: 2 -> 2, (2, 2) -> 2, (2, 1) -> 2×1."""
    if isinstance(value, tuple | list) and len(value) == 2:
        return str(value[0]) if value[0] == value[1] else f"{value[0]}{times}{value[1]}"
    return str(value)


def pair_text(value: tuple[int, int] | None, none: str, times: str = "x") -> str:
    """An (h, w) pair that is usually square: (8, 8) -> 8, (8, 4) -> 8x4."""
    if value is None:
        return none
    return str(value[0]) if value[0] == value[1] else f"{value[0]}{times}{value[1]}"


def count_text(n: int | None, style: str = "fixed") -> str:
    """A count with an SI suffix. style "fixed": two decimals and K (1234567 -> 1.23M, 1152 ->
    1.15K), for tables; "short": three significant figures and k (950, 9.54k, 15.0M, 4.09G),
    for diagram labels. Plain digits below 1000; "?" for an unknown count."""
    if n is None:
        return "?"
    kilo = "K" if style == "fixed" else "k"
    for scale, suffix in ((10**9, "G"), (10**6, "M"), (10**3, kilo)):
        if abs(n) >= scale:
            value = n / scale
            if style == "fixed":
                return f"{value:.2f}{suffix}"
            digits = 0 if abs(value) >= 99.95 else 1 if abs(value) >= 9.995 else 2
            return f"{value:.{digits}f}{suffix}"
    return str(n)
