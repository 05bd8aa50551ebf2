"""Integer expressions: evaluation with located errors, free names, substitution, Python text.

Values are int, float, bool or an (h, w) pair of ints. `/` is exact division: a remainder is an
error, because a silently floored channel count is a wrong network. `//` rounds down on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from resgen import codes, ops
from resgen import spec as S
from resgen.diagnostics import Span
from resgen.limits import LIMITS
from resgen.ops import Op


@dataclass(frozen=True)
class OpValue:
    """An op as a value (`groupnorm(32)`): the op and the arguments bound to it, by name. What
    a `norm_layer` or `act_layer` parameter holds; a layer made from it adds its own arguments."""

    op: Op
    args: tuple[tuple[str, object], ...] = ()

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={show(v)}" for k, v in self.args)
        return f"{self.op.name}({inner})" if self.args else self.op.name


Value = int | float | bool | tuple | OpValue


class EvalError(Exception):
    def __init__(
        self, span: Span, message: str, code: str = codes.EXPRESSION, hint: str | None = None
    ):
        super().__init__(message)
        self.span, self.message, self.code, self.hint = span, message, code, hint


def type_name(value: Value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, OpValue):
        return "an op"
    return "a pair"


def show(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return f"({value[0]}, {value[1]})"
    if isinstance(value, OpValue):
        return str(value)
    return repr(value)


def source_text(expr: S.Expr) -> str:
    """The expression as .arch text, for messages."""
    if isinstance(expr, S.Int | S.Float):
        return repr(expr.value)
    if isinstance(expr, S.Bool):
        return "true" if expr.value else "false"
    if isinstance(expr, S.Ref):
        return expr.name
    if isinstance(expr, S.Pair):
        return f"({source_text(expr.h)}, {source_text(expr.w)})"
    if isinstance(expr, S.UnaryOp):
        sep = " " if expr.op == "not" else ""
        return f"{expr.op}{sep}{_wrap(expr.operand)}"
    if isinstance(expr, S.Cond):
        return f"{_wrap(expr.then)} if {_wrap(expr.test)} else {source_text(expr.other)}"
    if isinstance(expr, S.Func):
        return f"{expr.name}({', '.join(source_text(a) for a in expr.args)})"
    if isinstance(expr, S.OpRef):
        inner = ", ".join(f"{a.name}={source_text(a.value)}" for a in expr.args)
        return f"{expr.name}({inner})" if expr.args else expr.name
    return f"{_wrap(expr.left)} {expr.op} {_wrap(expr.right)}"


def _wrap(expr: S.Expr) -> str:
    text = source_text(expr)
    return f"({text})" if isinstance(expr, S.BinOp | S.Cond) else text


def walk(expr: S.Expr) -> Iterator[S.Expr]:
    yield expr
    if isinstance(expr, S.Pair):
        yield from walk(expr.h)
        yield from walk(expr.w)
    elif isinstance(expr, S.BinOp):
        yield from walk(expr.left)
        yield from walk(expr.right)
    elif isinstance(expr, S.UnaryOp):
        yield from walk(expr.operand)
    elif isinstance(expr, S.Cond):
        yield from walk(expr.then)
        yield from walk(expr.test)
        yield from walk(expr.other)
    elif isinstance(expr, S.Func):
        for arg in expr.args:
            yield from walk(arg)
        for keyword in expr.keywords:
            yield from walk(keyword.value)
    elif isinstance(expr, S.OpRef):
        for arg in expr.args:
            yield from walk(arg.value)


def free_refs(expr: S.Expr) -> list[S.Ref]:
    return [e for e in walk(expr) if isinstance(e, S.Ref)]


def _is_int(v: Value) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Value) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


def evaluate(expr: S.Expr, env: Mapping[str, Value]) -> Value:
    """Evaluate with names from `env`. Raises EvalError at the offending sub-expression."""
    if isinstance(expr, S.Int | S.Float | S.Bool):
        return expr.value
    if isinstance(expr, S.Ref):
        if expr.name not in env:
            raise EvalError(expr.span, f"unknown name `{expr.name}`", codes.UNKNOWN_NAME)
        return env[expr.name]
    if isinstance(expr, S.Pair):
        h, w = evaluate(expr.h, env), evaluate(expr.w, env)
        for part, v in ((expr.h, h), (expr.w, w)):
            if not _is_int(v):
                raise EvalError(part.span, f"a pair holds integers, not {type_name(v)}", codes.TYPE)
        return (h, w)
    if isinstance(expr, S.UnaryOp):
        v = evaluate(expr.operand, env)
        if expr.op == "not":
            if not isinstance(v, bool):
                raise EvalError(expr.span, f"`not` needs a boolean, got {type_name(v)}", codes.TYPE)
            return not v
        if not _is_number(v):
            raise EvalError(expr.span, f"`-` needs a number, got {type_name(v)}", codes.TYPE)
        return -v
    if isinstance(expr, S.Cond):
        test = evaluate(expr.test, env)
        if not isinstance(test, bool):
            raise EvalError(
                expr.test.span, f"`if` needs a boolean, got {type_name(test)}", codes.TYPE
            )
        return evaluate(expr.then if test else expr.other, env)  # only the chosen side
    if isinstance(expr, S.Func):
        return _call(expr, [evaluate(a, env) for a in expr.args])
    if isinstance(expr, S.OpRef):
        return op_value(expr, env)
    return _binop(expr, env)


def op_value(expr: S.OpRef, env: Mapping[str, Value]) -> OpValue:
    """The op an OpRef names, with its arguments evaluated and checked like a layer's."""
    op = ops.lookup(expr.name)
    if op is None:  # resolve only makes OpRefs of registered ops; a safety net
        raise EvalError(expr.span, f"unknown op `{expr.name}`", codes.UNKNOWN_OP)
    args = []
    for arg in expr.args:
        value = evaluate(arg.value, env)
        param = op.param(arg.name)
        problem = param.problem(value) if param is not None else "is not a parameter"
        if problem:
            raise EvalError(
                arg.span,
                f"`{arg.name}` of {op.name} {problem}, not {show(value)}",
                codes.BAD_ARGUMENT,
            )
        args.append((arg.name, value))
    return OpValue(op, tuple(args))


# Functions an expression may call: the Python built-ins of the same name, so generated code
# computes exactly what resgen checked, and the design-space functions of resgen.designspace,
# which generated code defines from the same source. name -> (arity: exact count, or None for
# two or more)
FUNCTIONS = {
    "int": 1,
    "round": 1,
    "min": None,
    "max": None,
    "quantize": 2,
    "regnet_width": 6,
    "regnet_depth": 6,
    "nf_beta": 3,
    "make_divisible": 2,
}
# Functions whose result is a number with a fraction.
FLOAT_FUNCTIONS = frozenset({"nf_beta"})
# The design-space functions: the code of a ValueError they raise (a located error).
DEFINED = {
    "quantize": codes.EXPRESSION,
    "regnet_width": codes.DESIGN_SPACE,
    "regnet_depth": codes.DESIGN_SPACE,
    "nf_beta": codes.EXPRESSION,
    "make_divisible": codes.EXPRESSION,
}


def _call(expr: S.Func, values: list[Value]) -> Value:
    arity = FUNCTIONS.get(expr.name)
    if expr.name not in FUNCTIONS:  # resolve reports unknown functions; this is a safety net
        raise EvalError(expr.span, f"unknown function `{expr.name}`", codes.UNKNOWN_NAME)
    if (len(values) != arity) if arity else len(values) < 2:
        wanted = f"{arity} argument" if arity else "two or more arguments"
        raise EvalError(expr.span, f"`{expr.name}` takes {wanted}", codes.TYPE)
    for arg, v in zip(expr.args, values, strict=True):
        if not _is_number(v):
            raise EvalError(
                arg.span, f"`{expr.name}` needs numbers, got {type_name(v)}", codes.TYPE
            )
    if expr.name in DEFINED:
        from resgen import designspace

        try:
            result = getattr(designspace, expr.name)(*values)
        except (ValueError, OverflowError) as err:
            raise EvalError(expr.span, f"`{expr.name}`: {err}", DEFINED[expr.name]) from None
        if abs(result) > LIMITS.max_int:
            raise EvalError(
                expr.span, f"`{source_text(expr)}` is beyond the integer limit", codes.LIMIT
            )
        return result
    if expr.name in ("int", "round"):
        (v,) = values
        if not math.isfinite(v):
            raise EvalError(expr.span, f"`{expr.name}` of {show(v)}", codes.LIMIT)
        result = int(v) if expr.name == "int" else round(v)
        if abs(result) > LIMITS.max_int:
            raise EvalError(
                expr.span,
                f"`{source_text(expr)}` is beyond the integer limit {LIMITS.max_int}",
                codes.LIMIT,
            )
        return result
    return min(values) if expr.name == "min" else max(values)


def _binop(expr: S.BinOp, env: Mapping[str, Value]) -> Value:
    op = expr.op
    left = evaluate(expr.left, env)
    if op in ("and", "or"):  # short-circuit like Python
        if not isinstance(left, bool):
            raise EvalError(
                expr.left.span, f"`{op}` needs booleans, got {type_name(left)}", codes.TYPE
            )
        if (op == "and" and not left) or (op == "or" and left):
            return left
        right = evaluate(expr.right, env)
        if not isinstance(right, bool):
            raise EvalError(
                expr.right.span, f"`{op}` needs booleans, got {type_name(right)}", codes.TYPE
            )
        return right
    right = evaluate(expr.right, env)
    if op in ("==", "!="):
        left, right = _as_pairs(left, right)
        if type_name(left) != type_name(right) and not (_is_number(left) and _is_number(right)):
            raise EvalError(
                expr.span, f"cannot compare {type_name(left)} with {type_name(right)}", codes.TYPE
            )
        return (left == right) if op == "==" else (left != right)
    for side, v in ((expr.left, left), (expr.right, right)):
        if not _is_number(v):
            raise EvalError(
                side.span,
                f"`{op}` needs numbers, got {type_name(v)} (`{source_text(side)}` = {show(v)})",
                codes.TYPE,
            )
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    if op in ("/", "//") and right == 0:
        raise EvalError(
            expr.right.span,
            f"division by zero: `{source_text(expr.right)}` is 0",
            codes.DIVISION_BY_ZERO,
        )
    try:
        result = _arithmetic(expr, left, right)
    except OverflowError:  # an int too large to mix with a float
        raise EvalError(
            expr.span, f"`{source_text(expr)}` is too large to compute", codes.LIMIT
        ) from None
    if isinstance(result, float) and not math.isfinite(result):
        # 1e308 * 10.0 is inf: torch would get eps=inf, and generated code says `inf`, which is
        # no Python name. Refused where it is computed, like an integer over the limit.
        raise EvalError(
            expr.span,
            f"`{source_text(expr)}` is {show(left)} {op} {show(right)} = {result}, not a finite "
            "number",
            codes.LIMIT,
        )
    if _is_int(result) and abs(result) > LIMITS.max_int:
        raise EvalError(
            expr.span,
            f"`{source_text(expr)}` = {result} is beyond the integer limit {LIMITS.max_int}",
            codes.LIMIT,
        )
    return result


def _as_pairs(left: Value, right: Value) -> tuple[Value, Value]:
    """An integer compared with a pair stands for (n, n), as torch reads `stride=2` of a conv:
    `stride != 1` holds for (2, 1) and not for (1, 1)."""
    if isinstance(left, tuple) and _is_int(right):
        return left, (right, right)
    if isinstance(right, tuple) and _is_int(left):
        return (left, left), right
    return left, right


def _arithmetic(expr: S.BinOp, left, right) -> Value:
    op = expr.op
    if op == "+":
        result = left + right
    elif op == "-":
        result = left - right
    elif op == "*":
        result = left * right
    elif op == "//":
        result = left // right
    elif _is_int(left) and _is_int(right):
        if left % right:
            raise EvalError(
                expr.span,
                f"`{source_text(expr)}` is {left} / {right}, which leaves a remainder of "
                f"{left % right}; an integer is needed here",
                codes.INEXACT_DIVISION,
                hint="write `//` to round down on purpose, or pick values that divide evenly",
            )
        result = left // right
    else:  # a number with a fraction: Python's `/` (generated code writes `/`, see is_float)
        result = left / right
    return result


def is_float(expr: S.Expr, floats: Callable[[str], bool] = lambda _: False) -> bool:
    """Whether `expr` computes a number with a fraction, from its literals and the names that
    hold one (`floats`): generated code then writes its `/` as Python's `/`, and `//` where both
    sides are integers (the division resgen checked to be exact)."""
    if isinstance(expr, S.Float):
        return True
    if isinstance(expr, S.Ref):
        return floats(expr.name)
    if isinstance(expr, S.UnaryOp):
        return expr.op == "-" and is_float(expr.operand, floats)
    if isinstance(expr, S.Cond):
        return is_float(expr.then, floats) or is_float(expr.other, floats)
    if isinstance(expr, S.Func):
        if expr.name in FLOAT_FUNCTIONS:
            return True
        return expr.name in ("min", "max") and any(is_float(a, floats) for a in expr.args)
    if isinstance(expr, S.BinOp) and expr.op in ("+", "-", "*", "/", "//"):
        return is_float(expr.left, floats) or is_float(expr.right, floats)
    return False


def substitute(expr: S.Expr, lookup: Callable[[str], S.Expr | None]) -> S.Expr:
    """Replace names for which `lookup` returns an expression; fold constant sub-expressions."""
    if isinstance(expr, S.Ref):
        found = lookup(expr.name)
        return found if found is not None else expr
    if isinstance(expr, S.Pair):
        return expr.model_copy(
            update={"h": substitute(expr.h, lookup), "w": substitute(expr.w, lookup)}
        )
    if isinstance(expr, S.UnaryOp):
        new = expr.model_copy(update={"operand": substitute(expr.operand, lookup)})
    elif isinstance(expr, S.BinOp):
        new = expr.model_copy(
            update={"left": substitute(expr.left, lookup), "right": substitute(expr.right, lookup)}
        )
    elif isinstance(expr, S.Cond):
        new = expr.map(lambda e: substitute(e, lookup))
    elif isinstance(expr, S.Func):
        new = expr.model_copy(update={"args": tuple(substitute(a, lookup) for a in expr.args)})
    elif isinstance(expr, S.OpRef):
        args = tuple(a.model_copy(update={"value": substitute(a.value, lookup)}) for a in expr.args)
        return expr.model_copy(update={"args": args})
    else:
        return expr
    # Children are already folded, so only literal children can fold: this keeps substitution
    # linear (a full `fold` re-walks shared sub-trees, exponential for `let b = a + a` chains).
    if isinstance(new, S.UnaryOp):
        children = (new.operand,)
    elif isinstance(new, S.Func):
        children = new.args
    elif isinstance(new, S.Cond):
        children = (new.test, new.then, new.other)
    else:
        children = (new.left, new.right)
    return fold(new) if all(_is_literal(c) for c in children) else new


def _is_literal(expr: S.Expr) -> bool:
    if isinstance(expr, S.Pair):
        return _is_literal(expr.h) and _is_literal(expr.w)
    return isinstance(expr, S.Int | S.Float | S.Bool)


def fold(expr: S.Expr) -> S.Expr:
    """Evaluate `expr` when it has no free names and the result is a plain literal."""
    if free_refs(expr):
        return expr
    try:
        value = evaluate(expr, {})
    except EvalError:
        return expr
    return literal(value, expr.span)


def literal(value: Value, span: Span) -> S.Expr:
    if isinstance(value, bool):
        return S.Bool(span=span, value=value)
    if isinstance(value, int):
        return S.Int(span=span, value=value)
    if isinstance(value, float):
        return S.Float(span=span, value=value)
    return S.Pair(span=span, h=S.Int(span=span, value=value[0]), w=S.Int(span=span, value=value[1]))


_PY_PRECEDENCE = {
    "if": 0,
    "or": 1,
    "and": 2,
    "not": 3,
    "==": 4,
    "!=": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
    "//": 6,
    "neg": 7,
}


def to_python(
    expr: S.Expr,
    name: Callable[[str], str] = str,
    op=None,
    floats=lambda _: False,
    pairs: Callable[[str], bool] | None = None,
) -> str:
    """Python source for the expression. Exact `/` of integers becomes `//` (resgen checked it
    divides); `/` with a fraction stays `/` (`floats` says which names hold fractions). `op`
    renders an op used as a value (OpRef): the code generator knows its class or factory.

    `pairs(name)` says whether a name may hold an (h, w) pair: an `==` or `!=` between such a
    name and an integer then compares as torch broadcasts the integer, `stride != 1` becoming
    `stride not in (1, (1, 1))` (Python's own `(1, 1) != 1` is True)."""
    return _py(expr, _Render(name, op, floats, pairs))[0]


class _Render:
    """What to_python renders with: names, op values, which names are fractions or pairs."""

    __slots__ = ("name", "op", "floats", "pairs")

    def __init__(self, name, op, floats, pairs):
        self.name, self.op, self.floats, self.pairs = name, op, floats, pairs


def _text(expr: S.Expr, r: _Render) -> str:
    return _py(expr, r)[0]


def _may_be_pair(expr: S.Expr, pairs: Callable[[str], bool] | None) -> bool:
    if isinstance(expr, S.Pair):
        return True
    return pairs is not None and isinstance(expr, S.Ref) and pairs(expr.name)


def _pair_comparison(expr: S.BinOp, r: _Render) -> tuple[str, int] | None:
    """`x != 1` for an x that may be a pair: `x not in (1, (1, 1))`; two sides that may each
    be an int or a pair: both spelled as pairs. None when a plain comparison is right."""
    left, right = expr.left, expr.right
    if not (_may_be_pair(left, r.pairs) or _may_be_pair(right, r.pairs)):
        return None
    if isinstance(left, S.Pair) and isinstance(right, S.Pair):
        return None
    prec = _PY_PRECEDENCE[expr.op]
    for side, other in ((left, right), (right, left)):
        k = _square(other)
        if k is not None:
            text, p = _py(side, r)
            text = f"({text})" if p <= prec else text
            return f"{text} {'not in' if expr.op == '!=' else 'in'} ({k}, ({k}, {k}))", prec
        if isinstance(other, S.Pair):
            return None  # an integer never equals a pair that is not square: plain == is right
    texts = []
    for side in (left, right):
        text = _text(side, r)
        texts.append(f"({text} if isinstance({text}, tuple) else ({text}, {text}))")
    return f"{texts[0]} {expr.op} {texts[1]}", prec


def _square(expr: S.Expr) -> int | None:
    """k for an integer literal k or a literal pair (k, k): what an int-or-pair is compared to."""
    if isinstance(expr, S.Int):
        return expr.value
    if isinstance(expr, S.Pair) and isinstance(expr.h, S.Int) and isinstance(expr.w, S.Int):
        return expr.h.value if expr.h.value == expr.w.value else None
    return None


def _py(expr: S.Expr, r: _Render) -> tuple[str, int]:
    if isinstance(expr, S.Int | S.Float | S.Bool):
        return repr(expr.value), 9
    if isinstance(expr, S.Ref):
        return r.name(expr.name), 9
    if isinstance(expr, S.OpRef):
        if r.op is None:
            raise ValueError(f"no rendering for the op value `{source_text(expr)}`")
        return r.op(expr), 9
    if isinstance(expr, S.Pair):
        return f"({_text(expr.h, r)}, {_text(expr.w, r)})", 9
    if isinstance(expr, S.UnaryOp):
        prec = _PY_PRECEDENCE["not" if expr.op == "not" else "neg"]
        text, p = _py(expr.operand, r)
        text = f"({text})" if p < prec else text
        return (f"not {text}" if expr.op == "not" else f"-{text}"), prec
    if isinstance(expr, S.Cond):
        prec = _PY_PRECEDENCE["if"]
        then, tp = _py(expr.then, r)
        test, cp = _py(expr.test, r)
        then = f"({then})" if tp <= prec else then
        test = f"({test})" if cp <= prec else test
        return f"{then} if {test} else {_text(expr.other, r)}", prec
    if isinstance(expr, S.Func):
        args = ", ".join(_text(a, r) for a in expr.args)
        return f"{expr.name}({args})", 9
    if expr.op in ("==", "!="):
        compared = _pair_comparison(expr, r)
        if compared is not None:
            return compared
    prec = _PY_PRECEDENCE[expr.op]
    left, lp = _py(expr.left, r)
    right, rp = _py(expr.right, r)
    chains = prec == _PY_PRECEDENCE["=="]  # Python reads `a < b == c` as a chain: bracket it
    left = f"({left})" if lp < prec or (chains and lp == prec) else left
    right = f"({right})" if rp <= prec else right  # left-associative operators
    exact = expr.op == "/" and not is_float(expr, r.floats)
    return f"{left} {'//' if exact else expr.op} {right}", prec
