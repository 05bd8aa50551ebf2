"""Python code values and their layout, and the Jinja environment that renders templates.

Codegen turns every value into code here first (validated identifiers, repr() literals, calls
built from parts); templates only loop over the results and interpolate them. Long calls are
laid out the way `ruff format` (black style) would, so the emitted module is format-clean:
one line if it fits, else the arguments on one indented line, else one argument per line.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

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


def assign(value: Code, target: str, indent: int) -> str:
    """`target = value` laid out at `indent`; the first line's indentation is the template's."""
    lines = atom(value).lay(indent, f"{target} = ")
    return "\n".join([lines[0][indent:], *lines[1:]])


def expression(value: Code, indent: int) -> str:
    lines = atom(value).lay(indent)
    return "\n".join([lines[0][indent:], *lines[1:]])


# ---------------------------------------------------------------------------------------------
# Templates


def environment(template_dir: str | Path | None = None) -> jinja2.Environment:
    """The shipped templates (resgen.templates); with `template_dir`, a user's own files there
    replace the shipped ones of the same name and the rest are inherited."""
    loader: jinja2.BaseLoader = jinja2.FunctionLoader(_packaged_template)
    if template_dir is not None:
        loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(template_dir)), loader])
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["assign"] = assign
    env.filters["expression"] = expression
    return env


def _packaged_template(name: str) -> str | None:
    resource = resources.files("resgen.templates").joinpath(name)
    return resource.read_text(encoding="utf-8") if resource.is_file() else None
