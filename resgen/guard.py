"""The last gate before generated code is written: an allow-list over its syntax tree.

Names are validated and literals pass through repr() long before this point; the guard is the
second line of defence, also against a user's own `--templates`. It accepts only what resgen's
modules are made of: imports of torch and typing, nn.Module classes, functions, assignments,
`if`/`for`, calls of known callables, and attribute chains into torch.nn that name a layer class
or init function. Anything else (another import, `while`, a lambda, eval or open, a dunder, a
chain like `torch.hub.load`) is refused with its line number.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from resgen import designspace, ops
from resgen.render import CodeError


class UnsafeCode(CodeError):
    """The rendered source is outside the constructs resgen emits."""


ALLOWED_IMPORTS = {
    "__future__": {"annotations"},
    "collections": {"OrderedDict"},
    "collections.abc": {"Callable"},
    "torch": {"Tensor", "nn"},
    "typing": {"Any", "Optional"},
}
# Paths into torch that resgen's own code uses, whatever the ops: the module classes it builds
# on and the init function of zero_init_residual. Each op adds what its declaration emits.
STRUCTURAL_PATHS = frozenset({"nn.Module", "nn.Sequential", "nn.init.constant_", "torch.Tensor"})


def allowed() -> tuple[frozenset[str], dict[str, set[str]]]:
    """The torch paths and the imports generated code may use: resgen's own, plus exactly what
    the registered ops (plugins' too) declare in their `emit`."""
    paths = set(STRUCTURAL_PATHS)
    imports = {module: set(names) for module, names in ALLOWED_IMPORTS.items()}
    for lines in designspace.IMPORTS.values():  # what its functions' source needs
        for line in lines:
            module, _, names = line.removeprefix("from ").partition(" import ")
            imports.setdefault(module.strip(), set()).update(n.strip() for n in names.split(","))
    for op in ops.registered():
        emit = op.emit
        if emit is None:
            continue
        if emit.cls.startswith("nn."):
            paths.add(emit.cls)
        paths.update(emit.uses)
        for line in emit.imports:
            if line.startswith("import "):  # `import torch`: a module, used by its paths
                imports.setdefault(MODULES, set()).add(line.removeprefix("import ").strip())
                continue
            module, _, names = line.removeprefix("from ").partition(" import ")
            imports.setdefault(module.strip(), set()).update(n.strip() for n in names.split(","))
    return frozenset(paths), imports


MODULES = "<modules>"  # key of allowed() for `import MODULE` statements


BUILTIN_CALLS = frozenset(
    {"super", "range", "isinstance", "len", "int", "bool", "float", "round", "min", "max"}
    | {"ValueError"}  # raised by resgen.designspace's functions for values outside their space
    | {"OrderedDict"}  # imported from collections, for nn.Sequential with named layers
)

_NODES = (
    ast.Module,
    ast.Expr,
    ast.ImportFrom,
    ast.Import,
    ast.alias,
    ast.ClassDef,
    ast.FunctionDef,
    ast.arguments,
    ast.arg,
    ast.Return,
    ast.Raise,
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.If,
    ast.For,
    ast.ListComp,
    ast.comprehension,
    ast.Starred,
    ast.Call,
    ast.keyword,
    ast.Attribute,
    ast.Name,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.Subscript,
    ast.BinOp,
    ast.BoolOp,
    ast.Compare,
    ast.UnaryOp,
    ast.IfExp,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.expr_context,
    ast.operator,
    ast.boolop,
    ast.cmpop,
    ast.unaryop,
)


def check_source(text: str) -> None:
    """Raise UnsafeCode unless every construct of `text` is one resgen emits."""
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise UnsafeCode(f"the generated code does not parse: {err}") from None
    problems = list(_problems(tree))
    if problems:
        raise UnsafeCode("the generated code is outside what resgen emits: " + "; ".join(problems))


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _root(node: ast.AST) -> ast.AST:
    """The start of an attribute chain: `self` in self.conv1.weight, `super()` in
    super().__init__."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def _call_problem(call: ast.Call, defined: set[str]) -> str | None:
    """Only calls of known things: allowed built-ins and the module's own classes and
    functions by name, methods through `self`, and torch.nn paths (checked as attributes)."""
    func = call.func
    if isinstance(func, ast.Name):
        return None if func.id in BUILTIN_CALLS or func.id in defined else f"{func.id}()"
    root = _root(func)
    if isinstance(func, ast.Attribute) and (
        (isinstance(root, ast.Name) and root.id in ("self", "nn", "torch"))
        or (isinstance(root, ast.Call) and _dotted(root.func) == "super")
    ):
        return None
    return "a computed callable"


def _problems(tree: ast.Module) -> Iterable[str]:
    paths, imports = allowed()
    prefixes = frozenset(p.rsplit(".", i)[0] for p in paths for i in range(p.count(".")))
    # Top-level definitions only: a method named `exec` must not make `exec(...)` callable.
    # Plugin classes a registered op declares it imports are callable too.
    defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    # Parameters that hold a module constructor (`norm_layer: Callable[..., nn.Module]`, as
    # torchvision's) are called to build layers.
    defined |= {
        arg.arg
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef)
        for arg in fn.args.args + fn.args.kwonlyargs
        if arg.annotation is not None and ast.unparse(arg.annotation) == "Callable[..., nn.Module]"
    }
    defined |= {
        name
        for module, names in imports.items()
        if module not in ALLOWED_IMPORTS and module != MODULES
        for name in names
    }
    for node in ast.walk(tree):
        line = f"line {getattr(node, 'lineno', '?')}"
        if not isinstance(node, _NODES):
            yield f"{line}: {type(node).__name__}"
        elif isinstance(node, ast.ImportFrom):
            names = imports.get(node.module or "", set())
            for alias in node.names:
                if node.level or alias.name not in names or alias.asname:
                    yield f"{line}: import of {node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in imports.get(MODULES, set()) or alias.asname:
                    yield f"{line}: import of {alias.name}"
        elif isinstance(node, ast.ClassDef | ast.FunctionDef) and node.decorator_list:
            yield f"{line}: decorator"
        elif isinstance(node, ast.ClassDef) and (
            node.keywords or [_dotted(b) for b in node.bases] != ["nn.Module"]
        ):
            yield f"{line}: class {node.name} is not a plain nn.Module"
        elif isinstance(node, ast.Name) and node.id.startswith("__"):
            yield f"{line}: name {node.id}"
        elif isinstance(node, ast.Attribute):
            yield from _attribute_problems(node, line, paths, prefixes)
        elif isinstance(node, ast.Call) and (problem := _call_problem(node, defined)):
            yield f"{line}: call to {problem}"
        elif (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Store)
            and node.id in ("nn", "torch", "Tensor", "self")
        ):
            yield f"{line}: assignment to {node.id}"


def _attribute_problems(node: ast.Attribute, line: str, paths, prefixes) -> Iterable[str]:
    if node.attr.startswith("_") and not (
        node.attr == "__init__"
        and isinstance(node.value, ast.Call)
        and _dotted(node.value.func) == "super"
    ):
        yield f"{line}: attribute {node.attr}"
        return
    path = _dotted(node)
    if path and path.split(".")[0] in ("nn", "torch"):
        if path not in paths and path not in prefixes:
            yield f"{line}: {path} is not a layer class or init function resgen uses"
