"""`resgen summary`: the analysed network as a table a person reads (like torchinfo) or as JSON.

Rows nest as stage > block instance > layer (blocks used as layers nest further). By default the
table shows one row per stage; `--depth N` expands N levels. Totals follow the table: parameters,
buffers, MACs (with their convention named), input, output, output stride, receptive field and
the input sizes the network accepts. For a spec with errors, counts that an error leaves unknown
or computed from made-up sizes say "(partial: the spec has errors)" (JSON: params_exact,
macs_exact). No torch import on this path.
"""

from __future__ import annotations

from dataclasses import dataclass

from resgen.shapes import MAC_CONVENTION, Analysis, LayerInfo
from resgen.text import count_text, pair_text, shape_text

DEFAULT_DEPTH = 1


@dataclass
class Row:
    name: str
    op: str
    out: tuple | None
    params: int
    macs: int
    depth: int  # 1 = stage, 2 = block instance or stem/head layer, 3 = layer in a block, ...


# ---------------------------------------------------------------------------------------------
# Rows


def rows(analysis: Analysis, depth: int = DEFAULT_DEPTH) -> list[Row]:
    """The table's rows down to `depth`, each group's counts summed over its layers."""
    stage_info = {s.name: s for s in analysis.stages}
    result: list[Row] = []
    groups: dict[str, Row] = {}
    for layer in analysis.layers:
        chain = [layer.stage, *_block_chain(layer, analysis.block_types)]
        for level, key in enumerate(chain, start=1):
            row = groups.get(key)
            if row is None:
                row = groups[key] = Row(
                    key, _group_op(key, level, stage_info, analysis), None, 0, 0, level
                )
                result.append(row)
            row.params += layer.params
            row.macs += layer.macs
            row.out = layer.out
        if len(chain) + 1 <= depth:
            result.append(
                Row(
                    layer.name,
                    describe_op(layer, analysis),
                    layer.out,
                    layer.params,
                    layer.macs,
                    len(chain) + 1,
                )
            )
    for name, info in stage_info.items():
        if name in groups:
            groups[name].out = info.out_shape
    return [r for r in result if r.depth <= depth]


def _block_chain(layer: LayerInfo, block_types: dict[str, str]) -> list[str]:
    """The block instances enclosing a layer, outermost first (`layer1.0`, `layer1.0.se`)."""
    if layer.block is None:
        return []
    parts = layer.block.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in block_types]


def _group_op(key: str, level: int, stages: dict, analysis: Analysis) -> str:
    if level == 1:
        info = stages.get(key)
        if info is not None and info.block:
            return f"{info.repeats} x {info.block}"
        count = sum(1 for layer in analysis.layers if layer.stage == key)
        return f"{count} layer{'s' * (count != 1)}"
    return analysis.block_types.get(key, "")


def describe_op(layer: LayerInfo, analysis: Analysis) -> str:
    """`conv 3x3 s2 p1`: the op's own label (resgen.ops), `(again)` for a reused module."""
    return analysis.nodes[layer.name].label(times="x")


# ---------------------------------------------------------------------------------------------
# Text


def human(n: int) -> str:
    """One rule for every row: 1234567 -> 1.23M, 1152 -> 1.15K; plain digits below 1000."""
    return count_text(n)


def render(analysis: Analysis, depth: int = DEFAULT_DEPTH) -> str:
    table = [("Layer", "Op", "Output shape", "Params", "MACs")]
    for row in rows(analysis, depth):
        indent = "  " * (row.depth - 1)
        table.append(
            (
                indent + row.name,
                row.op,
                shape_text(row.out),
                f"{row.params:,}",
                human(row.macs) if row.macs else "-",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    align = ("<", "<", "<", ">", ">")

    def line(cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True))

    rule = "=" * len(line(table[0]))
    out = [f"{analysis.network}", rule, line(table[0]), "-" * len(rule)]
    out += [line(r).rstrip() for r in table[1:]]
    out.append(rule)
    out += [f"{k + ':':<18}{v}" for k, v in totals(analysis)]
    out.append(rule)
    return "\n".join(out)


def totals(analysis: Analysis) -> list[tuple[str, str]]:
    last = next((s.name for s in reversed(analysis.stages) if s.name != "head"), "")
    partial = " (partial: the spec has errors)"
    items = [
        ("Params", f"{analysis.params:,}" + ("" if analysis.params_exact else partial)),
        (
            "Buffers",
            f"{analysis.buffers:,} (not trained: running statistics, counters, fixed filters)"
            + ("" if analysis.params_exact else partial),
        ),
        (
            "MACs",
            f"{analysis.macs / 1e9:.3f} G = {analysis.macs:,} ({MAC_CONVENTION})"
            + ("" if analysis.macs_exact else partial),
        ),
        ("Input", shape_text(analysis.input)),
        ("Output", shape_text(analysis.output)),
        ("Output stride", f"{pair_text(analysis.output_stride, '-')} (after {last})"),
        (
            "Receptive field",
            f"{pair_text(analysis.receptive_field, 'whole input')} (after {last})",
        ),
    ]
    per_stage = [
        f"{s.name} {pair_text(s.output_stride, '-')}/{pair_text(s.receptive_field, 'all')}"
        for s in analysis.stages
        if s.name != "head"
    ]
    items.append(("Stride/field", ", ".join(per_stage) + " (per stage)"))
    sizes = analysis.input_sizes
    if sizes is not None:
        items.append(
            (
                "Smallest input",
                "none found"
                if sizes.smallest is None
                else f"{sizes.smallest[0]}x{sizes.smallest[1]} (H x W)",
            )
        )
        for label, pair in (
            ("Accepted sizes", sizes.accepted),
            ("No rows dropped", sizes.no_dropped_rows),
            ("Evenly divided", sizes.exact),
        ):
            items.append((label, pair[0] if pair[0] == pair[1] else f"H: {pair[0]}; W: {pair[1]}"))
    return items


# ---------------------------------------------------------------------------------------------
# JSON


def to_json(analysis: Analysis) -> dict:
    sizes = analysis.input_sizes
    return {
        "network": analysis.network,
        "input": list(analysis.input),
        "output": list(analysis.output) if analysis.output is not None else None,
        "params": analysis.params,
        "buffers": analysis.buffers,
        "macs": analysis.macs,
        "params_exact": analysis.params_exact,  # false: the spec has errors, counts partial
        "macs_exact": analysis.macs_exact,
        "mac_convention": MAC_CONVENTION,
        "output_stride": list(analysis.output_stride) if analysis.output_stride else None,
        "receptive_field": (list(analysis.receptive_field) if analysis.receptive_field else None),
        "input_sizes": None
        if sizes is None
        else {
            "smallest": list(sizes.smallest) if sizes.smallest else None,
            "accepted": list(sizes.accepted),
            "no_dropped_rows": list(sizes.no_dropped_rows),
            "exact": list(sizes.exact),
        },
        "stages": [
            {
                "name": s.name,
                "block": s.block,
                "repeats": s.repeats,
                "in": _listed(s.in_shape),
                "out": _listed(s.out_shape),
                "params": s.params,
                "buffers": s.buffers,
                "macs": s.macs,
                "output_stride": _listed(s.output_stride),
                "receptive_field": _listed(s.receptive_field),
            }
            for s in analysis.stages
        ],
        "layers": [
            {
                "name": layer.name,
                "op": layer.op,
                "out": _listed(layer.out),
                "params": layer.params,
                "macs": layer.macs,
                "buffers": layer.buffers,
                "stage": layer.stage,
                "block": layer.block,
            }
            for layer in analysis.layers
        ],
        "diagnostics": [d.as_dict() for d in analysis.diagnostics],
    }


def _listed(value) -> list | None:
    return list(value) if value is not None else None


# ---------------------------------------------------------------------------------------------
