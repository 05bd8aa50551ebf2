"""Semantic analysis: files and imports to a resolved `Spec`.

Reads files (bytes, size, encoding), follows imports (relative to the importing file, or `std.*`
from resgen's standard library; a cycle is an error), and checks every name: definitions are valid
identifiers and unique in their scope, references point at something known (with a "did you
mean"), and call arguments are bound to parameters. All errors of a file are collected and raised
together. What leaves this module is self-contained: file-level `let`s are substituted in, every
argument is named, every call says whether it is a built-in op or a block.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from resgen import codes, ops
from resgen import expr as E
from resgen import spec as S
from resgen.diagnostics import (
    Diagnostic,
    Diagnostics,
    Span,
    SpecError,
    UsageError,
    did_you_mean,
)
from resgen.limits import LIMITS
from resgen.names import (
    BLOCK_INDEX,
    BLOCK_INPUT,
    IMPLICIT,
    IN_CHANNELS,
    NUM_BLOCKS,
    POSITION,
    STAGE_INDEX,
    STAGE_SET,
    problem_with,
    shadowing,
)
from resgen.parser import parse_text

STAGE_KEYWORDS = ("dilate",)  # stage arguments that are not block parameters
RESIDUAL_FLAG = "residual"  # generated attribute: whether an instance's merge happens


# Resolved standard-library files, shared by every Loader of the process: checking a thousand
# variants in one process parses std.resnet once, not a thousand times.
_STD_FILES: dict[str, tuple[_File, str]] = {}


@dataclass
class _File:
    path: str
    blocks: dict[str, S.Block] = field(default_factory=dict)
    networks: dict[str, S.Network] = field(default_factory=dict)
    lets: tuple[S.Let, ...] = ()


@dataclass
class Loader:
    """Loads files once each; keeps their text so diagnostics can quote any of them."""

    sources: dict[str, str] = field(default_factory=dict)
    # `--param NAME=VALUE` from the command line: new defaults for the network's params.
    params: tuple[str, ...] = ()
    _files: dict[str, _File] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list)

    def load(self, path: str | os.PathLike) -> S.Spec:
        """The resolved spec of one file: its own network (if any) and all blocks in scope."""
        file = self._load(self._display(Path(path)), None)
        own = [n for n in file.networks.values() if n.source_file == file.path]
        network = own[0] if own else None
        if self.params:
            network = self._with_params(network, file.path)
        return S.Spec(
            span=Span(file.path, 1, 1, 1, 1),
            path=file.path,
            lets=file.lets,
            blocks=dict(file.blocks),
            network=network,
        )

    def _with_params(self, network: S.Network | None, path: str) -> S.Network:
        """The network with `--param NAME=VALUE` defaults, as a derived network would have.
        Each option is parsed as `let NAME = VALUE` in a pseudo-file named after it, so its
        errors are located and quoted like any other."""
        diags = Diagnostics()
        new_defaults: dict[str, S.Expr] = {}
        for option in self.params:
            name, _, value = option.partition("=")
            name = name.strip()
            label = f"--param {name}"
            text = line_ends(f"let {name} = {value}\n" if value.strip() else f"let {name} =\n")
            self.sources[label] = text
            if network is None:
                raise UsageError(
                    f"{path} defines no network, so --param {option!r} has nothing to set"
                )
            known = [p.name for p in network.params]
            if name in new_defaults:
                diags.error(
                    Span(label, 1, 5, 1, 5 + len(name)),
                    codes.DUPLICATE_ARGUMENT,
                    f"--param {name} is given twice",
                )
                continue
            if name not in known:
                diags.error(
                    Span(label, 1, 5, 1, 5 + len(name)),
                    codes.UNKNOWN_ARGUMENT,
                    f"network `{network.name}` has no param `{name}`"
                    + did_you_mean(name, known)
                    + ("" if known else "; it declares no params"),
                )
                continue
            try:
                parsed = parse_text(text, label)
            except SpecError as err:
                diags.extend(err.diagnostics)
                continue
            if len(parsed.lets) != 1 or parsed.imports or parsed.blocks or parsed.networks:
                diags.error(
                    Span(label, 1, 1, 1, len(text)),
                    codes.SYNTAX,
                    "a --param value is one expression",
                )
                continue
            let = parsed.lets[0]
            # An op is a value too (`--param norm_layer=groupnorm(32)`), bound as in a spec.
            resolver = _FileResolver(self, parsed)
            value = resolver._op_values(let.value, set())
            if resolver.diags.has_errors:
                diags.extend(resolver.diags.items)
                continue
            calls = [e for e in E.walk(value) if isinstance(e, S.Func)]
            unknown = [c for c in calls if c.name not in E.FUNCTIONS]
            if unknown:
                diags.error(
                    unknown[0].span,
                    codes.UNKNOWN_FUNCTION,
                    f"unknown function `{unknown[0].name}`"
                    + did_you_mean(unknown[0].name, E.FUNCTIONS),
                )
                continue
            refs = E.free_refs(value)
            if refs:
                diags.error(
                    refs[0].span,
                    codes.UNKNOWN_NAME,
                    f"a --param value is a constant expression; `{refs[0].name}` is not known here",
                )
                continue
            new_defaults[name] = value
        diags.raise_if_errors()
        params = tuple(
            p.model_copy(update={"default": new_defaults[p.name]}) if p.name in new_defaults else p
            for p in network.params
        )
        return network.model_copy(update={"params": params})

    @staticmethod
    def _display(path: Path) -> str:
        """The path as the user wrote it (normalised), so messages point where they looked."""
        return os.path.normpath(str(path))

    def read(self, path: str, at: Span | None) -> str:
        """The file's text, or a located error / UsageError when it cannot be had."""
        p = Path(path)
        try:
            if path.startswith("<std>/"):
                data = resources.files("resgen.stdlib").joinpath(path[6:]).read_bytes()
            else:
                if at is not None and p.is_dir():  # said as such, before the suffix rule
                    raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                if at is not None and not os.path.realpath(p).endswith(".arch"):
                    # Only specs are imported: never read (or quote a line of) .env, /etc/shadow
                    # or /proc/self/environ, whatever a link in between is called.
                    self._fail(
                        at,
                        codes.IMPORT_NOT_FOUND,
                        f"cannot import `{path}`: only .arch files can be imported"
                        + (
                            f" (it is a link to {os.path.realpath(p)})"
                            if path.endswith(".arch")
                            else ""
                        ),
                    )
                data = _read_regular(p, LIMITS.max_file_bytes + 1)  # one byte past the limit
                if len(data) > LIMITS.max_file_bytes:
                    self._fail(
                        at or Span(path, 1, 1, 1, 1),
                        codes.LIMIT,
                        f"{path} is over the {LIMITS.max_file_bytes}-byte limit",
                        hint="set RESGEN_MAX_FILE_BYTES to raise it",
                    )
        except (OSError, FileNotFoundError) as err:
            reason = err.strerror or type(err).__name__
            if at is None:
                raise UsageError(f"{path}: {reason.lower()}") from None
            self._fail(at, codes.IMPORT_NOT_FOUND, f"cannot read `{path}`: {reason.lower()}")
        if b"\x00" in data:
            line, col = self._bad_byte(path, data, data.index(b"\x00"))
            self._fail(
                Span(path, line, col, line, col + 1),
                codes.ENCODING,
                "a NUL byte: this is a binary file, not an .arch spec",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line, col = self._bad_byte(path, data, err.start)
            self._fail(
                Span(path, line, col, line, col + 1),
                codes.ENCODING,
                f"byte 0x{data[err.start]:02x} is not valid UTF-8; specs are UTF-8 text",
            )
        text = line_ends(text.removeprefix("\ufeff"))
        self.sources[path] = text
        return text

    def _bad_byte(self, path: str, data: bytes, offset: int) -> tuple[int, int]:
        """Line and character column of a bad byte; keeps a readable copy to quote."""
        self.sources[path] = line_ends(data.decode("utf-8", "replace").replace("\x00", " "))
        before = data[:offset].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        line_start = before.rfind(b"\n") + 1
        col = len(before[line_start:].decode("utf-8", "replace")) + 1
        return before.count(b"\n") + 1, col

    @staticmethod
    def _fail(span: Span, code: str, message: str, hint: str | None = None):
        raise SpecError([Diagnostic(span, code, message, hint=hint)])

    def _load(self, path: str, at: Span | None) -> _File:
        key = path if path.startswith("<std>/") else os.path.abspath(path)
        if key in self._stack:
            cycle = " -> ".join(self._stack[self._stack.index(key) :] + [key])
            self._fail(at, codes.IMPORT_CYCLE, f"import cycle: {cycle}")
        if key in self._files:
            return self._files[key]
        if key in _STD_FILES:  # the standard library cannot change within a process
            file, self.sources[path] = _STD_FILES[key]
            self._files[key] = file
            return file
        if len(self._stack) >= LIMITS.max_import_depth:
            self._fail(
                at or Span(path, 1, 1, 1, 1),
                codes.LIMIT,
                f"imports nested deeper than {LIMITS.max_import_depth}",
            )
        text = self.read(path, at)
        parsed = parse_text(text, path)
        self._stack.append(key)
        try:
            file = _FileResolver(self, parsed).resolve()
        finally:
            self._stack.pop()
        self._files[key] = file
        if key.startswith("<std>/"):
            _STD_FILES[key] = (file, text)
        return file

    def import_target(self, imp: S.Import, importer: str) -> str:
        if imp.std is not None:
            parts = imp.std.split(".")
            if parts[0] != "std" or len(parts) != 2:
                self._fail(
                    imp.span,
                    codes.IMPORT_NOT_FOUND,
                    f"unknown library `{imp.std}`; the standard library is `std.resnet`",
                )
            name = parts[1] + ".arch"
            if not resources.files("resgen.stdlib").joinpath(name).is_file():
                known = [
                    f.name[:-5]
                    for f in resources.files("resgen.stdlib").iterdir()
                    if f.name.endswith(".arch")
                ]
                self._fail(
                    imp.span,
                    codes.IMPORT_NOT_FOUND,
                    f"no module `{imp.std}` in the standard library"
                    + did_you_mean(parts[1], known),
                )
            return "<std>/" + name
        base = Path(importer).parent if not importer.startswith("<") else Path(".")
        return self._display(base / imp.path)


def _rewrite(expr: S.Expr, fn) -> S.Expr:
    """Apply `fn` to every node of `expr`, children first (an expression tree is small: the
    parser bounds its depth)."""
    if isinstance(expr, S.Pair):
        expr = expr.model_copy(update={"h": _rewrite(expr.h, fn), "w": _rewrite(expr.w, fn)})
    elif isinstance(expr, S.BinOp):
        expr = expr.model_copy(
            update={"left": _rewrite(expr.left, fn), "right": _rewrite(expr.right, fn)}
        )
    elif isinstance(expr, S.UnaryOp):
        expr = expr.model_copy(update={"operand": _rewrite(expr.operand, fn)})
    elif isinstance(expr, S.Cond):
        expr = expr.map(lambda e: _rewrite(e, fn))
    elif isinstance(expr, S.Func):
        args = tuple(_rewrite(a, fn) for a in expr.args)
        keywords = tuple(
            k.model_copy(update={"value": _rewrite(k.value, fn)}) for k in expr.keywords
        )
        expr = expr.model_copy(update={"args": args, "keywords": keywords})
    return fn(expr)


def _op_module_names(name: str) -> set[str]:
    """The module-level names an op's generated code uses: its helper or plugin class and the
    names its import lines bring in."""
    op = ops.lookup(name, load_plugins=False)
    emit = op.emit if op is not None else None
    if emit is None:
        return set()
    names = set() if emit.cls.startswith("nn.") else {emit.cls.split(".")[0]}
    for line in emit.imports:
        names |= {n.strip() for n in line.partition(" import ")[2].split(",") if n.strip()}
    return names


def line_ends(text: str) -> str:
    """`\r\n` (Windows) and a lone `\r` (classic Mac OS) as `\n`: every later stage (the lexer's
    comments, line and column numbers, quoted source lines) sees one kind of line end."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_regular(path: Path, limit: int) -> bytes:
    """Up to `limit` bytes of a regular file. Opened without blocking and checked on the open
    descriptor, so a FIFO or a device (/dev/zero, a named pipe called x.arch) is refused at once
    instead of read forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@functools.cache
def _std_blocks() -> dict[str, str]:
    """Block name -> the standard library module that defines it (`Bottleneck` -> std.resnet),
    read from the library's text: no file of it is parsed for this."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files("resgen.stdlib").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".arch"):
            for name in re.findall(r"(?m)^\s*block\s+(\w+)", entry.read_text(encoding="utf-8")):
                found.setdefault(name, f"std.{entry.name[:-5]}")
    return found


def _std_import_hint(name: str) -> str | None:
    r"""`add \`import std.resnet\``, for a block of the standard library not imported."""
    module = _std_blocks().get(name)
    return f"`{name}` is in the standard library: add `import {module}`" if module else None


def _function(op) -> str:
    """What a functional op becomes in forward(): `torch.amax`, `a + b`."""
    symbol = getattr(op, "symbol", "")
    if symbol:
        return f"`a {symbol} b`"
    return f"`{op.emit.uses[0]}`" if op.emit.uses else "an expression"


def _block_inside(layer: S.Layer) -> str | None:
    """The block type a layer is or holds (in a seq), if any."""
    if layer.kind == "block":
        return layer.callee
    return next((b for item in layer.items if (b := _block_inside(item)) is not None), None)


def _duplicate_hint(name: str, first: S.Layer, declared) -> str:
    """A name declared twice: a parameter-free layer is applied again by its bare name; one with
    parameters either gets a second name (new weights) or is applied again (the same weights)."""
    op = ops.lookup(first.callee) if first.kind == "op" else None
    if op is not None and op.stateless:
        return f"write just `{name}` to apply it again"
    free = next(f"{name}{n}" for n in range(2, 1000) if f"{name}{n}" not in declared)
    return (
        f"`{name}` has parameters: a second one with its own weights needs its own name "
        f"(`{free} = ...`); to apply the same weights again write `{name}` (with `from`)"
    )


def load(path: str | os.PathLike) -> S.Spec:
    """Parse and resolve one .arch file. Raises SpecError (located) or UsageError."""
    return Loader().load(path)


class _FileResolver:
    """Resolves one parsed file against what it imports."""

    def __init__(self, loader: Loader, parsed: S.SpecFile):
        self.loader = loader
        self.parsed = parsed
        self.diags = Diagnostics()
        self.blocks: dict[str, S.Block] = {}
        self.networks: dict[str, S.Network] = {}
        self.lets: dict[str, S.Expr] = {}

    # -- entry
    def resolve(self) -> _File:
        for imp in self.parsed.imports:
            target = self.loader.import_target(imp, self.parsed.path)
            imported = self.loader._load(target, imp.span)
            # The same definition reached twice (diamond imports) is fine; two different ones
            # would make the meaning depend on import order.
            for table, defs, role in (
                (self.blocks, imported.blocks, "block"),
                (self.networks, imported.networks, "network"),
            ):
                for name, node in defs.items():
                    first = table.setdefault(name, node)
                    if first is not node:
                        self.diags.error(
                            imp.span,
                            codes.DUPLICATE_NAME,
                            f"{role} `{name}` of {node.source_file} is already "
                            f"imported from {first.source_file}",
                        )
        self._file_lets()
        own_blocks = [self._block(b) for b in self.parsed.blocks]
        for b in own_blocks:
            self._define(self.blocks, b, "block")
        for b in own_blocks:
            self._check_block_recursion(b)
        own_nets = []
        for n in self.parsed.networks:
            net = self._derived(n) if n.base is not None else self._network(n)
            if net is not None:
                own_nets.append(net)
                self._define(self.networks, net, "network")
        for net in own_nets:  # the generated module defines blocks, the class and the factory
            for name, role in ((net.python_class, "class"), (net.name, "factory function")):
                if name in self.blocks:
                    self.diags.error(
                        net.span,
                        codes.DUPLICATE_NAME,
                        f"the network's {role} `{name}` has the name of block "
                        f"`{name}`; the generated module needs both",
                        hint="name the class with `class NAME` in the network",
                    )
            if net.python_class == net.name:
                self.diags.error(
                    net.span,
                    codes.DUPLICATE_NAME,
                    f"network `{net.name}` would name both its class and its factory "
                    f"function `{net.name}`",
                    hint="give the class another name with `class NAME`",
                )
            for span, message in shadowing(net, self.blocks, _op_module_names):
                self.diags.error(span, codes.DUPLICATE_NAME, message, hint="rename it")
        if len(own_nets) > 1:
            self.diags.error(
                own_nets[1].span,
                codes.MULTIPLE_NETWORKS,
                f"a spec file defines one network; `{own_nets[0].name}` is already "
                f"defined at line {own_nets[0].span.line}",
                hint="put each network in its own file and import the shared parts",
            )
        self.diags.raise_if_errors()
        return _File(self.parsed.path, self.blocks, self.networks, self.parsed.lets)

    def _define(self, table: dict, node, role: str) -> None:
        existing = table.get(node.name)
        if existing is not None and existing is not node:
            where = (
                f"line {existing.span.line}"
                if existing.span.file == node.span.file
                else existing.span.file
            )
            self.diags.error(
                node.span,
                codes.DUPLICATE_NAME,
                f"{role} `{node.name}` is already defined ({where})",
            )
            return
        table[node.name] = node

    def _name_ok(self, name: str, role: str, span: Span) -> bool:
        problem = problem_with(name, role)
        if problem:
            self.diags.error(span, codes.BAD_NAME, problem)
        return problem is None

    # -- let and expressions
    def _file_lets(self) -> None:
        for let in self.parsed.lets:
            self._name_ok(let.name, "let", let.span)
            value = self._expr(let.value, set())  # earlier file lets are found in self.lets
            if let.name in self.lets:
                self.diags.error(let.span, codes.DUPLICATE_NAME, f"`{let.name}` is already defined")
            self.lets[let.name] = value

    def _expr(self, expr: S.Expr, scope: set[str]) -> S.Expr:
        """Check every name in `expr` is in scope; substitute file-level lets."""
        if sum(1 for _ in E.walk(expr)) > LIMITS.max_expression_nodes:
            self.diags.error(expr.span, codes.LIMIT, "expression too large")
            return expr
        expr = self._op_values(expr, scope)
        for ref in E.free_refs(expr):
            if ref.name not in scope and ref.name not in self.lets:
                self.diags.error(
                    ref.span,
                    codes.UNKNOWN_NAME,
                    f"unknown name `{ref.name}`" + did_you_mean(ref.name, scope | set(self.lets)),
                )
        for call in (e for e in E.walk(expr) if isinstance(e, S.Func)):
            if call.keywords and call.name in E.FUNCTIONS:
                self.diags.error(
                    call.keywords[0].span,
                    codes.UNKNOWN_ARGUMENT,
                    f"`{call.name}` takes no named arguments",
                )
            if call.name not in E.FUNCTIONS:
                self.diags.error(
                    call.span,
                    codes.UNKNOWN_FUNCTION,
                    f"unknown function "
                    f"`{call.name}`; expressions may call "
                    + ", ".join(f"`{f}`" for f in E.FUNCTIONS)
                    + did_you_mean(call.name, E.FUNCTIONS),
                )
        result = E.substitute(expr, lambda n: None if n in scope else self.lets.get(n))
        # Lets share sub-trees, so a chain `let b = a + a` doubles in size: stop it here, counting
        # no further than the limit.
        if next(itertools.islice(E.walk(result), LIMITS.max_expression_nodes, None), None):
            self.diags.error(
                expr.span,
                codes.LIMIT,
                "expression too large once lets are substituted",
                hint="set RESGEN_MAX_EXPRESSION_NODES to raise the limit",
            )
            return expr
        return result

    def _op_values(self, expr: S.Expr, scope: set[str]) -> S.Expr:
        """Ops used as values (`batchnorm`, `groupnorm(32)`) become OpRefs with their arguments
        bound by name, as a layer's are. A name in scope (a param, a let) shadows an op."""

        def shadowed(name: str) -> bool:
            return name in scope or name in self.lets or name in E.FUNCTIONS

        def rewrite(node: S.Expr) -> S.Expr:
            if isinstance(node, S.Ref) and not shadowed(node.name):
                op = ops.lookup(node.name)
                if op is not None:
                    return S.OpRef(span=node.span, name=node.name)
            if isinstance(node, S.Func) and not shadowed(node.name):
                op = ops.lookup(node.name)
                if op is not None:
                    given = [S.Arg(span=a.span, name=None, value=a) for a in node.args]
                    params = [(p.name, False) for p in op.params]
                    args = self._bind(
                        [*given, *node.keywords], params, f"`{op.name}`", node.span, scope
                    )
                    for arg in args:  # generated code defines it once, at module level
                        for ref in E.free_refs(arg.value):
                            self.diags.error(
                                ref.span,
                                codes.BAD_ARGUMENT,
                                f"an op used as a value takes constant arguments, not "
                                f"`{ref.name}` (`{E.source_text(node)}`)",
                                hint="give the value where the layer is made instead: "
                                f"`norm = {op.name}` and `bn1 = norm({arg.name}={ref.name})`",
                            )
                    return S.OpRef(span=node.span, name=node.name, args=args)
            return node

        return _rewrite(expr, rewrite)

    def _lets(self, lets: tuple[S.Let, ...], scope: set[str]) -> list[S.Let]:
        """Block or network lets, in order: each sees the names before it, then joins `scope`."""
        resolved = []
        for let in lets:
            self._name_ok(let.name, "let", let.span)
            if let.name in scope:
                self.diags.error(let.span, codes.DUPLICATE_NAME, f"`{let.name}` is already defined")
            resolved.append(let.model_copy(update={"value": self._expr(let.value, scope)}))
            scope.add(let.name)
        return resolved

    # -- layers
    def _items(self, items, scope: set[str], owner: str, what: str) -> tuple[S.Layer, ...]:
        """The layers of a `seq` or a shortcut: all unnamed (`.0`, `.1`) or all named (`.conv`,
        `.bn`), each name once; they cannot be applied again by name."""
        unnamed = [item for item in items if item.name is None]
        if unnamed and len(unnamed) < len(items):
            self.diags.error(
                unnamed[0].span,
                codes.UNNAMED_ITEM,
                f"the layers of {what} are all named or all unnamed; this one has no name",
                hint="write `name = op(...)` for every layer, or drop every name",
            )
        return self._layers(
            items, scope, {}, owner, named=not unnamed, reusable=False, modules_of=what
        )

    def _layers(
        self,
        layers,
        scope: set[str],
        declared: dict[str, S.Layer],
        owner: str,
        named: bool = True,
        reusable: bool = True,
        modules_of: str | None = None,
    ) -> tuple[S.Layer, ...]:
        """The layers of a path. `modules_of` names a path that is a sequence of modules called
        in order (the stem and head, a stage's own layers, a seq, a shortcut), where the
        constructs of block bodies are errors; None for a block's main and post."""
        out = []
        for layer in layers:
            if modules_of is not None:
                self._modules_only(layer, modules_of)
            layer = self._flow(layer, scope, declared, owner)
            if layer.kind == "repeat":
                out.append(self._repeat(layer, scope, declared, owner))
                continue
            if layer.kind == "call" and not layer.args and self._applies_again(layer, declared):
                # `avg_out = mlp from avg`: a declared layer applied again, its output named
                layer = layer.model_copy(update={"kind": "reuse"})
            if layer.kind == "reuse":
                out.append(self._reuse(layer, declared, owner))
                continue
            if named and layer.name is not None:
                if self._name_ok(layer.name, "layer", layer.span) and layer.name in declared:
                    first = declared[layer.name]
                    self.diags.error(
                        layer.span,
                        codes.DUPLICATE_NAME,
                        f"layer `{layer.name}` is already declared in {owner} "
                        f"(line {first.span.line})",
                        hint=_duplicate_hint(layer.name, first, declared) if reusable else None,
                    )
            if layer.kind == "seq":
                items = self._items(layer.items, scope, owner, f"seq `{layer.name}`")
                resolved = layer.model_copy(update={"items": items})
            else:
                resolved = self._call(layer, scope)
                op = ops.lookup(resolved.callee) if resolved.kind == "op" else None
                if modules_of is not None and op is not None and op.functional:
                    self.diags.error(
                        layer.callee_span,
                        codes.BODY_ONLY,
                        f"`{op.name}` is code in a block's forward() ({_function(op)}), not a "
                        f"module; the layers of {modules_of} are modules called in order",
                        hint="write it in a block's `main` and use the block as a layer",
                    )
            if layer.name is not None:
                declared.setdefault(layer.name, resolved)
            out.append(resolved)
        return tuple(out)

    def _flow(self, layer: S.Layer, scope: set[str], declared, owner: str) -> S.Layer:
        """Check what a layer's `from` names (the block input `x` or a layer declared earlier,
        an item's index an expression of the scope) and its `when` condition."""
        if not layer.inputs and layer.condition is None:
            return layer
        inputs = []
        for source in layer.inputs:
            if source.name != BLOCK_INPUT and source.name not in declared:
                self.diags.error(
                    source.span,
                    codes.UNKNOWN_NAME,
                    f"`from {source.name}`: no layer of {owner} before this one is called "
                    f"`{source.name}`" + did_you_mean(source.name, [*declared, BLOCK_INPUT]),
                    hint=f"`from` names the block input `{BLOCK_INPUT}` or an earlier layer",
                )
            if source.index is not None:
                source = source.model_copy(update={"index": self._expr(source.index, scope)})
            inputs.append(source)
        condition = layer.condition
        if condition is not None:
            condition = self._expr(condition, scope)
        return layer.model_copy(update={"inputs": tuple(inputs), "condition": condition})

    def _modules_only(self, layer: S.Layer, where: str) -> None:
        """`from`, a layer's `when` and `repeat` shape a block body's forward(); a path of
        modules called in order has no place for them (they would be dropped silently)."""
        found = (
            ("`repeat`", layer.span)
            if layer.kind == "repeat"
            else ("`from`", layer.inputs[0].span)
            if layer.inputs
            else ("a layer's `when`", layer.condition.span)
            if layer.condition is not None
            else None
        )
        if found is not None:
            self.diags.error(
                found[1],
                codes.BODY_ONLY,
                f"{found[0]} works in a block's `main` and `post`; the layers of {where} are "
                "modules called in order",
                hint="write these layers in a block and use the block as a layer",
            )

    def _applies_again(self, layer: S.Layer, declared) -> bool:
        """Whether `name = callee` applies an earlier layer of this body again: `callee` is a
        layer declared before (and neither an op nor a block type, which win as they always
        did)."""
        name = layer.callee
        return (
            name in declared
            and name != layer.name
            and ops.lookup(name, load_plugins=False) is None
            and name not in self.blocks
            and name not in self._own_block_names()
        )

    def _reuse(self, layer: S.Layer, declared, owner: str) -> S.Layer:
        """A layer declared earlier applied again: `relu` on the previous value, or `mlp from
        max` / `max_out = mlp from max` (CBAM's one MLP on two pooled tensors, shared weights).
        A module with parameters applies the same weights; the shape engine checks the input
        is the one it was built for. A block is one submodule with its own forward and is not
        applied again (reuse-stateful); a named application is declared as a value `from` can
        read, not as a module."""
        target = declared.get(layer.callee)
        if target is not None and target.kind == "reuse":  # an application of an application
            layer = layer.model_copy(update={"callee": target.callee})
            target = declared.get(target.callee)
        if target is None:
            self.diags.error(
                layer.span,
                codes.UNKNOWN_NAME,
                f"`{layer.callee}` is not a layer declared earlier in {owner}"
                + did_you_mean(layer.callee, declared)
                + "; to add a layer write `name = op(...)`",
            )
        elif target.kind == "repeat":
            self.diags.error(
                layer.span,
                codes.BUNDLE,
                f"`{layer.callee}` is a repeat's outputs, not a layer to apply again",
                hint=f"read them with `from {layer.callee}`",
            )
        elif (block := _block_inside(target)) is not None:
            self.diags.error(
                layer.span,
                codes.REUSE_STATEFUL,
                f"`{layer.callee}` is (or holds) block `{block}`, a submodule with a forward of "
                "its own, which resgen applies once; only ops and seqs of ops can be applied "
                "again",
                hint=f"declare a second `{block}` with its own name",
            )
        if layer.name != layer.callee:
            if self._name_ok(layer.name, "layer", layer.span) and layer.name in declared:
                self.diags.error(
                    layer.span,
                    codes.DUPLICATE_NAME,
                    f"`{layer.name}` is already declared in {owner} "
                    f"(line {declared[layer.name].span.line})",
                )
            declared.setdefault(layer.name, layer)
        return layer

    def _repeat(self, layer: S.Layer, scope: set[str], declared, owner: str) -> S.Layer:
        """`spo = repeat i < n { ... }`: `n` an expression of the scope, `i` a name of the body
        only; the body's layers are declared in the block (each a ModuleList), and `spo` names
        the turns' outputs (those so far, inside the body)."""
        count = self._expr(layer.count, scope)
        if self._name_ok(layer.var, "loop variable", layer.span) and layer.var in scope:
            self.diags.error(
                layer.span,
                codes.DUPLICATE_NAME,
                f"the loop variable `{layer.var}` hides a name of {owner}",
                hint="pick another name for the turn",
            )
        if self._name_ok(layer.name, "layer", layer.span) and layer.name in declared:
            self.diags.error(
                layer.span, codes.DUPLICATE_NAME, f"`{layer.name}` is already declared in {owner}"
            )
        declared.setdefault(layer.name, layer)
        if not layer.items:
            self.diags.error(layer.span, codes.EMPTY_BLOCK, f"repeat `{layer.name}` has no layers")
        items = self._layers(layer.items, scope | {layer.var}, declared, owner)
        for item in items:
            if item.kind == "repeat":
                self.diags.error(
                    item.span, codes.SYNTAX, "a repeat inside a repeat is not supported"
                )
        return layer.model_copy(update={"count": count, "items": items})

    def _call(self, layer: S.Layer, scope: set[str]) -> S.Layer:
        name = layer.callee
        # Ops first, as they always were; plugins' entry points are read only for a name that
        # is neither a registered op nor a block.
        is_block = name in self.blocks or name in self._own_block_names()
        op = ops.lookup(name, load_plugins=not is_block)
        if op is not None:
            params = [(p.name, p.required) for p in op.params]
            kind = "op"
        elif is_block:
            block = self.blocks.get(name) or self._own_block(name)
            params = [(p.name, p.default is None) for p in block.params]
            kind = "block"
        elif name in scope:  # a param or let holding an op: `bn1 = norm_layer`
            return self._dynamic(layer, scope)
        else:
            known = list(ops.names()) + list(self.blocks) + list(self._own_block_names())
            self.diags.error(
                layer.callee_span,
                codes.UNKNOWN_OP,
                f"unknown layer type `{name}`" + did_you_mean(name, known),
                hint=_std_import_hint(name),
            )
            return layer
        args = self._bind(layer.args, params, f"`{name}`", layer.callee_span, scope)
        return layer.model_copy(update={"kind": kind, "args": args})

    def _dynamic(self, layer: S.Layer, scope: set[str]) -> S.Layer:
        """A layer made by the op a name holds. Which op is known per instance only, so its
        arguments are named (they are checked against that op when the network is lowered)."""
        args = []
        for arg in layer.args:
            if arg.name is None:
                self.diags.error(
                    arg.span,
                    codes.SYNTAX,
                    f"`{layer.callee}` holds an op that is known per instance only: name its "
                    "arguments (`eps=1e-3`)",
                )
                continue
            args.append(arg.model_copy(update={"value": self._expr(arg.value, scope)}))
        names = [a.name for a in args]
        for arg in args:
            if names.count(arg.name) > 1:
                self.diags.error(arg.span, codes.DUPLICATE_ARGUMENT, f"`{arg.name}` is given twice")
                break
        return layer.model_copy(update={"kind": "dynamic", "args": tuple(args)})

    def _own_block_names(self) -> set[str]:
        return {b.name for b in self.parsed.blocks}

    def _own_block(self, name: str) -> S.Block:
        return next(b for b in self.parsed.blocks if b.name == name)

    def _bind(
        self,
        args,
        params: list[tuple[str, bool]],
        what: str,
        at: Span,
        scope: set[str],
        extra: tuple[str, ...] = (),
    ) -> tuple[S.Arg, ...]:
        """Name every argument by its parameter; report unknown, duplicate and missing ones."""
        names = [p for p, _ in params]
        bound: dict[str, S.Arg] = {}
        positional_done = False
        for i, arg in enumerate(args):
            value = self._expr(arg.value, scope)
            if arg.name is None:
                if positional_done:
                    self.diags.error(
                        arg.span, codes.SYNTAX, "a positional argument cannot follow a named one"
                    )
                    continue
                if i >= len(names):
                    self.diags.error(
                        arg.span,
                        codes.TOO_MANY_ARGUMENTS,
                        f"{what} takes at most {len(names)} positional argument"
                        f"{'s' if len(names) != 1 else ''}"
                        + (f" ({', '.join(names)})" if names else ""),
                    )
                    continue
                name = names[i]
            else:
                positional_done = True
                name = arg.name
                if name not in names and name not in extra:
                    self.diags.error(
                        arg.span,
                        codes.UNKNOWN_ARGUMENT,
                        f"{what} has no parameter `{name}`"
                        + did_you_mean(name, names + list(extra)),
                    )
                    continue
            if name in bound:
                self.diags.error(
                    arg.span, codes.DUPLICATE_ARGUMENT, f"`{name}` is given twice to {what}"
                )
                continue
            bound[name] = S.Arg(span=arg.span, name=name, value=value)
        missing = [p for p, required in params if required and p not in bound]
        if missing:
            self.diags.error(
                at, codes.MISSING_ARGUMENT, f"{what} needs {', '.join(f'`{m}`' for m in missing)}"
            )
        return tuple(bound.values())

    # -- blocks
    def _block(self, block: S.Block) -> S.Block:
        self._name_ok(block.name, "block", block.span)
        scope = set(IMPLICIT)
        params = []
        for p in block.params:
            if p.name in POSITION:
                self.diags.error(
                    p.span,
                    codes.BAD_NAME,
                    f"`{p.name}` is implicit: every block receives its position among the "
                    f"network's blocks as `{BLOCK_INDEX}` and their count as `{NUM_BLOCKS}`",
                )
                continue
            if p.name == IN_CHANNELS:
                self.diags.error(
                    p.span,
                    codes.BAD_NAME,
                    f"`{IN_CHANNELS}` is implicit: every block receives the channel "
                    "count of its input under that name",
                )
                continue
            self._name_ok(p.name, "parameter", p.span)
            if p.name in scope:
                self.diags.error(
                    p.span, codes.DUPLICATE_NAME, f"parameter `{p.name}` appears twice"
                )
            default = self._expr(p.default, scope) if p.default is not None else None
            scope.add(p.name)
            params.append(p.model_copy(update={"default": default}))
        expansion = block.expansion
        if expansion is not None:
            expansion = self._expr(expansion, scope)
            scope.add("expansion")
        lets = self._lets(block.lets, scope)
        owner = f"block `{block.name}`"
        declared: dict[str, S.Layer] = {}
        main = self._layers(block.main, scope, declared, owner)
        if not block.main:
            self.diags.error(block.span, codes.EMPTY_BLOCK, f"{owner} has no `main` layers")
        shortcut = block.shortcut
        if shortcut is not None:
            if self._name_ok(shortcut.name, "layer", shortcut.span) and shortcut.name in declared:
                self.diags.error(
                    shortcut.span,
                    codes.DUPLICATE_NAME,
                    f"`{shortcut.name}` is already a layer of {owner}",
                )
            cond = self._expr(shortcut.condition, scope) if shortcut.condition else None
            if shortcut.source is not None and shortcut.source not in declared:
                self.diags.error(
                    shortcut.source_span or shortcut.span,
                    codes.UNKNOWN_NAME,
                    f"`{shortcut.source}` is not a layer of {owner}'s main path"
                    + did_you_mean(shortcut.source, declared),
                    hint="`shortcut NAME from LAYER` reads the output of a layer "
                    "declared in `main`",
                )
            layers = self._items(shortcut.layers, scope, owner, f"shortcut `{shortcut.name}`")
            shortcut = shortcut.model_copy(update={"condition": cond, "layers": layers})
            if block.merge is None:
                self.diags.error(
                    shortcut.span,
                    codes.SHORTCUT_WITHOUT_MERGE,
                    f"{owner} has a shortcut but no `merge add` (or `merge mul`) to join it",
                )
        merge_condition = block.merge_condition
        if merge_condition is not None:
            merge_condition = self._expr(merge_condition, scope)
        if block.merge is not None and ops.merge(block.merge) is None:
            known = " or ".join(f"`{m.name}`" for m in ops.registered() if isinstance(m, ops.Merge))
            self.diags.error(
                block.merge_name_span or block.span,
                codes.UNKNOWN_MERGE,
                f"unknown merge `{block.merge}`; a block merges by {known}",
            )
        post = self._layers(block.post, scope, declared, owner)
        taken = set(declared) | ({shortcut.name} if shortcut is not None else set())
        if merge_condition is not None and RESIDUAL_FLAG in taken:
            self.diags.error(
                block.merge_span or block.span,
                codes.DUPLICATE_NAME,
                f"a conditional merge keeps its condition in the attribute `{RESIDUAL_FLAG}`, "
                f"which {owner} uses for a layer",
            )
        return block.model_copy(
            update={
                "merge_condition": merge_condition,
                "params": tuple(params),
                "expansion": expansion,
                "lets": tuple(lets),
                "main": main,
                "shortcut": shortcut,
                "post": post,
            }
        )

    def _check_block_recursion(self, block: S.Block) -> None:
        def callees(b: S.Block):
            layers = list(b.main) + list(b.post) + list(b.shortcut.layers if b.shortcut else ())
            while layers:
                layer = layers.pop()
                layers.extend(layer.items)
                if layer.kind == "block":
                    yield layer

        seen = set()
        todo = [(block, None)]
        while todo:
            current, via = todo.pop()
            for call in callees(current):
                if call.callee == block.name:
                    self.diags.error(
                        (via or call).span,
                        codes.RECURSIVE_BLOCK,
                        f"block `{block.name}` contains itself",
                    )
                    return
                if call.callee not in seen and call.callee in self.blocks:
                    seen.add(call.callee)
                    todo.append((self.blocks[call.callee], via or call))

    # -- networks
    def _network(self, net: S.Network) -> S.Network:
        self._name_ok(net.name, "network", net.span)
        if net.class_name:
            self._name_ok(net.class_name, "class", net.span)
        if net.input is None:
            self.diags.error(
                net.span,
                codes.MISSING_INPUT,
                f"network `{net.name}` needs an input shape, e.g. `input 3x224x224`",
            )
        scope: set[str] = set()
        params = []
        for p in net.params:
            self._name_ok(p.name, "parameter", p.span)
            if p.name in scope:
                self.diags.error(
                    p.span, codes.DUPLICATE_NAME, f"parameter `{p.name}` appears twice"
                )
            params.append(p.model_copy(update={"default": self._expr(p.default, scope)}))
            scope.add(p.name)
        lets = self._lets(net.lets, scope)
        shape = net.input
        if shape is not None:
            dims = {
                d: self._expr(getattr(shape, d), scope) for d in ("channels", "height", "width")
            }
            shape = shape.model_copy(update=dims)
            self._check_input(shape)
        owner = f"network `{net.name}`"
        declared: dict[str, S.Layer] = {}
        paths = f"{owner}'s stem and head"
        stem = self._layers(net.stem, scope, declared, owner, modules_of=paths)
        stages = []
        stem_names = set(declared)
        for stage in net.stages:
            top = stage.path[0]
            if self._stage_path_ok(stage) and top in stem_names:
                self.diags.error(
                    stage.path_span or stage.span,
                    codes.DUPLICATE_NAME,
                    f"`{top}` is already a layer of {owner}",
                )
            declared.setdefault(top, S.Layer(span=stage.span, kind="seq", name=top))
            stages.append(self._stage(stage, scope, owner))
        self._check_containers(stages)
        head = self._layers(net.head, scope, declared, owner, modules_of=paths)
        return net.model_copy(
            update={
                "input": shape,
                "params": tuple(params),
                "lets": tuple(lets),
                "stem": stem,
                "stages": tuple(stages),
                "head": head,
            }
        )

    def _check_input(self, shape: S.InputShape) -> None:
        """Constant sizes are checked here, at once; sizes that use params are checked when the
        network is lowered with their values (resgen.graph)."""
        for label, expr in zip(("channels", "height", "width"), shape.dims(), strict=True):
            if E.free_refs(expr):
                continue
            try:
                value = E.evaluate(expr, {})
            except E.EvalError:
                continue  # reported when lowered, with its location
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self.diags.error(shape.span, codes.BAD_INPUT, f"input {label} must be at least 1")
            elif value > LIMITS.max_spatial * 16:
                self.diags.error(
                    shape.span, codes.LIMIT, f"input {label} {value} is over the limit"
                )

    def _stage_path_ok(self, stage: S.Stage) -> bool:
        """A stage's path: a layer name, then names or numbers (`stages.0`, `s1`)."""
        span = stage.path_span or stage.span
        ok = self._name_ok(stage.path[0], "layer", span)
        for part in stage.path[1:]:
            ok = (part.isdigit() or self._name_ok(part, "layer", span)) and ok
        return ok

    def _check_containers(self, stages: list[S.Stage]) -> None:
        """Module paths are a tree: a stage cannot also be a container of another stage or be
        defined twice, and a container's stages run one after the other (the container is one
        module, called once)."""
        seen: dict[tuple[str, ...], S.Stage] = {}
        last_use: dict[tuple[str, ...], int] = {}
        for index, stage in enumerate(stages):
            span = stage.path_span or stage.span
            path = stage.path
            for other_path, other in seen.items():
                if other_path == path:
                    self.diags.error(
                        span,
                        codes.DUPLICATE_NAME,
                        f"stage `{stage.name}` is already defined (line {other.span.line})",
                    )
                elif path[: len(other_path)] == other_path or other_path[: len(path)] == path:
                    inner, outer = (stage, other) if len(path) > len(other_path) else (other, stage)
                    self.diags.error(
                        span,
                        codes.DUPLICATE_NAME,
                        f"`{outer.name}` is a stage (its blocks are its children), so it cannot "
                        f"also hold stage `{inner.name}`",
                    )
            seen.setdefault(path, stage)
            for depth in range(1, len(path)):
                container = path[:depth]
                if container in last_use and last_use[container] != index - 1:
                    between = stages[index - 1].name
                    self.diags.error(
                        span,
                        codes.DUPLICATE_NAME,
                        f"container `{'.'.join(container)}` is one module, called once, but "
                        f"stage `{between}` runs between its stages",
                        hint="keep the stages of one container together",
                    )
                last_use[container] = index

    def _stage(self, stage: S.Stage, scope: set[str], owner: str) -> S.Stage:
        layers = stage.layers
        if layers or stage.container:
            declared: dict[str, S.Layer] = {}
            layers = self._layers(
                layers,
                scope,
                declared,
                f"stage `{stage.name}`",
                reusable=False,
                modules_of=f"stage `{stage.name}`",
            )
            for layer in layers:
                if layer.kind == "reuse":
                    self.diags.error(
                        layer.span,
                        codes.UNKNOWN_NAME,
                        f"a stage's own layers cannot apply a layer again (`{layer.name}`)",
                    )
            if stage.container is None:
                self.diags.error(
                    stage.path_span or stage.span,
                    codes.MISSING_ARGUMENT,
                    f"stage `{stage.name}` has layers of its own, so its blocks need a child of "
                    "their own: name it with `in NAME`",
                    hint=f"e.g. `stage {stage.name} = ... in blocks {{ ... }}`",
                )
            elif self._name_ok(stage.container, "layer", stage.container_span or stage.span):
                if stage.container in declared:
                    self.diags.error(
                        stage.container_span or stage.span,
                        codes.DUPLICATE_NAME,
                        f"`{stage.container}` is already a layer of stage `{stage.name}`",
                    )
        pattern = stage.pattern
        if pattern is not None:
            pattern = tuple(
                part if isinstance(part, str) else self._expr(part, scope | {STAGE_INDEX})
                for part in pattern
            )
        runs = tuple(self._run(run, index, scope) for index, run in enumerate(stage.runs))
        return stage.model_copy(update={"layers": layers, "pattern": pattern, "runs": runs})

    def _run(self, run: S.Run, index: int, scope: set[str]) -> S.Run:
        """One run of a stage: its repeat count, block and arguments bound; `stride` and
        `dilate` belong to the stage's first block, so only the first run may write them."""
        repeats = self._expr(run.repeats, scope)
        if index > 0:
            for arg in run.args:
                if arg.name in ("stride", "dilate"):
                    self.diags.error(
                        arg.span,
                        codes.STAGE_SETS_ARGUMENT,
                        f"`{arg.name}` goes to a stage's first block, so only the stage's "
                        "first run can set it; the blocks of later runs get stride 1",
                        hint="write it in the first run",
                    )
        block = self.blocks.get(run.block)
        if block is None:
            self.diags.error(
                run.block_span,
                codes.UNKNOWN_BLOCK,
                f"unknown block `{run.block}`" + did_you_mean(run.block, self.blocks),
                hint=_std_import_hint(run.block),
            )
            return run.model_copy(update={"repeats": repeats})
        for arg in run.args:
            if arg.name in STAGE_SET:
                self.diags.error(
                    arg.span,
                    codes.STAGE_SETS_ARGUMENT,
                    f"a stage sets `{arg.name}` itself"
                    + (
                        "; write `dilate=true` to trade this stage's stride for dilation"
                        if arg.name == "dilation"
                        else ""
                    ),
                )
        settable = [(p.name, p.default is None) for p in block.params if p.name not in STAGE_SET]
        args = self._bind(
            [a for a in run.args if a.name not in STAGE_SET],
            settable,
            f"block `{block.name}`",
            run.block_span,
            scope,
            STAGE_KEYWORDS,
        )
        dilate = next((a for a in args if a.name == "dilate"), None)
        reads = E.free_refs(dilate.value) if dilate is not None else []
        if reads:
            # The generated network fixes each block's stride and dilation when it is written,
            # so a constructor argument `dilate` read would be silently ignored.
            self.diags.error(
                dilate.value.span,
                codes.BAD_DILATE,
                f"`dilate` reads `{reads[0].name}`, but the generated "
                "network fixes its strides and dilations when it is written, so that argument "
                "could not change them",
                hint="write `dilate=true` or `dilate=false` on each stage, as "
                "specs/resnet50_dilated.arch does for output stride 8",
            )
        return run.model_copy(update={"repeats": repeats, "args": args})

    def _derived(self, net: S.Network) -> S.Network | None:
        """`network resnext50_32x4d = resnet50(groups=32)`: the base with new parameter defaults."""
        self._name_ok(net.name, "network", net.span)
        call = net.base
        base = self.networks.get(call.callee)
        if base is None:
            self.diags.error(
                call.callee_span,
                codes.UNKNOWN_NETWORK,
                f"unknown network `{call.callee}`"
                + did_you_mean(call.callee, self.networks)
                + ("" if self.networks else "; import the file that defines it"),
            )
            return None
        params = [(p.name, False) for p in base.params]
        args = self._bind(call.args, params, f"network `{base.name}`", call.callee_span, set())
        given = {a.name: a for a in args}
        new_params = tuple(
            p.model_copy(update={"default": given[p.name].value}) if p.name in given else p
            for p in base.params
        )
        # its own section (an empty one too) replaces the base's
        metadata = base.metadata if net.metadata is None else net.metadata
        return base.model_copy(
            update={
                "name": net.name,
                "params": new_params,
                "metadata": metadata,
                "span": net.span,
                "base": call,
                "source_file": net.source_file,
            }
        )
