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
from resgen.text import bytes_text, count_text, pair_text, shape_text

DEFAULT_DEPTH = 1


@dataclass
class Row:
    name: str
    op: str
    out: tuple | None
    params: int
    macs: int
    depth: int  # 1 = stage, 2 = block instance or stem/head layer, 3 = layer in a block, ...
    memory: int = 0  # bytes: saved for backward (summed), or the inference peak (the largest)


# ---------------------------------------------------------------------------------------------
# Rows


def rows(analysis: Analysis, depth: int = DEFAULT_DEPTH, memory=None, train=False) -> list[Row]:
    """The table's rows down to `depth`, each group's counts summed over its layers. With a
    `memory` estimate (resgen.memory) each row also has the activations its layers save for
    backward (`train`) or the inference peak while they run."""
    table = _rows(analysis, depth)
    if memory is None:
        return table
    batch = memory.settings.batch
    per_stage = (
        {s.name: s.activations_saved_bytes for s in memory.stages} if train else memory.stage_peaks
    )
    for row in table:
        if row.depth == 1 and row.name in per_stage:  # the stem's counts the input batch
            row.memory = per_stage[row.name]
    members: dict[str, list[Row]] = {}
    for layer in analysis.layers:
        chain = [layer.stage, *_block_chain(layer, analysis.block_types), layer.name]
        share = (memory.saved if train else memory.live).get(layer.name)
        amount = share.at(batch) if share is not None else 0
        for key in chain[1:]:
            members.setdefault(key, []).append(amount)
    for row in table:
        if row.depth > 1 and row.name in members:
            amounts = members[row.name]
            row.memory = sum(amounts) if train else max(amounts)
    return table


def _rows(analysis: Analysis, depth: int) -> list[Row]:
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
            return info.text()
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


def render(
    analysis: Analysis,
    depth: int = DEFAULT_DEPTH,
    memory=None,
    budget: int | None = None,
    train: bool = False,
) -> str:
    """The table and totals; with a `memory` estimate a column of activation memory (saved for
    backward when `train`, else the inference peak) and a memory section (with the largest
    batch for `budget` bytes)."""
    header = ("Layer", "Op", "Output shape", "Params", "MACs")
    if memory is not None:
        header += ("Saved" if train else "Peak",)
    table = [header]
    for row in rows(analysis, depth, memory, train):
        indent = "  " * (row.depth - 1)
        cells = (
            indent + row.name,
            row.op,
            shape_text(row.out),
            f"{row.params:,}",
            human(row.macs) if row.macs else "-",
        )
        if memory is not None:
            cells += (bytes_text(row.memory),)
        table.append(cells)
    columns = len(header)
    widths = [max(len(r[i]) for r in table) for i in range(columns)]
    align = ("<", "<", "<", ">", ">", ">")[:columns]

    def line(cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True))

    rule = "=" * len(line(table[0]))
    out = [f"{analysis.network}", rule, line(table[0]), "-" * len(rule)]
    out += [line(r).rstrip() for r in table[1:]]
    out.append(rule)
    out += [f"{k + ':':<18}{v}" for k, v in totals(analysis)]
    out.append(rule)
    if memory is not None:
        out.append(memory_heading(memory))
        out += [f"{k + ':':<20}{v}" for k, v in memory_totals(memory, budget, train)]
        out.append(rule)
    return "\n".join(out)


def memory_heading(memory) -> str:
    from resgen.memory import describe

    return (
        f"Memory at batch {memory.settings.batch}, {describe(memory.settings)} "
        "(1 KiB = 1024 bytes; README, Memory)"
    )


def memory_totals(memory, budget: int | None = None, train: bool = False) -> list[tuple]:
    """The memory section's lines: always parameters, buffers and the inference peak; with
    `train` the training step; with `budget` the largest batch that fits."""
    from resgen.memory import OPTIMIZER_NAMES, TERM_TEXT

    settings = memory.settings
    batch = settings.batch
    param_bytes = 4 if settings.amp or settings.dtype == "float32" else 2
    items = [
        (
            "Parameters",
            f"{bytes_text(memory.parameters_bytes)} "
            f"({memory.parameters_bytes // param_bytes:,} x {param_bytes} bytes)",
        ),
        ("Buffers", bytes_text(memory.buffers_bytes)),
        (
            "Inference peak",
            f"{bytes_text(memory.inference_peak_bytes)} (eval, no grad; input batch included)",
        ),
    ]
    if train:
        optimizer = OPTIMIZER_NAMES[settings.optimizer]
        state = {
            "sgd": "no state",
            "momentum": "momentum_buffer",
            "adam": f"exp_avg, exp_avg_sq, {memory.parameter_tensors} step tensors",
            "adamw": f"exp_avg, exp_avg_sq, {memory.parameter_tensors} step tensors",
        }[settings.optimizer]
        peak = memory.peak(batch)
        where = {
            "forward": f"in the forward pass, at {peak.node}",
            "backward": f"in the backward pass, at {peak.node}",
        }.get(peak.phase, "in the optimizer step")
        term, share = memory.dominant(batch)
        items += [
            ("Gradients", bytes_text(memory.gradients_bytes)),
            ("Optimizer state", f"{bytes_text(memory.optimizer_bytes)} ({optimizer}: {state})"),
            (
                "Saved activations",
                f"{bytes_text(memory.activations_saved_bytes)} (kept for backward)",
            ),
            (
                "Training peak",
                f"{bytes_text(memory.training_peak_bytes)} (estimate, {where}; "
                f"{TERM_TEXT[term]} {share:.0%})",
            ),
        ]
    if budget is not None:
        fits = memory.max_batch(budget)
        if fits is None:
            term, share = memory.dominant(1)
            peak = memory.training_peak(1)
            answer = f"none: batch 1 needs {peak:,} bytes ({TERM_TEXT[term]} {share:.0%})"
        else:
            term, share = memory.dominant(fits)
            peak = memory.training_peak(fits)
            answer = f"{fits} (training peak {peak:,} bytes; {TERM_TEXT[term]} {share:.0%})"
        items.append(("Budget", f"{budget:,} bytes ({bytes_text(budget, 2)})"))
        items.append(("Largest batch", answer))
    return items


def _tap(tap) -> str:
    reduction = tap.reduction if isinstance(tap.reduction, tuple) else (tap.reduction,) * 2
    return (
        f"{shape_text(tap.shape)} /{pair_text(reduction, '-')} "
        f"rf {pair_text(tap.receptive_field, 'all')}"
    )


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
    if analysis.features:
        taps = [
            f"{i} {t.name}" + (f" ({t.module})" if t.module != t.name else "") + f" {_tap(t)}"
            for i, t in enumerate(analysis.features)
        ]
        items.append(("Features", "; ".join(taps) + " (index name, shape /reduction, field)"))
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
            text = pair[0] if pair[0] == pair[1] else f"H: {pair[0]}; W: {pair[1]}"
            if sizes.coupled and label == "Accepted sizes":  # a flattened size is fixed
                text += " (each axis with the other as analysed)"
            items.append((label, text))
    return items


# ---------------------------------------------------------------------------------------------
# JSON


def to_json(analysis: Analysis, memory=None, budget: int | None = None) -> dict:
    """The summary as data. `memory` (resgen.memory.Memory, from --batch or --budget) adds the
    `memory` object (null otherwise) and each stage's share under the stage's `memory`."""
    sizes = analysis.input_sizes
    stage_memory = {s.name: s.as_dict() for s in memory.stages} if memory is not None else {}
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
            "coupled": sizes.coupled,  # each axis described with the other as analysed
        },
        "stages": [
            {
                "name": s.name,
                "block": s.block,
                "repeats": s.repeats,
                # (count, block type) per run: `1 x A + 1 x B` is [[1, "A"], [1, "B"]]
                "runs": [list(run) for run in s.runs],
                "in": _listed(s.in_shape),
                "out": _listed(s.out_shape),
                "params": s.params,
                "buffers": s.buffers,
                "macs": s.macs,
                "output_stride": _listed(s.output_stride),
                "receptive_field": _listed(s.receptive_field),
                "memory": stage_memory.get(s.name),
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
        # the feature maps (resgen.features), in feature_info's order: out_indices index it
        "features": [tap.as_dict() for tap in analysis.features],
        "memory": memory.as_dict(budget) if memory is not None else None,
        "diagnostics": [d.as_dict() for d in analysis.diagnostics],
    }


def failed_json(diagnostics) -> dict:
    """`summary --json` for a spec that could not be analysed at all (it does not parse or
    resolve, or defines no network): every member of to_json's object, null, and the
    diagnostics (resgen/schemas/summary.schema.json)."""
    return {
        **dict.fromkeys(SUMMARY_MEMBERS),
        "diagnostics": [d.as_dict() for d in diagnostics],
    }


SUMMARY_MEMBERS = (
    "network",
    "input",
    "output",
    "params",
    "buffers",
    "macs",
    "params_exact",
    "macs_exact",
    "mac_convention",
    "output_stride",
    "receptive_field",
    "input_sizes",
    "stages",
    "layers",
    "features",
    "memory",
)


def _listed(value) -> list | None:
    return list(value) if value is not None else None


# ---------------------------------------------------------------------------------------------
