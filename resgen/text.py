"""How resgen writes shapes, sizes and counts for people: one formatter for each."""

from __future__ import annotations

import re
from collections.abc import Iterable


def shape_text(shape: Iterable[int] | None, times: str = "x", unknown: str = "?") -> str:
    """`64x56x56` (C x H x W), `1000` (flat); `unknown` when there is no shape. A bundle
    (several tensors: a split's chunks) is `4 * 26x56x56`, or its items' shapes by commas."""
    if shape is None:
        return unknown
    items = [s for s in shape if isinstance(s, tuple)]
    if items:
        texts = [shape_text(s, times, unknown) for s in items]
        return f"{len(texts)} * {texts[0]}" if len(set(texts)) == 1 else ", ".join(texts)
    return times.join(str(v) for v in shape)


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


_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """`24GiB` -> 25769803776, `24GB` -> 24000000000 (also KiB/MiB/TiB, kB/MB/TB, B). A unit is
    required, so 24 GiB and 24 GB are never confused. Raises ValueError."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            "expected a size with a unit, e.g. 24GiB (2^30 bytes) or 24GB (10^9 bytes), "
            f"not {text!r}"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ValueError(f"a budget is at least one byte, not {text!r}")
    return int(value)


def bytes_text(n: int, decimals: int | None = None) -> str:
    """Binary units (1 KiB = 1024 bytes), three significant figures unless `decimals` is given:
    1536 -> 1.50 KiB, 25769803776 -> 24.0 GiB (24.00 GiB with decimals=2), 512 -> 512 B."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{n} B"
            digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
            return f"{value:.{digits if decimals is None else decimals}f} {unit}"
        value /= 1024
    return f"{n} B"
