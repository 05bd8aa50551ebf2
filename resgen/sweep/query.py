"""`--where` and `--sort` of `resgen sweep`: conditions in the .arch expression language and
sort keys, over a record's param values and metrics.

Metric names are reserved in `--where` and `--sort`, whatever the spec's params are called:

    valid          true when the variant checks without errors
    params         parameters (the same as param_count; the name of the issue's examples)
    param_count    parameters, as torch counts them
    macs           multiply-accumulates (torchvision's convention)
    memory         training memory in bytes (not estimated by this resgen: unavailable)
    output_stride  the last stage's output stride, an integer ((h, w) when they differ)
    input_c, input_h, input_w   the input size the variant was checked at

A spec param with one of these names cannot be named in `--where` or `--sort` (a located error
says so): a metric never silently stands for a param or the other way round. Every other name
is a spec param: the variant's value (swept, or the spec's default). A metric the variant does
not have (the MACs of an invalid variant) makes the condition false for it: write
`not valid or macs < 4e9` to keep invalid variants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from resgen import codes
from resgen import expr as E
from resgen import spec as S
from resgen.diagnostics import Diagnostic, Diagnostics, Span, SpecError, did_you_mean
from resgen.expr import Value

RESERVED = (
    "valid",
    "params",
    "param_count",
    "macs",
    "memory",
    "output_stride",
    "input_c",
    "input_h",
    "input_w",
)
UNAVAILABLE = {"memory": "this resgen does not estimate memory, so `memory` has no value"}
WHERE = "--where"
_PREFIX = "let where = "


def _env(record) -> dict[str, Value]:
    env = dict(record.params)
    metrics = record.metrics()
    env.update(metrics)
    if "param_count" in metrics:
        env["params"] = metrics["param_count"]
    return {k: v for k, v in env.items() if v is not None}


def _name_problem(name: str, network: S.Network) -> str | None:
    params = [p.name for p in network.params]
    if name in UNAVAILABLE:
        return UNAVAILABLE[name]
    if name in RESERVED and name in params:
        return (
            f"`{name}` is a sweep metric, and network `{network.name}` also has a param "
            f"`{name}`: metric names are reserved here, so rename the param to use it"
        )
    if name not in RESERVED and name not in params:
        return f"`{name}` is neither a metric nor a param of network `{network.name}`" + (
            did_you_mean(name, [*RESERVED, *params])
        )
    return None


@dataclass(frozen=True)
class Where:
    """A parsed --where condition."""

    expr: S.Expr
    text: str

    def matches(self, record) -> bool:
        """Whether the record satisfies it; a name it lacks (an invalid variant's MACs) or an
        error of evaluation (a division by zero at its values) means no."""
        try:
            return E.evaluate(self.expr, _env(record)) is True
        except E.EvalError:
            return False


def parse_where(text: str, network: S.Network, sources: dict[str, str], example) -> Where:
    """Parse and check `--where TEXT`: known names, and true or false at `example` (a record of
    the spec's defaults). Raises SpecError located in the option's text."""
    from resgen.parser import parse_text

    sources[WHERE] = _PREFIX + text
    whole = Span(WHERE, 1, len(_PREFIX) + 1, 1, len(_PREFIX) + len(text) + 1)
    if not text.strip():
        raise SpecError([Diagnostic(whole, codes.SYNTAX, "--where needs a condition")])
    parsed = parse_text(_PREFIX + text + "\n", WHERE)  # raises SpecError, located
    if len(parsed.lets) != 1 or parsed.imports or parsed.blocks or parsed.networks:
        raise SpecError([Diagnostic(whole, codes.SYNTAX, "--where is one expression")])
    expr = parsed.lets[0].value
    diags = Diagnostics()
    for e in E.walk(expr):
        if isinstance(e, S.Func) and e.name not in E.FUNCTIONS:
            diags.error(
                e.span,
                codes.UNKNOWN_FUNCTION,
                f"unknown function `{e.name}`" + did_you_mean(e.name, E.FUNCTIONS),
            )
    for ref in E.free_refs(expr):
        problem = _name_problem(ref.name, network)
        if problem:
            diags.error(ref.span, codes.UNKNOWN_NAME, problem)
    diags.raise_if_errors()
    if example is not None:
        env = _env(example)
        try:
            value = E.evaluate(expr, env)
        except E.EvalError as err:
            value = None
            if err.code != codes.UNKNOWN_NAME:  # only a name the example lacks is fine
                diagnostic = Diagnostic(err.span, err.code, err.message, hint=err.hint)
                raise SpecError([diagnostic]) from None
        if value is not None and not isinstance(value, bool):
            raise SpecError(
                [
                    Diagnostic(
                        whole,
                        codes.TYPE,
                        f"--where is a condition, true or false, not {E.type_name(value)}",
                        hint="compare, e.g. `macs <= 4e9 and params <= 25e6`",
                    )
                ]
            )
    return Where(expr, text)


@dataclass(frozen=True)
class SortKey:
    name: str
    descending: bool


def parse_sort(text: str, network: S.Network) -> list[SortKey]:
    """`--sort macs`, `--sort params:desc,depth` (or `--sort=-params,depth`): metrics or
    params, ascending unless `:desc` (or a leading `-`). Raises ValueError with a sentence."""
    keys = []
    for part in text.split(","):
        part = part.strip()
        name, _, order = part.partition(":")
        descending = name.startswith("-") or order.strip() == "desc"
        name = name.lstrip("-+").strip()
        if order.strip() not in ("", "asc", "desc"):
            raise ValueError(f"--sort {part}: the order is :asc or :desc, not :{order}")
        if not name:
            raise ValueError(f"--sort {text!r}: an empty key")
        problem = _name_problem(name, network)
        if problem:
            raise ValueError(f"--sort {name}: {problem}")
        keys.append(SortKey(name, descending))
    return keys


def sort_records(records: Sequence, keys: Sequence[SortKey]) -> list:
    """Stable sort by each key in turn; a record without the value goes last either way."""
    ordered = list(records)
    for key in reversed(keys):
        present = [r for r in ordered if _value(r, key.name) is not None]
        missing = [r for r in ordered if _value(r, key.name) is None]
        present.sort(key=lambda r, k=key.name: _sortable(_value(r, k)), reverse=key.descending)
        ordered = present + missing
    return ordered


def _value(record, name: str):
    return _env(record).get(name)


def _sortable(value):
    return tuple(value) if isinstance(value, tuple) else (value, value)


def values_of(records: Sequence, name: str) -> list:
    return [_value(r, name) for r in records]


def metric_names() -> Mapping[str, str]:
    return {name: name for name in RESERVED}
