"""Which files `resgen sweep` may replace: its own CSV (recognised by its header, see
report.is_sweep_csv) and plots (an SVG with resgen's comment mark, a PNG with resgen's tEXt
chunk); anything else only with --force. The rules, the marks and the atomic write are
resgen.output's, as for every command that writes; this module adds the CSV kind."""

from __future__ import annotations

from pathlib import Path

from resgen.output import KINDS, SVG_MARK, Kind, target_problem, write_atomic

PLOT_SUFFIXES = (".png", ".svg")


def _is_sweep_csv(head: bytes, _tail: bytes) -> bool:
    from resgen.sweep.report import is_sweep_csv

    return is_sweep_csv(head)


SWEEP_CSV = Kind("csv", _is_sweep_csv)


def mark_svg(text: str) -> str:
    """The SVG with resgen's mark as the line after its XML declaration."""
    first, sep, rest = text.partition("\n")
    if first.startswith("<?xml"):
        return f"{first}\n{SVG_MARK}\n{rest}"
    return f"{SVG_MARK}\n{text}"


def _kind(path: Path, kind: str) -> Kind:
    return SWEEP_CSV if kind == "csv" else KINDS[path.suffix.lower().lstrip(".")]


def suffix_problem(path: Path, kind: str) -> str | None:
    if kind == "plot" and path.suffix.lower() not in PLOT_SUFFIXES:
        return f"--plot {path}: the file name ends in .png or .svg"
    if not path.parent.exists() and str(path.parent):
        return f"cannot write {path}: the directory {path.parent} does not exist"
    return None


def target_problem_for(path: Path, kind: str, force: bool) -> str | None:
    """Why the sweep must not write `path` (`kind`: "csv" or "plot"), or None."""
    return suffix_problem(path, kind) or target_problem(path, _kind(path, kind), force)


def write(path: Path, data: bytes | str, kind: str, force: bool) -> None:
    """Write atomically under resgen.output's rules (raises its OutputError, a UsageError)."""
    write_atomic(path, data, kind=_kind(path, kind), force=force)
