"""The design space of a sweep: what each `--param` option of `resgen sweep` lets a param take,
and the variants drawn from it (every combination, or `--sample N` random ones).

An option is `NAME=ITEM,ITEM,...`; commas inside brackets belong to an item, so a pair such as
`(2, 1)` is one value. An item is

    an expression     a constant of the .arch expression language: `64`, `0.5`, `(2, 1)`, `8 * 4`
    LO..HI[:STEP]     a range: LO, LO + STEP, ... up to HI (STEP 1 by default for integers;
                      numbers with a fraction need a STEP); integers when LO, HI and STEP are
    LO..HI[:STEP]~log the same range, drawn log-uniformly by --sample (widths, multipliers)

A grid takes every combination of every item's values, the first param varying slowest.
`--sample N --seed S` draws N variants: for each variant, for each param in the order given,
exactly one `random.Random(S).random()` number u in [0, 1) picks its value:

    a list of values          values[floor(u * len(values))]
    a range with a STEP       uniform: LO + STEP * floor(u * (K + 1)), K = floor((HI - LO) / STEP)
    a range without a STEP    uniform: LO + u * (HI - LO)
    ~log with a STEP q        STEP * ceil(f / q), f = exp(log(L) + u * (log(HI) - log(L))),
                              L = LO - min(q, LO / 2): every multiple of q in [LO, HI] gets the
                              probability mass of its share of the log scale (pycls's
                              sweep/random.py, the RegNet paper's sampler)
    ~log without a STEP       exp(log(LO) + u * (log(HI) - log(LO)))

Several items in one option are pooled as one list of values (ranges expanded); sampling from a
pool picks uniformly among its values. Values of a range with a fraction are exact multiples of
the STEP as written (`2..3:0.001` gives 2.437, not 2.4370000000000003).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from resgen import codes
from resgen import expr as E
from resgen import spec as S
from resgen.diagnostics import Diagnostic, Diagnostics, Span, SpecError, did_you_mean
from resgen.expr import Value

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(
    rf"^\s*(?P<lo>{_NUMBER})\s*\.\.\s*(?P<hi>{_NUMBER})\s*(?::\s*(?P<step>{_NUMBER}))?\s*"
    rf"(?:~\s*(?P<dist>\w+))?\s*$"
)
MAX_GRID = 10_000_000  # variants in one grid: beyond this a sweep is a mistake, not a plan


@dataclass(frozen=True)
class Range:
    """`LO..HI[:STEP][~log]` as written (Decimal keeps `0.1` exact)."""

    lo: Decimal
    hi: Decimal
    step: Decimal | None
    log: bool
    integer: bool  # LO, HI and STEP are whole numbers written without a point

    def value(self, d: Decimal) -> Value:
        return int(d) if self.integer else float(d)

    def count(self) -> int:
        """How many values a grid takes from it (LO, LO + STEP, ..., HI at most)."""
        return int((self.hi - self.lo) // self.step) + 1

    def values(self) -> list[Value]:
        return [self.value(self.lo + self.step * k) for k in range(self.count())]

    def draw(self, u: float) -> Value:
        lo, hi, q = float(self.lo), float(self.hi), self.step
        if self.log:
            floor = lo - min(float(q), lo / 2) if q is not None else lo
            f = math.exp(math.log(floor) + u * (math.log(hi) - math.log(floor)))
            if q is None:
                return self.value(Decimal(repr(min(max(f, lo), hi))))
            k = math.ceil(f / float(q))
            # ceil keeps [LO, HI] for q dividing both; clamp the ends against rounding of f
            k = min(max(k, math.ceil(self.lo / q)), int(self.hi // q))
            return self.value(q * k)
        if q is None:
            return self.value(Decimal(repr(lo + u * (hi - lo))))
        return self.value(self.lo + q * min(int(u * self.count()), self.count() - 1))


@dataclass(frozen=True)
class Axis:
    """One `--param`: a list of values (grid: all of them), or a single range."""

    name: str
    values: tuple[Value, ...] | None  # None: a lone range, sampled as a range
    range: Range | None = None

    def grid(self) -> list[Value]:
        return list(self.values) if self.values is not None else self.range.values()

    def draw(self, u: float) -> Value:
        if self.values is not None:
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        return self.range.draw(u)

    def size(self) -> int:
        return len(self.values) if self.values is not None else self.range.count()


def split_items(text: str) -> list[tuple[int, str]]:
    """Top-level comma-separated items with their offsets: `(2, 1)` stays one item."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            items.append((start, text[start:i]))
            start = i + 1
    items.append((start, text[start:]))
    return items


def parse_axes(options: Sequence[str], network: S.Network, sources: dict[str, str]) -> list[Axis]:
    """The axes of `--param NAME=ITEMS` options, in order. Each option's text is kept in
    `sources` as `--param NAME` (read as `let NAME = ITEMS`), so its errors are quoted and
    located like a spec's. Raises SpecError with every problem found."""
    diags = Diagnostics()
    known = [p.name for p in network.params]
    axes: list[Axis] = []
    for option in options:
        name, eq, text = option.partition("=")
        name = name.strip()
        label = f"--param {name}"
        prefix = f"let {name} = "
        sources[label] = prefix + text
        name_span = Span(label, 1, 5, 1, 5 + max(len(name), 1))
        if not eq or not name:
            diags.error(
                Span(label, 1, 1, 1, len(prefix) + len(text) + 1),
                codes.SYNTAX,
                f"expected NAME=VALUES, e.g. --param depth=18,34 or --param width=32..128:16, "
                f"not {option!r}",
            )
            continue
        if name in (a.name for a in axes):
            diags.error(name_span, codes.DUPLICATE_ARGUMENT, f"--param {name} is given twice")
            continue
        if name not in known:
            diags.error(
                name_span,
                codes.UNKNOWN_ARGUMENT,
                f"network `{network.name}` has no param `{name}`"
                + did_you_mean(name, known)
                + ("" if known else "; it declares no params"),
            )
            continue
        axis = _axis(name, prefix, text, label, diags)
        if axis is not None:
            axes.append(axis)
    diags.raise_if_errors()
    return axes


def _axis(name: str, prefix: str, text: str, label: str, diags: Diagnostics) -> Axis | None:
    values: list[Value] = []
    ranges: list[Range] = []
    ok = True
    for offset, item in split_items(text):
        column = len(prefix) + offset + 1
        span = Span(label, 1, column, 1, column + max(len(item), 1))
        if not item.strip():
            diags.error(span, codes.SYNTAX, "an empty value: two commas in a row, or one at an end")
            ok = False
            continue
        match = _RANGE.match(item)
        if match:
            found = _range(match, span, diags)
            if found is None:
                ok = False
            else:
                ranges.append(found)
            continue
        if ".." in item:
            diags.error(
                span,
                codes.SYNTAX,
                f"`{item.strip()}` is not a range: write LO..HI, LO..HI:STEP or LO..HI:STEP~log "
                "with plain numbers",
            )
            ok = False
            continue
        # Parse the item in place: the other items blanked out, so columns stay the option's.
        value = _constant(prefix + " " * offset + item, label, diags)
        if value is None:
            ok = False
        else:
            values.append(value)
    if not ok:
        return None
    if len(ranges) == 1 and not values:
        return Axis(name, None, ranges[0])
    total = len(values) + sum(r.count() for r in ranges if r.step is not None)
    if any(r.step is None for r in ranges):
        diags.error(
            Span(label, 1, 1, 1, len(prefix) + len(text) + 1),
            codes.SYNTAX,
            "a range without a STEP can only be sampled on its own: give it a STEP to list it "
            "with other values",
        )
        return None
    if total > MAX_GRID:
        diags.error(
            Span(label, 1, 1, 1, len(prefix) + len(text) + 1),
            codes.LIMIT,
            f"{total} values for one param",
        )
        return None
    for r in ranges:
        values.extend(r.values())
    return Axis(name, tuple(values))


def _range(match: re.Match, span: Span, diags: Diagnostics) -> Range | None:
    lo_t, hi_t, step_t, dist = (match.group(k) for k in ("lo", "hi", "step", "dist"))
    lo, hi = Decimal(lo_t), Decimal(hi_t)
    step = Decimal(step_t) if step_t is not None else None
    written = [t for t in (lo_t, hi_t, step_t) if t is not None]
    integer = all(re.fullmatch(r"[+-]?\d+", t) for t in written)
    problem = None
    if dist not in (None, "log", "uniform"):
        problem = f"`~{dist}` is not a distribution: write ~log (log-uniform) or leave it out"
    elif hi < lo:
        problem = f"the range {lo_t}..{hi_t} is empty: LO must not be above HI"
    elif step is not None and step <= 0:
        problem = f"the step {step_t} must be above 0"
    elif dist == "log" and lo <= 0:
        problem = f"a log-uniform range needs LO above 0, not {lo_t}"
    if problem:
        diags.error(span, codes.BAD_ARGUMENT, problem)
        return None
    if step is None and integer:
        step = Decimal(1)
    return Range(lo, hi, step, dist == "log", integer)


def _constant(text: str, label: str, diags: Diagnostics) -> Value | None:
    """A constant expression, parsed as `let NAME = ...` (the parser's own errors, located)."""
    from resgen.parser import parse_text

    try:
        parsed = parse_text(text + "\n", label)
    except SpecError as err:
        diags.extend(err.diagnostics)
        return None
    if len(parsed.lets) != 1 or parsed.imports or parsed.blocks or parsed.networks:
        diags.error(Span(label, 1, 1, 1, len(text) + 1), codes.SYNTAX, "a value is one expression")
        return None
    expr = parsed.lets[0].value
    calls = [e for e in E.walk(expr) if isinstance(e, S.Func) and e.name not in E.FUNCTIONS]
    if calls:
        diags.error(
            calls[0].span,
            codes.UNKNOWN_FUNCTION,
            f"unknown function `{calls[0].name}`" + did_you_mean(calls[0].name, E.FUNCTIONS),
        )
        return None
    refs = E.free_refs(expr)
    if refs:
        diags.error(
            refs[0].span,
            codes.UNKNOWN_NAME,
            f"a --param value is a constant expression; `{refs[0].name}` is not known here",
        )
        return None
    try:
        return E.evaluate(expr, {})
    except E.EvalError as err:
        diags.items.append(Diagnostic(err.span, err.code, err.message, hint=err.hint))
        return None


def grid_size(axes: Sequence[Axis]) -> int:
    return math.prod(axis.size() for axis in axes)


def grid(axes: Sequence[Axis]) -> Iterator[dict[str, Value]]:
    """Every combination, the first axis varying slowest (like nested loops as written)."""
    names = [a.name for a in axes]
    for combo in itertools.product(*(a.grid() for a in axes)):
        yield dict(zip(names, combo, strict=True))


def sample(axes: Sequence[Axis], n: int, seed: int) -> list[dict[str, Value]]:
    """`n` variants drawn as the module docstring says: one u per param per variant."""
    rng = random.Random(seed)
    return [{a.name: a.draw(rng.random()) for a in axes} for _ in range(n)]


def describe(values: Mapping[str, Value]) -> str:
    return ", ".join(f"{k}={E.show(v)}" for k, v in values.items())
