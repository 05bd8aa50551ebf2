"""Python code values and their layout, and the Jinja environment that renders templates.

Codegen turns every value into code here first (validated identifiers, repr() literals, calls
built from parts); templates only loop over the results and interpolate them. Long calls are
laid out the way `ruff format` (black style) would, so the emitted module is format-clean:
one line if it fits, else the arguments on one indented line, else one argument per line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import keyword
import math
import os
import re
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
import jinja2.filters
import jinja2.loaders
import jinja2.sandbox
import jinja2.utils

from resgen.diagnostics import UsageError

LINE_LENGTH = 100
INDENT = 4


class CodeError(ValueError):
    """A value that must not become code (a bad identifier, an unknown literal type)."""


def ident(name: str) -> str:
    """`name` if it is a plain Python identifier that is safe to emit, else CodeError."""
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or not name.isascii()
        or keyword.iskeyword(name)
        or name.startswith("__")
    ):
        raise CodeError(f"{name!r} cannot be used as a Python name")
    return name


def dotted(path: str) -> str:
    """`self.layer1` or `nn.Conv2d`: each part a validated identifier."""
    return ".".join(ident(part) for part in path.split("."))


def literal(value: object) -> str:
    """Python source for a literal. Numbers stay ints unless they are floats; no other types."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CodeError(f"{value!r} is not a finite number: no Python literal")
    if isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return repr(tuple(value))
    raise CodeError(f"no literal for {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------
# Expression values with a layout


class Code:
    """An expression. `str()` is its one-line form; `lay()` breaks it to fit the line length."""

    def lay(self, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
        return [" " * indent + prefix + str(self) + suffix]


@dataclass(frozen=True)
class Atom(Code):
    text: str

    def __str__(self) -> str:
        return self.text


def atom(text: str | Code) -> Code:
    return text if isinstance(text, Code) else Atom(text)


@dataclass(frozen=True)
class Keyword(Code):
    name: str
    value: Code

    def __str__(self) -> str:
        return f"{self.name}={self.value}"

    def lay(self, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
        return self.value.lay(indent, f"{prefix}{self.name}=", suffix)


@dataclass(frozen=True)
class Starred(Code):
    value: Code

    def __str__(self) -> str:
        return f"*{self.value}"

    def lay(self, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
        return self.value.lay(indent, prefix + "*", suffix)


@dataclass(frozen=True)
class Call(Code):
    """`func(args)`; with other brackets and no `func`, a list `[a, b]` or a tuple `(a, b)`."""

    func: str
    args: tuple[Code, ...] = ()
    brackets: str = "()"

    def __str__(self) -> str:
        open_, close = self.brackets
        return f"{self.func}{open_}{', '.join(map(str, self.args))}{close}"

    def lay(self, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
        flat = super().lay(indent, prefix, suffix)
        if _fits(flat[0]) or not self.args:
            return flat
        pad = " " * indent
        open_, close = self.brackets
        head, tail = f"{pad}{prefix}{self.func}{open_}", f"{pad}{close}{suffix}"
        inner = " " * (indent + INDENT) + ", ".join(map(str, self.args))
        if _fits(inner):
            return [head, inner, tail]
        lines = [head]
        for arg in self.args:
            lines += arg.lay(indent + INDENT, "", ",")
        return lines + [tail]


@dataclass(frozen=True)
class Repeated(Code):
    """`[item for _ in range(count)]`: copies of a module built in a loop; with `var` and
    `start`, `[item for var in range(start, count)]`, the item using `var`."""

    item: Code
    count: str
    var: str = "_"
    start: str | None = None

    @property
    def loop(self) -> str:
        bounds = self.count if self.start is None else f"{self.start}, {self.count}"
        return f"for {self.var} in range({bounds})"

    def __str__(self) -> str:
        return f"[{self.item} {self.loop}]"

    def lay(self, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
        flat = super().lay(indent, prefix, suffix)
        if _fits(flat[0]):
            return flat
        pad, inner = " " * indent, " " * (indent + INDENT)
        loop = self.loop
        body = f"{inner}{self.item} {loop}"
        if _fits(body):
            return [f"{pad}{prefix}[", body, f"{pad}]{suffix}"]
        return [f"{pad}{prefix}[", *self.item.lay(indent + INDENT), inner + loop, f"{pad}]{suffix}"]


def _fits(line: str) -> bool:
    return len(line) <= LINE_LENGTH


# ---------------------------------------------------------------------------------------------
# Templates: what a template may do
#
# Every template, the shipped ones included, renders in jinja2's ImmutableSandboxedEnvironment:
# one code path, and the shipped templates (the starting point of anyone's own) are proven to
# need nothing the sandbox refuses. A template receives plain data only: dicts, lists, strings,
# numbers, booleans and None (`plain` turns the view into that); a piece of code is a string
# (`CodeText`) that the `assign` and `expression` filters lay out. It may loop, test and
# interpolate; it may read other templates of its own directory (regular `.jinja` files, real
# path inside the directory) and resgen's shipped ones by their plain names. Nothing else: no
# attribute that starts with `_`, no method that modifies a list or dict, no file, no import.
# A render is bounded in time (TEMPLATE_SECONDS), in output (TEMPLATE_OUTPUT_CHARS), and in the
# size of every number, string and list it computes, so a hostile template cannot hang resgen
# or exhaust its memory. The text it produces then goes through the AST guard (resgen.guard).

TEMPLATE_SECONDS = 10.0
TEMPLATE_OUTPUT_CHARS = 16 * 1024 * 1024
TEMPLATE_FILE_BYTES = 1024 * 1024
_MAX_INT_BITS = 64  # a number a template computes: no 10 ** 10 ** 10


class TemplateError(UsageError):
    """A template that cannot be loaded or rendered, or that broke a sandbox rule (exit code 2);
    the message starts with the template's name and line."""


class CodeText(str):
    """A piece of generated code as a template sees it: its one-line text. The layout tree
    (`Code`) rides along in a private attribute, which the sandbox never lets a template read;
    the `assign` and `expression` filters use it to break long lines."""

    _code: Code


def _as_code(value: object) -> Code:
    return getattr(value, "_code", None) or atom(str(value))


def plain(value: object) -> object:
    """`value` as plain data for a template: dataclasses become dicts (their fields and public
    properties), tuples and lists become lists, Code becomes CodeText."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Code):
        return _code_text(value)
    if isinstance(value, str):
        return value if type(value) in (str, CodeText) else str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name, member in inspect.getmembers(type(value)):
            if isinstance(member, property) and not name.startswith("_"):
                data[name] = plain(getattr(value, name))
        return data
    raise CodeError(f"no template value for {type(value).__name__}")


def _code_text(code: Code) -> CodeText:
    text = CodeText(str(code))
    text._code = code
    return text


def assign(value: object, target: str, indent: int) -> str:
    """`target = value` laid out at `indent`; the first line's indentation is the template's."""
    lines = _as_code(value).lay(_small(indent), f"{target} = ")
    return "\n".join([lines[0][indent:], *lines[1:]])


def expression(value: object, indent: int) -> str:
    lines = _as_code(value).lay(_small(indent))
    return "\n".join([lines[0][indent:], *lines[1:]])


def _small(indent: object) -> int:
    if not isinstance(indent, int) or not 0 <= indent <= 200:
        raise jinja2.sandbox.SecurityError(f"an indent of {indent!r} columns")
    return indent


class _Budget:
    """The time and size bounds of one render, checked by every operation a template can
    repeat: calls (methods, macros, filters), arithmetic and each chunk of output."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + TEMPLATE_SECONDS
        self.output = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _TemplateTimeout(f"rendering took longer than {TEMPLATE_SECONDS:g} s")

    def value(self, value: object) -> object:
        """Refuse a number, string or container beyond the bounds."""
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > _MAX_INT_BITS:
                raise jinja2.sandbox.SecurityError(f"a number beyond 2**{_MAX_INT_BITS}")
        elif isinstance(value, str | list | tuple | dict) and len(value) > TEMPLATE_OUTPUT_CHARS:
            raise jinja2.sandbox.SecurityError(
                f"a value of {len(value):,} items, over the output bound"
            )
        return value

    def arguments(self, args, kwargs) -> None:
        self.tick()
        for v in (*args, *kwargs.values()):
            self.value(v)
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > TEMPLATE_OUTPUT_CHARS:
                raise jinja2.sandbox.SecurityError(f"an argument of {v:,}, over the output bound")


class _TemplateTimeout(Exception):
    pass


def _size(value: object) -> int:
    """What a product's size grows with: a sequence's length, or a count (an int repeats a
    sequence that many times; two ints multiply their digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    return len(value) if isinstance(value, str | list | tuple) else 1


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with resgen's bounds on time, numbers and sizes."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.budget = _Budget()

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's signature)
        __self.budget.arguments(args, kwargs)
        return __self.budget.value(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator: str, left, right):
        self.budget.tick()
        if operator in ("*", "**", "%"):
            numbers = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
            if operator == "**" and len(numbers) == 2:
                if left.bit_length() * max(right, 0) > _MAX_INT_BITS:
                    raise jinja2.sandbox.SecurityError("a power beyond 2**64")
            elif operator == "*" and len(numbers) == 1:  # "x" * n, [..] * n
                if _size(left) * _size(right) > TEMPLATE_OUTPUT_CHARS:
                    raise jinja2.sandbox.SecurityError("a product over the output bound")
            elif operator == "%":
                _format_widths(left)
                self.budget.arguments(right if isinstance(right, tuple) else (right,), {})
        return self.budget.value(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _format_widths(value.__self__)
        return wrapped


def _format_widths(text: object) -> None:
    """A format string whose field widths would build a string over the output bound
    (`"%10000000000d"`, `"{:>10000000000}"`)."""
    if isinstance(text, str):
        for digits in re.findall(r"\d+", text):
            if len(digits) > 9 or int(digits) > TEMPLATE_OUTPUT_CHARS:
                raise jinja2.sandbox.SecurityError(
                    f"a format width of {digits}, over the output bound"
                )


def _bounded_filter(budget_of, function):
    """A filter that checks the render's budget before it runs and the size of what it made."""

    @functools.wraps(function)
    def bounded(*args, **kwargs):
        env = budget_of()
        env.budget.arguments(args[1:], kwargs)
        if function is _FORMAT_FILTER and args:
            _format_widths(args[0])
        return env.budget.value(function(*args, **kwargs))

    return bounded


_FORMAT_FILTER = jinja2.filters.FILTERS["format"]


class _TemplateDirLoader(jinja2.BaseLoader):
    """A user's template directory: regular `.jinja` files whose real path lies inside it, read
    without blocking (a FIFO is refused, not waited on) and at most TEMPLATE_FILE_BYTES each."""

    def __init__(self, directory: Path):
        self.directory = Path(os.path.realpath(directory))

    def get_source(self, environment, template):
        pieces = jinja2.loaders.split_template_path(template)  # refuses `..`
        path = Path(os.path.realpath(self.directory.joinpath(*pieces)))
        if not path.name.endswith(".jinja") or self.directory not in path.parents:
            raise jinja2.TemplateNotFound(template)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise jinja2.TemplateNotFound(template) from None
        except OSError as err:
            raise TemplateError(f"{path}: cannot read: {err.strerror or err}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise TemplateError(f"{path}: not a regular file")
            data = os.read(fd, TEMPLATE_FILE_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > TEMPLATE_FILE_BYTES:
            raise TemplateError(f"{path}: over the {TEMPLATE_FILE_BYTES:,}-byte template limit")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TemplateError(f"{path}: not UTF-8 text (byte {err.start})") from None
        return text, str(path), lambda: False  # read once per render: never stale


def _packaged_template(name: str) -> str | None:
    """A shipped template by its plain file name (no folders: `../cli.py` is not one)."""
    if name not in _shipped():
        return None
    return resources.files("resgen.templates").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _shipped() -> frozenset[str]:
    return frozenset(
        f.name for f in resources.files("resgen.templates").iterdir() if f.name.endswith(".jinja")
    )


def template_dir(directory: str | os.PathLike | None) -> Path | None:
    """A `--templates DIR` checked before any work: a readable directory. One without a single
    `.jinja` file overrides nothing, which is said as a warning on stderr. Raises TemplateError."""
    if directory is None:
        return None
    path = Path(directory)
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        raise TemplateError(f"--templates {path}: no such directory") from None
    except NotADirectoryError:
        raise TemplateError(f"--templates {path}: not a directory") from None
    except OSError as err:
        raise TemplateError(f"--templates {path}: {(err.strerror or str(err)).lower()}") from None
    if not any(name.endswith(".jinja") for name in names):
        print(
            f"resgen: warning: --templates {path} has no .jinja files; every template is "
            "resgen's own",
            file=sys.stderr,
        )
    return path


def environment(directory: str | os.PathLike | None = None) -> jinja2.Environment:
    """The sandboxed environment: the shipped templates (resgen.templates); with `directory`,
    a user's own files there replace the shipped ones of the same name and the rest are
    inherited."""
    loader: jinja2.BaseLoader = jinja2.FunctionLoader(_packaged_template)
    if directory is not None:
        loader = jinja2.ChoiceLoader([_TemplateDirLoader(Path(directory)), loader])
    env = _Sandbox(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        cache_size=0 if directory is not None else 50,
    )
    env.globals = {"range": env.globals["range"], "dict": dict, "namespace": jinja2.utils.Namespace}
    env.filters["assign"] = assign
    env.filters["expression"] = expression
    env.filters = {
        name: _bounded_filter(lambda: env, function) for name, function in env.filters.items()
    }
    return env


def render(template: str, view: object, directory: str | os.PathLike | None = None) -> str:
    """Render `template` with `view` (as plain data, under the name `module`) within the
    bounds above. Raises TemplateError naming the template and line of a problem."""
    env = environment(directory)
    data = plain(view)
    chunks: list[str] = []
    try:
        with _alarm(TEMPLATE_SECONDS):
            for chunk in env.get_template(template).generate(module=data):
                env.budget.output += len(chunk)
                if env.budget.output > TEMPLATE_OUTPUT_CHARS:
                    raise jinja2.sandbox.SecurityError(
                        f"the output is over {TEMPLATE_OUTPUT_CHARS:,} characters"
                    )
                env.budget.tick()
                chunks.append(chunk)
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"{err.filename or err.name}:{err.lineno}: {err.message}") from None
    except jinja2.TemplateNotFound as err:
        raise TemplateError(_where(f"template {err.name} not found")) from None
    except RecursionError:
        raise TemplateError(_where("the templates recurse without end")) from None
    except (jinja2.TemplateError, _TemplateTimeout) as err:
        raise TemplateError(_where(str(err))) from None
    except CodeError:
        raise
    except Exception as err:  # a template's own mistake: 1 + "a", a missing key, ...
        raise TemplateError(_where(f"{type(err).__name__}: {err}")) from None
    return "".join(chunks)


def _where(message: str) -> str:
    """`FILE:LINE: message` for the innermost template frame of the exception being handled."""
    tb = sys.exc_info()[2]
    where = None
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".jinja") or name.startswith("<template>"):
            where = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{where}: {message}" if where else message


@contextlib.contextmanager
def _alarm(seconds: float):
    """A hard stop for a render that loops without calling anything (only possible on the main
    thread, where signals arrive; elsewhere the budget's checks alone bound it)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "setitimer"
    ):
        yield
        return

    def expire(_signum, _frame):
        raise _TemplateTimeout(f"rendering took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if old_delay:  # someone else's timer (a test harness) keeps running
            signal.setitimer(signal.ITIMER_REAL, old_delay, old_interval)
