"""Channel arithmetic that works on numbers and on .arch expressions alike.

The shape engine counts channels with ints; the code generator counts the same channels as
expressions of a block's names (`width * scale`), so that `nn.Conv2d(width * scale, ...)` is
written as a person would write it. Ops that join or split tensors (concat, split) compute their
channels with `plus`, `times` and `divide` here, which fold numbers and build expressions
otherwise.

Built up mechanically, such expressions get clumsy: Res2Net's concat of `scale - 1` chunks of
`width * scale // scale` channels and one more chunk is `width * scale` channels. `simplify`
finds that by reading both as polynomials over the names (exact integer division of a
polynomial by a monomial included), and writes the result back in the form the spec itself used
for the same value when there is one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from fractions import Fraction

from resgen import spec as S

Number = int


def plus(a, b):
    """a + b for ints, or the expression `a + b`; None when either is unknown (None)."""
    if a is None or b is None:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if _is(b, 0):
        return a
    if _is(a, 0):
        return b
    return _binop("+", a, b)


def times(a, b):
    """a * b for ints, or the expression `a * b`; None when either is unknown (None)."""
    if a is None or b is None:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if _is(a, 1):
        return b
    if _is(b, 1):
        return a
    return _binop("*", a, b)


def divide(a, b):
    """a // b for ints, or the expression `a // b`; None when either is unknown (None)."""
    if a is None or b is None:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    if _is(b, 1):
        return a
    return _binop("//", a, b)


def _is(value, number: int) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value == number
    return isinstance(value, S.Int) and value.value == number


def _expr(value, near: S.Expr) -> S.Expr:
    return value if isinstance(value, S.Node) else S.Int(span=near.span, value=value)


def _binop(op: str, a, b) -> S.BinOp:
    anchor = a if isinstance(a, S.Node) else b
    return S.BinOp(span=anchor.span, op=op, left=_expr(a, anchor), right=_expr(b, anchor))


# ---------------------------------------------------------------------------------------------
# Polynomials: sums of monomials over the names (and over subexpressions that are not
# polynomial, such as `min(a, b)`, taken as opaque atoms), with rational coefficients.

Monomial = tuple[tuple[str, int], ...]  # sorted (atom, power) pairs; () is the constant term
Polynomial = dict[Monomial, Fraction]


def polynomial(expr: S.Expr, atoms: dict[str, S.Expr] | None = None) -> Polynomial | None:
    """`expr` as a polynomial, or None when it is not one (a float, a comparison, a division
    that does not come out exact). `atoms` collects the expression behind each atom."""
    atoms = {} if atoms is None else atoms
    if isinstance(expr, S.Int) and not isinstance(expr.value, bool):
        return _const(expr.value)
    if isinstance(expr, S.Ref):
        atoms.setdefault(expr.name, expr)
        return {((expr.name, 1),): Fraction(1)}
    if isinstance(expr, S.UnaryOp) and expr.op == "-":
        inner = polynomial(expr.operand, atoms)
        return None if inner is None else {m: -c for m, c in inner.items()}
    if isinstance(expr, S.BinOp) and expr.op in ("+", "-", "*", "//"):
        left, right = polynomial(expr.left, atoms), polynomial(expr.right, atoms)
        if left is None or right is None:
            return None
        if expr.op == "+":
            return _add(left, right)
        if expr.op == "-":
            return _add(left, {m: -c for m, c in right.items()})
        if expr.op == "*":
            return _mul(left, right)
        return _exact_quotient(left, right)
    if isinstance(expr, S.Func):
        key = repr(_structure(expr))
        atoms.setdefault(key, expr)
        return {((key, 1),): Fraction(1)}
    return None


def _structure(node):
    """A node without its spans (equal for the same expression written twice)."""
    if isinstance(node, S.Node):
        return (type(node).__name__,) + tuple(
            _structure(getattr(node, f.name)) for f in dataclasses.fields(node) if f.name != "span"
        )
    if isinstance(node, tuple):
        return tuple(_structure(item) for item in node)
    return node


def _const(value: int) -> Polynomial:
    return {(): Fraction(value)} if value else {}


def _add(a: Polynomial, b: Polynomial) -> Polynomial:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, Fraction(0)) + c
        if not out[m]:
            del out[m]
    return out


def _mul(a: Polynomial, b: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            powers = dict(ma)
            for atom, p in mb:
                powers[atom] = powers.get(atom, 0) + p
            m = tuple(sorted(powers.items()))
            out[m] = out.get(m, Fraction(0)) + ca * cb
            if not out[m]:
                del out[m]
    return out


def _exact_quotient(a: Polynomial, b: Polynomial) -> Polynomial | None:
    """a // b when b is one term that divides every term of a into integer coefficients (so
    the floor is exact for the positive counts channels are); None otherwise."""
    if len(b) != 1:
        return None
    ((mb, cb),) = b.items()
    out: Polynomial = {}
    for ma, ca in a.items():
        powers = dict(ma)
        for atom, p in mb:
            if powers.get(atom, 0) < p:
                return None
            powers[atom] -= p
        coefficient = ca / cb
        if coefficient.denominator != 1:
            return None
        out[tuple(sorted((k, v) for k, v in powers.items() if v))] = coefficient
    return out


def _key(poly: Polynomial) -> tuple:
    return tuple(sorted(poly.items()))


def simplify(value, known: Iterable[S.Expr] = ()):
    """`value` written as simply as possible: an int stays; an expression that is a polynomial
    becomes the first of `known` (expressions the spec wrote) equal to it, else its normal form
    (terms in the order of their atoms' first appearance); anything else is left as it is."""
    if not isinstance(value, S.Node):
        return value
    atoms: dict[str, S.Expr] = {}
    poly = polynomial(value, atoms)
    if poly is None:
        return value
    key = _key(poly)
    for candidate in known:
        found = polynomial(candidate, {})
        if found is not None and _key(found) == key:
            return candidate
    if not poly:
        return S.Int(span=value.span, value=0)
    if any(c.denominator != 1 for c in poly.values()):
        return value
    order = list(atoms)
    terms = sorted(poly.items(), key=lambda mc: [order.index(a) for a, _ in mc[0]] or [-1])
    result = None
    for monomial, coefficient in terms:
        term = None
        for atom, power in monomial:
            for _ in range(power):
                term = atoms[atom] if term is None else times(term, atoms[atom])
        magnitude = abs(int(coefficient))
        if term is None:
            term = S.Int(span=value.span, value=magnitude)
        elif magnitude != 1:
            term = times(term, magnitude)
        if result is None:
            result = term if coefficient > 0 else S.UnaryOp(span=value.span, op="-", operand=term)
        else:
            result = _binop("+" if coefficient > 0 else "-", result, term)
    return result
