"""Located diagnostics: the one place where errors and warnings are defined and printed.

Every stage reports problems as `Diagnostic`s that carry a `Span` into the .arch source. A stage
collects them in a `Diagnostics` list and raises `SpecError` when any is an error, so the command
line can print all of them, sorted by position, as `FILE:LINE:COL: error: MESSAGE` with the source
line and a caret underline (the miniwdl / clang format).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Span:
    """A source range. Lines and columns are 1-based; `end_column` is one past the last char."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    span: Span
    code: str  # a resgen.codes.Code: a stable kebab-case kind, e.g. "unknown-name"
    message: str
    severity: Severity = "error"
    layer: str | None = None  # dotted module path, when the problem belongs to a layer
    hint: str | None = None
    # Related places, printed after the error: e.g. the stage line that instantiated the block
    # whose definition (perhaps in a library) the error points at.
    notes: tuple[tuple[Span, str], ...] = ()
    # The graph node (resgen.graph) the problem was found at, when the shape engine found it:
    # the diagram draws the error on that node. `layer` may name the enclosing block instead.
    node: str | None = None

    def sort_key(self) -> tuple:
        return (self.span.file, self.span.line, self.span.column, self.code, self.message)

    def as_dict(self) -> dict:
        return {
            "file": self.span.file,
            "line": self.span.line,
            "column": self.span.column,
            "end_line": self.span.end_line,
            "end_column": self.span.end_column,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "layer": self.layer,
            "hint": self.hint,
            "notes": [
                {"file": span.file, "line": span.line, "column": span.column, "message": message}
                for span, message in self.notes
            ],
        }


class SpecError(Exception):
    """Raised by a stage when it found at least one error; carries every diagnostic it found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        first = self.diagnostics[0] if self.diagnostics else None
        super().__init__(f"{first.span}: {first.message}" if first else "spec error")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


@dataclass
class Diagnostics:
    """A collector: stages append to it and call `raise_if_errors()` at a point of no return."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, span: Span, code: str, message: str, **kw) -> None:
        self.items.append(Diagnostic(span, code, message, "error", **kw))

    def warning(self, span: Span, code: str, message: str, **kw) -> None:
        self.items.append(Diagnostic(span, code, message, "warning", **kw))

    def extend(self, other: Iterable[Diagnostic]) -> None:
        self.items.extend(other)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise SpecError(self.items)


class UsageError(Exception):
    """Not a spec problem: a missing file, a directory, an unreadable path, a broken plugin
    (exit code 2)."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean `x`?)' for the closest candidate, or '' when nothing is close."""
    pool = sorted(set(candidates))
    # Fuzzy matching is linear in the pool per call: skip it for huge (generated) scopes.
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6) if len(pool) <= 1000 else []
    if not close:
        lowered = {c.lower(): c for c in pool}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f" (did you mean `{close[0]}`?)" if close else ""


def _use_colour(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def format_diagnostic(
    diag: Diagnostic,
    source: str | None,
    colour: bool = False,
    sources: dict[str, str] | None = None,
) -> str:
    """`FILE:LINE:COL: error: MESSAGE`, then the source line with `^~~~` under the span; each
    note the same way (its file's text from `sources`)."""
    red, yellow, bold, cyan, reset = (
        ("\033[31m", "\033[33m", "\033[1m", "\033[36m", "\033[0m") if colour else ("",) * 5
    )
    sev_colour = red if diag.severity == "error" else yellow
    where = f"[{diag.layer}] " if diag.layer else ""
    lines = [
        f"{bold}{diag.span}:{reset} {sev_colour}{bold}{diag.severity}:{reset} "
        f"{where}{diag.message} [{diag.code}]"
    ]
    lines += _quote(diag.span, source, sev_colour, reset)
    if diag.hint:
        lines.append(f"      = {cyan}hint:{reset} {diag.hint}")
    for span, message in diag.notes:
        lines.append(f"{bold}{span}:{reset} {cyan}{bold}note:{reset} {message}")
        lines += _quote(span, (sources or {}).get(span.file), cyan, reset)
    return "\n".join(lines)


def _quote(span: Span, source: str | None, colour: str, reset: str) -> list[str]:
    """The span's source line and a `^~~~` underline, or nothing without the source."""
    if source is None:
        return []
    # Lines as the parser counts them: \n, \r\n and a lone \r (resolve.line_ends made them all
    # \n before parsing; a source given some other way is split the same); \f, \u2028 are not.
    src_lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not 1 <= span.line <= len(src_lines):
        return []
    text = src_lines[span.line - 1].replace("\t", " ")
    if len(text) > 200:  # huge single-line inputs: show the neighbourhood only
        start = max(0, span.column - 80)
        text = text[start : start + 160]
        col = span.column - start
    else:
        col = span.column
    end = span.end_column if span.end_line == span.line else len(text) + 1
    width = max(1, min(end, len(text) + 1) - col)
    underline = f"{' ' * (col - 1)}{colour}^{'~' * (width - 1)}{reset}"
    return [f"{span.line:5d} | {text}", f"      | {underline}"]


def print_diagnostics(diags: Iterable[Diagnostic], sources: dict[str, str], stream=None) -> None:
    stream = stream or sys.stderr
    colour = _use_colour(stream)
    for d in sorted(diags, key=Diagnostic.sort_key):
        print(format_diagnostic(d, sources.get(d.span.file), colour, sources), file=stream)
