"""What a sweep shows and writes: the terminal table, CSV and JSON.

CSV has one row per record and a fixed header, which is also how resgen recognises a CSV it
wrote (a CSV has no room for a comment mark): `variant`, the params in the spec's order, then
CSV_TAIL. JSON is a list of `Record.as_json()` objects (schema: resgen/schemas/sweep.schema.json).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from resgen import expr as E
from resgen.text import count_text, shape_text

CSV_TAIL = (
    "input",
    "valid",
    "param_count",
    "macs",
    "memory",
    "output_stride",
    "error_code",
    "error_message",
    "error_file",
    "error_line",
    "error_column",
)


def _value_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return f"({value[0]}, {value[1]})"
    return E.show(value)


def _stride_text(value) -> str:
    if value is None:
        return ""
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value)


def to_csv(records: Sequence, param_names: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["variant", *param_names, *CSV_TAIL])
    for r in records:
        e = r.error or {}
        writer.writerow(
            [
                r.index,
                *(_value_text(r.params.get(n)) for n in param_names),
                shape_text(r.input),
                "true" if r.valid else "false",
                "" if r.param_count is None else r.param_count,
                "" if r.macs is None else r.macs,
                "" if r.memory is None else r.memory,
                _stride_text(r.output_stride),
                e.get("code", ""),
                e.get("message", ""),
                e.get("file", ""),
                e.get("line", ""),
                e.get("column", ""),
            ]
        )
    return out.getvalue()


def is_sweep_csv(head: bytes) -> bool:
    """Whether a file starts with the header resgen's sweep CSV has."""
    first = head.decode("utf-8", "replace").split("\n", 1)[0].rstrip("\r")
    cells = first.split(",")
    return cells[:1] == ["variant"] and tuple(cells[-len(CSV_TAIL) :]) == CSV_TAIL


def to_json(records: Sequence) -> str:
    return json.dumps([r.as_json() for r in records], indent=2)


def table(records: Sequence, param_names: Sequence[str]) -> str:
    """A fixed-width table: variant, swept params, input, validity, counts, error."""
    head = ["#", *param_names, "input", "valid", "params", "MACs", "OS", "error"]
    rows = []
    for r in records:
        e = r.error
        where = f"{e['code']} at {e['file']}:{e['line']}:{e['column']}" if e else ""
        rows.append(
            [
                str(r.index),
                *(_value_text(r.params.get(n)) for n in param_names),
                shape_text(r.input),
                "ok" if r.valid else "error",
                count_text(r.param_count) if r.param_count is not None else "-",
                count_text(r.macs) if r.macs is not None else "-",
                _stride_text(r.output_stride) or "-",
                where,
            ]
        )
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    numeric = {0, *range(len(param_names) + 3, len(head) - 1)}

    def line(cells) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def summary_line(checked: int, shown: Sequence, where: bool) -> str:
    """`120 checked, 31 match --where: 29 valid, 2 with errors`."""
    valid = sum(r.valid for r in shown)
    text = f"{checked} checked"
    if where:
        text += f", {len(shown)} match --where"
    return text + f": {valid} valid, {len(shown) - valid} with errors"
