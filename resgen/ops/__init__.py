"""The op registry: every layer op and merge resgen knows, by its .arch name.

resgen's own ops are registered on import (one module of resgen.ops per kind; `BUILTIN` lists
the layer ops). A Python package adds its own through the entry-point group `resgen.ops`: each
entry point names an `Op` subclass, an instance, or a sequence of them, and resgen passes each to
`register` - the same public function a program (or a test) may call itself. Entry points are
read only when a spec names an op that is not registered, so start-up does not pay for them.

    # pyproject.toml of a plugin
    [project.entry-points."resgen.ops"]
    scaled_tanh = "resgen_example:ScaledTanh"
"""

from __future__ import annotations

import ast
import keyword
from collections.abc import Iterable

from resgen.diagnostics import UsageError
from resgen.ops import (
    activations,
    attention,
    convs,
    layers,
    merges,
    norms,
    pools,
    scales,
    selfattention,
    tensors,
)
from resgen.ops.base import (
    DERIVED,
    FROM_INPUT,
    REQUIRED,
    Counts,
    Emit,
    Fixed,
    Merge,
    Op,
    Param,
    SameAs,
    Window,
    product,
    quotient,
)

ENTRY_POINT_GROUP = "resgen.ops"
_ARG_TYPES = ("int", "size", "bool", "float")


class OpError(UsageError):
    """An op declaration that cannot be registered (incomplete, or a name taken twice). Its
    message names the plugin that declared it."""


_OPS: dict[str, Op] = {}
_MERGES: dict[str, Merge] = {}
_plugins_loaded = False


def register(op: Op | type[Op], *, plugin: str | None = None) -> Op:
    """Add an op (or a merge) to the registry, after checking its declaration is complete.

    `plugin` names who declares it (a distribution name), for error messages and for the AST
    guard, which allows exactly the imports registered ops declare. Returns the registered
    instance. Raises OpError for an incomplete declaration or a name registered already.
    """
    who = f"plugin `{plugin}`" if plugin else "resgen"
    if isinstance(op, type) and issubclass(op, Op):
        op = op()
    if not isinstance(op, Op):
        raise OpError(f"{who}: {op!r} is not a resgen.ops.Op subclass or instance")
    problem = _declaration_problem(op)
    if problem:
        raise OpError(f"{who}: op `{getattr(op, 'name', '?')}` {problem}")
    table = _MERGES if isinstance(op, Merge) else _OPS
    existing = table.get(op.name)
    if existing is not None:
        first = f"plugin `{existing.plugin}`" if existing.plugin else "resgen itself"
        raise OpError(f"{who}: op `{op.name}` is already registered by {first}")
    op.plugin = plugin
    table[op.name] = op
    return op


def unregister(name: str) -> None:
    """Remove the op or merge called `name` (for tests and interactive sessions that register
    their own for a while)."""
    _OPS.pop(name, None)
    _MERGES.pop(name, None)


def lookup(name: str, load_plugins: bool = True) -> Op | None:
    """The layer op called `name`; reads plugins' entry points the first time one is missing
    (unless `load_plugins` is False)."""
    found = _OPS.get(name)
    if found is None and load_plugins and not _plugins_loaded:
        _load_plugins()
        found = _OPS.get(name)
    return found


def merge(name: str) -> Merge | None:
    """The merge called `name` (`add`, `mul`, or a plugin's)."""
    found = _MERGES.get(name)
    if found is None and not _plugins_loaded:
        _load_plugins()
        found = _MERGES.get(name)
    return found


def registered() -> tuple[Op, ...]:
    """Every registered layer op and merge, resgen's first, in registration order."""
    return (*_OPS.values(), *_MERGES.values())


def names() -> tuple[str, ...]:
    """Names of the registered layer ops (for "did you mean")."""
    return tuple(_OPS)


def _load_plugins() -> None:
    """Register the ops of every installed `resgen.ops` entry point (once per process)."""
    global _plugins_loaded
    _plugins_loaded = True
    from importlib import metadata  # only when a spec names an op nobody registered

    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        plugin = entry.dist.name if entry.dist is not None else entry.value
        try:
            declared = entry.load()
        except Exception as err:  # a broken plugin must not stop the spec being read
            raise OpError(
                f"plugin `{plugin}`: entry point `{entry.name} = {entry.value}` cannot be "
                f"loaded: {type(err).__name__}: {err}"
            ) from None
        many = isinstance(declared, Iterable) and not isinstance(declared, str | Op)
        for op in declared if many else (declared,):
            register(op, plugin=plugin)


def _declaration_problem(op: Op) -> str | None:
    name = getattr(op, "name", "")
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        return f"has no valid `name` ({name!r})"
    if name.startswith("_"):
        return "has a name starting with an underscore"
    if not isinstance(op.doc, str) or not op.doc:
        return "has no `doc` (one line saying what it does)"
    seen = set()
    for param in op.params:
        if not isinstance(param, Param):
            return f"lists {param!r} in `params`, which is not a resgen.ops.Param"
        if param.name in seen:
            return f"declares parameter `{param.name}` twice"
        seen.add(param.name)
        if param.type not in _ARG_TYPES:
            return f"gives parameter `{param.name}` the unknown type {param.type!r}"
        if isinstance(param.default, SameAs) and param.default.name not in seen:
            return f"defaults `{param.name}` to `{param.default.name}`, not an earlier parameter"
        if param.fixed_default and param.problem(param.default):
            return f"has a default for `{param.name}` that {param.problem(param.default)}"
    if isinstance(op, Merge):
        if not op.statement or not op.glyph:
            return "is a merge without a `statement` (its line in forward()) or a `glyph`"
        return None
    emit = op.emit
    if not isinstance(emit, Emit):
        return "has no `emit` (the nn.Module it becomes in generated code)"
    if op.arity not in ("one", "many"):
        return f'has the arity {op.arity!r}; it reads one input or "many"'
    if op.functional:
        if type(op).expression is Op.expression:
            return "is functional (no module) but has no `expression` for forward()"
    elif not all(part.isidentifier() for part in emit.cls.split(".")):
        return f"emits the class {emit.cls!r}, which is not a dotted Python name"
    for key in emit.positional:
        if key not in seen and key != emit.in_channels:
            return f"passes `{key}` by position, but has no such parameter"
    if emit.in_channels_if is not None:
        gate = op.param(emit.in_channels_if)
        if gate is None or gate.type != "bool" or not gate.fixed_default:
            return (
                f"passes the channel count when `{emit.in_channels_if}` holds, which is not a "
                "bool parameter with a default"
            )
    for key, _value in emit.keywords:
        if not key.isidentifier() or keyword.iskeyword(key):
            return f"passes the constant keyword {key!r}, which is not a Python name"
    imported = set()
    for line in emit.imports:
        statement = _import_statement(line)
        if statement is None:
            return (
                f"declares the import {line!r}, which is not one `from MODULE import NAME` "
                "or `import MODULE`"
            )
        imported.update(alias.asname or alias.name for alias in statement.names)
    if op.functional:
        return None
    if not emit.cls.startswith("nn.") and emit.helper is None and emit.cls not in imported:
        return f"emits `{emit.cls}` but neither imports it nor has a helper template defining it"
    return None


def _import_statement(line: str) -> ast.ImportFrom | ast.Import | None:
    """`from MODULE import NAME, ...`, or `import MODULE` of one top-level module, unaliased."""
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    statement = tree.body[0]
    if isinstance(statement, ast.Import):
        (alias, *more) = statement.names
        plain = not more and alias.asname is None and "." not in alias.name
        return statement if plain else None
    if not isinstance(statement, ast.ImportFrom):
        return None
    return None if statement.level or not statement.module else statement


# resgen's own layer ops, by kind (each module keeps its kind's ops; merges are apart).
BUILTIN: tuple[Op, ...] = (
    *layers.BUILTIN,
    *activations.BUILTIN,
    *norms.BUILTIN,
    *pools.BUILTIN,
    *convs.BUILTIN,
    *attention.BUILTIN,
    *selfattention.BUILTIN,
    *scales.BUILTIN,
    *tensors.BUILTIN,
)

for _op in (*BUILTIN, *merges.BUILTIN):
    register(_op)

__all__ = [
    "BUILTIN",
    "DERIVED",
    "ENTRY_POINT_GROUP",
    "FROM_INPUT",
    "REQUIRED",
    "Counts",
    "Emit",
    "Fixed",
    "Merge",
    "Op",
    "OpError",
    "Param",
    "SameAs",
    "Window",
    "lookup",
    "merge",
    "names",
    "product",
    "quotient",
    "register",
    "registered",
    "unregister",
]
