"""The Python API behind `resgen.load`, `check`, `analyse` and `summary` (see resgen/__init__):
the same answers as the commands, as data. Nothing here imports torch, Jinja or Graphviz."""

from __future__ import annotations

import os

from resgen import expr as E
from resgen import spec as S
from resgen.diagnostics import SpecError
from resgen.resolve import Loader


def load(path: str | os.PathLike) -> S.Spec:
    return Loader().load(path)


def load_spec(path: str | os.PathLike, params=None, input=None) -> S.Spec:
    """resgen.load: the spec with `params` ({name: value}) as new param defaults and `input`
    ((C, H, W) or (H, W)) as its input, as --param and --input give them."""
    options = tuple(f"{name}={_arch_value(value)}" for name, value in (params or {}).items())
    spec = Loader(params=options).load(path)
    if input is None or spec.network is None:
        return spec
    sizes = tuple(input)
    if len(sizes) not in (2, 3) or not all(isinstance(v, int) and v >= 1 for v in sizes):
        raise ValueError(f"input is (C, H, W) or (H, W) of positive integers, not {input!r}")
    old = spec.network.input
    span = old.span if old is not None else spec.network.span
    dims = [E.literal(v, span) for v in sizes]
    if len(dims) == 2:
        dims.insert(0, old.channels if old is not None else E.literal(3, span))
    shape = S.InputShape(span=span, channels=dims[0], height=dims[1], width=dims[2])
    network = spec.network.model_copy(update={"input": shape})
    return spec.model_copy(update={"network": network})


def _arch_value(value) -> str:
    """A Python value as .arch text: true/false, numbers, (h, w) pairs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple) and len(value) == 2:
        return f"({_arch_value(value[0])}, {_arch_value(value[1])})"
    raise ValueError(f"a param value is a number, a boolean or an (h, w) pair, not {value!r}")


def _spec_of(spec_or_path) -> S.Spec:
    return spec_or_path if isinstance(spec_or_path, S.Spec) else load(spec_or_path)


def check_spec(spec_or_path) -> list[dict]:
    """resgen.check: every diagnostic, as `check --json` objects."""
    from resgen.shapes import analyse as shape_analysis

    try:
        spec = _spec_of(spec_or_path)
        diagnostics = [] if spec.network is None else shape_analysis(spec).diagnostics
    except SpecError as err:
        diagnostics = err.diagnostics
    return [d.as_dict() for d in diagnostics]


def analyse_spec(spec_or_path, input=None):
    """resgen.analyse: the Analysis of a spec or path, at `input` when given."""
    spec = _spec_of(spec_or_path)
    if input is not None:
        sizes = tuple(input)
        input = sizes if len(sizes) == 3 else (None, *sizes)
    from resgen.shapes import analyse

    return analyse(spec, input)
