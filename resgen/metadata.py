"""A network's `metadata` section: timm's pretrained_cfg, the data a model's weights were trained
and evaluated with (timm/models/_pretrained.py PretrainedCfg; its fields, names and order).

    metadata {
        interpolation = "bilinear"
        crop_pct = 0.875
        mean = (0.485, 0.456, 0.406)
    }

Values are constants: strings, numbers, true/false and tuples of them. Each key is checked here,
located (`unknown-metadata`, `bad-metadata`, `duplicate-name`). The generated model's
`pretrained_cfg` holds them, after keys resgen knows without being told: `input_size` from the
network's `input`, `num_classes` from its output, `first_conv` and `classifier` from its model
interface (README "Backbones"); a key the section writes wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from resgen import codes
from resgen import spec as S
from resgen.diagnostics import Diagnostics, did_you_mean


def _ints(count: int) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return (
            isinstance(value, tuple)
            and len(value) == count
            and all(type(v) is int and v > 0 for v in value)
        )

    return check


def _numbers(positive: bool) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return (
            isinstance(value, tuple)
            and len(value) > 0
            and all(_is_number(v) and (v > 0 or not positive) for v in value)
        )

    return check


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fraction(value: object) -> bool:
    return _is_number(value) and 0 < value <= 1


def _one_of(*choices: str) -> Callable[[object], bool]:
    return lambda value: value in choices


def _module_path(value: object) -> bool:
    return isinstance(value, str) and all(
        part.isidentifier() or part.isdigit() for part in value.split(".")
    )


# key -> (what it takes, for messages; its check). In PretrainedCfg's order.
KEYS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "input_size": ("(channels, height, width): three positive integers", _ints(3)),
    "test_input_size": ("(channels, height, width): three positive integers", _ints(3)),
    "min_input_size": ("(channels, height, width): three positive integers", _ints(3)),
    "fixed_input_size": ("true or false", lambda v: isinstance(v, bool)),
    "interpolation": (
        '"bilinear", "bicubic", "nearest", "box", "hamming" or "lanczos" (timm\'s names)',
        _one_of("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos"),
    ),
    "crop_pct": ("a number in (0, 1]: the crop's share of the resized image", _fraction),
    "test_crop_pct": ("a number in (0, 1]: the crop's share of the resized image", _fraction),
    "crop_mode": (
        '"center", "squash" or "border" (timm\'s eval transforms)',
        _one_of("center", "squash", "border"),
    ),
    "mean": ("a tuple of numbers, one per input channel", _numbers(False)),
    "std": ("a tuple of positive numbers, one per input channel", _numbers(True)),
    "num_classes": ("a non-negative integer", lambda v: type(v) is int and v >= 0),
    "pool_size": (
        "(height, width) of the map the global pool reads: two positive integers",
        _ints(2),
    ),
    "first_conv": ('a module path, e.g. "conv1" or "stem.conv"', _module_path),
    "classifier": ('a module path, e.g. "fc" or "head.fc"', _module_path),
}
FLOAT_KEYS = frozenset({"crop_pct", "test_crop_pct", "mean", "std"})


def check_entries(entries: Iterable[S.MetaEntry], diags: Diagnostics) -> None:
    """Report unknown keys, repeated keys and values of the wrong type, each at its line."""
    seen: dict[str, S.MetaEntry] = {}
    for entry in entries:
        if entry.key not in KEYS:
            diags.error(
                entry.key_span,
                codes.UNKNOWN_METADATA,
                f"`{entry.key}` is not a metadata key" + did_you_mean(entry.key, KEYS),
                hint="the keys are timm's pretrained_cfg fields: " + ", ".join(KEYS),
            )
        elif entry.key in seen:
            diags.error(
                entry.key_span,
                codes.DUPLICATE_NAME,
                f"`{entry.key}` is given twice (first at line {seen[entry.key].span.line})",
            )
        elif not KEYS[entry.key][1](entry.value):
            diags.error(
                entry.span,
                codes.BAD_METADATA,
                f"`{entry.key}` takes {KEYS[entry.key][0]}, not {python(entry.value)}",
            )
        seen.setdefault(entry.key, entry)


def pretrained_cfg(
    network: S.Network,
    input_size: tuple[int, ...],
    num_classes: int | None,
    first_conv: str | None,
    classifier: str | None,
) -> dict[str, object]:
    """The model's pretrained_cfg: what resgen knows (None: not known), then the section's
    values over it, in PretrainedCfg's order."""
    known = {
        "input_size": tuple(input_size),
        "num_classes": num_classes,
        "first_conv": first_conv,
        "classifier": classifier,
    }
    given = {entry.key: _typed(entry.key, entry.value) for entry in network.metadata or ()}
    values = {k: v for k, v in known.items() if v is not None} | given
    return {key: values[key] for key in KEYS if key in values}


def _typed(key: str, value: object) -> object:
    """A number written as an integer where timm keeps floats (`std = (1, 1, 1)`) as a float."""
    if key not in FLOAT_KEYS:
        return value
    return tuple(map(float, value)) if isinstance(value, tuple) else float(value)


def python(value: object) -> str:
    """A metadata value as Python source, strings in double quotes (as ruff formats them)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        items = ", ".join(python(v) for v in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    return repr(value)
