"""The last gate before generated code is written: an allow-list over its syntax tree.

Names are validated and literals pass through repr() long before this point; the guard is the
second line of defence, also against a user's own `--templates`. It accepts only what resgen's
modules are made of: imports of torch and typing, nn.Module classes, functions, assignments,
`if`/`for`, calls of known callables, and attribute chains into torch.nn that name a layer class
or init function. Anything else (another import, `while`, a lambda, eval or open, a dunder, a
chain like `torch.hub.load`) is refused with its line number.

Names resolve the same way in every scope and at every position, because the guard allows no
binding that could make them differ:
- no name anywhere (module, class, function, parameter, loop or comprehension variable) may be
  bound that is a Python builtin: `def exec(...)` after a module-level `exec("...")` would leave
  the call running the builtin at import, and `def f(range): range(...)` would call whatever is
  passed;
- a module-level class or function, and a name an import binds, are bound once and never again
  at module level (`f = eval` would turn the allowed call `f(...)` into eval); a function's own
  local may share a class's or function's name (a helper's `n` beside a network `n`), and then
  no call in that function is by that name;
- a name that is read must be bound somewhere in the module or be one of SAFE_BUILTINS, so no
  other builtin (eval, getattr, open) is ever a value that could be passed around and called.
A call by name is then allowed only of SAFE_BUILTINS, the module's own classes and functions and
the plugin classes it imports.

Values that lead elsewhere are kept out the same way: torch's modules (`nn`, `nn.init`) are only
ever the start of an attribute chain that ends in an allowed path (`f(nn)` or `x = nn.modules`
would hand a module to code that calls its attributes), `self` is only ever the first parameter
of a method, and no attribute starting with `_` or reaching the interpreter's internals
(`gi_frame`, `f_globals`, `mro`, ...: resgen.names.INTERNAL_ATTRIBUTES) is read.

Helper modules (an op's `Emit.helper`) may also subclass a torch layer an op emits (`class
StdConv2d(nn.Conv2d)`, as timm writes it), call methods of their own tensors (`x.permute(...)`:
a function's parameters and locals), and use `import torch` or `import math` when a registered
op declares it, reaching only the paths ops declare (`torch.cat`, `math.log`).
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable

from resgen import designspace, ops
from resgen.names import INTERNAL_ATTRIBUTES
from resgen.render import CodeError


class UnsafeCode(CodeError):
    """The rendered source is outside the constructs resgen emits."""


ALLOWED_IMPORTS = {
    "__future__": {"annotations"},
    "collections": {"OrderedDict"},
    "collections.abc": {"Callable", "Sequence"},
    "torch": {"Tensor", "nn"},
    "torch.utils.checkpoint": {"checkpoint"},  # set_grad_checkpointing (checkpoint_seq.py.jinja)
    "typing": {"Any", "Optional"},
}
# Paths into torch that resgen's own code uses, whatever the ops: the module classes it builds
# on and the init function of zero_init_residual. Each op adds what its declaration emits.
STRUCTURAL_PATHS = frozenset(
    {"nn.Module", "nn.Sequential", "nn.ModuleList", "nn.init.constant_", "torch.Tensor"}
    # timm's model interface on every network (templates/network.py.jinja, feature_info.py.jinja)
    | {"nn.Identity", "nn.Linear", "nn.functional.dropout", "torch.jit.is_scripting"}
    # norm_eval's batch norms (mmdetection's _BatchNorm, without the private name)
    | {"nn.BatchNorm1d", "nn.BatchNorm2d", "nn.SyncBatchNorm"}
)
# `import torch` for torch.jit.is_scripting (set_grad_checkpointing), whatever the ops.
STRUCTURAL_MODULES = frozenset({"torch"})


# Names of modules whose attribute chains must end in an allowed path.
MODULE_ROOTS = frozenset({"nn", "torch"})


def allowed() -> tuple[frozenset[str], dict[str, set[str]], frozenset[str]]:
    """The torch paths, the `from` imports and the plainly imported modules (`import torch`)
    generated code may use: resgen's own, plus exactly what the registered ops (plugins' too)
    declare in their `emit`."""
    paths = set(STRUCTURAL_PATHS)
    imports = {module: set(names) for module, names in ALLOWED_IMPORTS.items()}
    modules: set[str] = set(STRUCTURAL_MODULES)
    lines = [line for lines in designspace.IMPORTS.values() for line in lines]  # its functions'
    for op in ops.registered():
        emit = op.emit
        if emit is None:
            continue
        if emit.cls.startswith("nn."):
            paths.add(emit.cls)
        paths.update(emit.uses)
        lines += emit.imports
    for line in lines:
        statement = ast.parse(line).body[0]  # checked when the op was registered
        if isinstance(statement, ast.Import):
            modules.update(alias.name for alias in statement.names)
        else:
            names = imports.setdefault(statement.module, set())
            names.update(alias.name for alias in statement.names)
    return frozenset(paths), imports, frozenset(modules)


BUILTIN_CALLS = frozenset(
    {"super", "range", "isinstance", "len", "int", "bool", "float", "round", "min", "max", "abs"}
    | {"zip", "enumerate"}  # loops over a block's ModuleLists (resgen.codegen._Flow)
    | {"ValueError"}  # raised by resgen.designspace's functions for values outside their space
    | {"OrderedDict"}  # imported from collections, for nn.Sequential with named layers
    | {"checkpoint"}  # imported from torch.utils.checkpoint, for set_grad_checkpointing
)
# Builtins generated code may name: the callable ones, and types in annotations.
SAFE_BUILTINS = BUILTIN_CALLS | {"str", "tuple", "list", "dict"}
BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))

_NODES = (
    ast.Module,
    ast.Expr,
    ast.Import,
    ast.ImportFrom,
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
    ast.DictComp,
    ast.comprehension,
    ast.Starred,
    ast.Call,
    ast.keyword,
    ast.Attribute,
    ast.Name,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.Dict,  # plain data, e.g. timm's feature_info entries
    ast.Subscript,
    ast.Slice,  # tensor slicing, x[:, :1]: its bounds are expressions checked like any other
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
    """The start of an attribute chain, through method calls and indexing: `self` in
    self.conv1.weight and self.weight[0].numel, `x` in x.permute(0, 2, 3, 1).contiguous,
    `super()` in super().__init__."""
    while True:
        if isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func
        else:
            return node


def _call_problem(call: ast.Call, defined: set[str], roots: set[str]) -> str | None:
    """Only calls of known things: allowed built-ins and the module's own classes and
    functions by name, methods through `self` or through a function's own parameters and
    locals (`roots` holds those, and the imported modules, whose paths are checked as
    attributes)."""
    func = call.func
    if isinstance(func, ast.Name):
        return None if func.id in BUILTIN_CALLS or func.id in defined else f"{func.id}()"
    root = _root(func)
    if (  # a child of a container by position: self.stages[0](x)
        isinstance(func, ast.Subscript)
        and isinstance(func.slice, ast.Constant)
        and type(func.slice.value) is int
        and isinstance(root, ast.Name)
        and root.id == "self"
    ):
        return None
    if isinstance(func, ast.Attribute) and (
        (isinstance(root, ast.Name) and root.id in roots)
        or (isinstance(root, ast.Call) and _dotted(root.func) == "super")
    ):
        return None
    return "a computed callable"


def _scopes(tree: ast.Module, modules: frozenset[str]) -> dict[ast.AST, set[str]]:
    """Per function, the names whose methods it may call: `self`, its parameters and locals
    (tensors: `x.permute(...)`), and the modules the file imports (`nn`, `torch`)."""
    scopes: dict[ast.AST, set[str]] = {}
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        arguments = function.args
        names = {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)}
        names |= {
            node.id
            for node in ast.walk(function)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
        }
        names |= {"self", "nn"} | modules
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                scopes[node] = names
    return scopes


def _problems(tree: ast.Module) -> Iterable[str]:
    paths, imports, modules = allowed()
    roots = MODULE_ROOTS | modules
    scopes = _scopes(tree, modules)
    # Calls of a loop's module over the block's own ModuleLists (_loop_modules).
    loop_calls = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef)
        for names in [_loop_modules(fn)]
        for node in ast.walk(fn)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
    }
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    # A helper may extend a torch layer (`class StdConv2d(nn.Conv2d)`, as timm writes it).
    bases = {"nn.Module"} | {p for p in paths if p.startswith("nn.")}
    prefixes = frozenset(p.rsplit(".", i)[0] for p in paths for i in range(p.count(".")))
    # Module-level classes and functions, and the plugin classes a registered op declares it
    # imports, are callable by name; the binding rules below keep each name meaning one thing.
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
        name for module, names in imports.items() if module not in ALLOWED_IMPORTS for name in names
    }
    yield from _binding_problems(tree)
    yield from _local_calls(tree)
    yield from _self_problems(tree)
    bound = {name for name, _node in _bindings(tree)}
    # A class may extend one the module defines (checked itself): `ResNetFeatures(ResNet)`, the
    # features-only model; a class without a base holds plain data (timm's FeatureInfo).
    modules_classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.bases}
    for node in ast.walk(tree):
        line = f"line {getattr(node, 'lineno', '?')}"
        if not isinstance(node, _NODES):
            yield f"{line}: {type(node).__name__}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in modules or alias.asname:
                    yield f"{line}: import of {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            names = imports.get(node.module or "", set())
            for alias in node.names:
                if node.level or alias.name not in names or alias.asname:
                    yield f"{line}: import of {node.module}.{alias.name}"
        elif isinstance(node, ast.ClassDef | ast.FunctionDef) and node.decorator_list:
            yield f"{line}: decorator"
        elif isinstance(node, ast.ClassDef) and (
            node.keywords
            or len(node.bases) > 1
            or (node.bases and _dotted(node.bases[0]) not in bases | modules_classes)
        ):
            yield f"{line}: class {node.name} is not a plain nn.Module or torch layer"
        elif isinstance(node, ast.Name) and node.id.startswith("__"):
            yield f"{line}: name {node.id}"
        elif isinstance(node, ast.Name) and node.id in roots and not _starts_chain(node, parents):
            # `m = nn` (or `f(torch)`) would let `m.modules.module.os` escape the path check.
            yield f"{line}: the module {node.id} used as a value"
        elif (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id not in bound
            and node.id not in SAFE_BUILTINS
        ):
            yield f"{line}: name {node.id} is neither defined here nor a builtin resgen uses"
        elif isinstance(node, ast.Attribute):
            yield from _attribute_problems(node, line, paths, prefixes, roots, parents)
        elif isinstance(node, ast.Call) and (
            id(node) not in loop_calls
            and (
                problem := _call_problem(node, defined, scopes.get(node, {"self", "nn", *modules}))
            )
        ):
            yield f"{line}: call to {problem}"
        elif (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Store)
            and node.id in roots | {"Tensor", "self"}
        ):
            yield f"{line}: assignment to {node.id}"


def _bindings(tree: ast.Module) -> Iterable[tuple[str, ast.AST]]:
    """Every name the module binds, in any scope, with the node that binds it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            yield node.name, node
        elif isinstance(node, ast.arg):
            yield node.arg, node
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            yield node.id, node
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield alias.asname or alias.name, node
        elif isinstance(node, ast.Import):  # `import torch` binds `torch` (`import a.b`: `a`)
            for alias in node.names:
                yield alias.asname or alias.name.partition(".")[0], node


def _binding_problems(tree: ast.Module) -> Iterable[str]:
    """Bindings that would let one name mean two things (see the module docstring)."""
    once = {}  # module-level classes, functions and imports: name -> the node that binds it
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.ImportFrom | ast.Import):
            for name, binder in _bindings(ast.Module(body=[node], type_ignores=[])):
                if binder is node and name not in once:
                    once[name] = node
    # A function's own locals (a helper's `n, c, h, w = x.size()`) may share a name with a
    # module-level class or function (a network called `n`): calls by a local's name are
    # refused instead (_local_calls). Imports stay bound once everywhere.
    local = {
        child
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef)
        for child in ast.walk(fn)
        if child is not fn
    }
    for name, node in _bindings(tree):
        line = f"line {getattr(node, 'lineno', '?')}"
        if name in BUILTINS:
            yield f"{line}: `{name}` would shadow the builtin `{name}`"
        elif name in once and once[name] is not node:
            if node in local and not isinstance(once[name], ast.Import | ast.ImportFrom):
                continue
            yield f"{line}: `{name}` is bound again (it is the module's {_role(once[name])})"


def _local_calls(tree: ast.Module) -> Iterable[str]:
    """Calls by the name of a variable a function binds itself: only module-level classes and
    functions are called by name, so a local that shares one's name must not be."""
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        stored = {
            node.id
            for node in ast.walk(fn)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del)
        }
        modules = _loop_modules(fn)
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in stored and node.func.id not in modules:
                    yield f"line {node.lineno}: call to {node.func.id}(), a local variable"


def _loop_modules(fn: ast.FunctionDef) -> set[str]:
    """Locals bound only as the module of a loop over the block's own ModuleLists
    (`for i, (conv, bn) in enumerate(zip(self.convs, self.bns))`, as timm's Res2Net writes
    it): calling one calls a submodule of `self`, which the code could call directly."""
    loops: dict[str, int] = {}
    stores: dict[str, int] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            stores[node.id] = stores.get(node.id, 0) + 1
        if not isinstance(node, ast.For):
            continue
        target, source = node.target, node.iter
        if _is_call_of(source, "enumerate") and isinstance(target, ast.Tuple):
            source, target = source.args[0], target.elts[1]
        if _is_call_of(source, "zip") and isinstance(target, ast.Tuple):
            pairs = zip(target.elts, source.args, strict=False)
        else:
            pairs = [(target, source)]
        for name, lists in pairs:
            if isinstance(name, ast.Name) and _self_attribute(lists):
                loops[name.id] = loops.get(name.id, 0) + 1
    return {name for name, count in loops.items() if stores.get(name) == count}


def _is_call_of(node: ast.AST, name: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == name
        and not node.keywords
        and bool(node.args)
    )


def _self_attribute(node: ast.AST) -> bool:
    """`self.convs`: one attribute of self, no deeper chain."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _role(node: ast.AST) -> str:
    if isinstance(node, ast.ClassDef):
        return "class"
    return "function" if isinstance(node, ast.FunctionDef) else "import"


def _starts_chain(node: ast.Name, parents: dict) -> bool:
    parent = parents.get(node)
    return isinstance(parent, ast.Attribute) and parent.value is node


def _attribute_problems(
    node: ast.Attribute, line: str, paths, prefixes, roots, parents: dict
) -> Iterable[str]:
    if node.attr.startswith("_") and not (
        node.attr == "__init__"
        and isinstance(node.value, ast.Call)
        and _dotted(node.value.func) == "super"
    ):
        yield f"{line}: attribute {node.attr}"
        return
    if node.attr in INTERNAL_ATTRIBUTES:
        yield f"{line}: attribute {node.attr} reaches the interpreter's internals"
        return
    path = _dotted(node)
    if path and path.split(".")[0] in roots:
        # A chain that ends here must be an allowed path; one that goes on may be a prefix.
        parent = parents.get(node)
        whole = not (isinstance(parent, ast.Attribute) and parent.value is node)
        if path not in paths and (whole or path not in prefixes):
            yield f"{line}: {path} is not a layer class or init function resgen uses"


def _self_problems(tree: ast.Module) -> Iterable[str]:
    """`self` bound anywhere but as the first parameter of a method."""
    methods_first = set()
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            for item in cls.body:
                if isinstance(item, ast.FunctionDef) and item.args.args:
                    methods_first.add(item.args.args[0])
    for name, node in _bindings(tree):
        if name == "self" and node not in methods_first:
            where = f"line {getattr(node, 'lineno', '?')}"
            yield f"{where}: `self` bound other than as a method's first parameter"
