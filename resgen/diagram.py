"""Architecture diagrams: an `Analysis` drawn with Graphviz at three levels of detail.

    stages  input -> stem -> one node per stage -> head -> output (the default)
    blocks  one node per block, clustered by stage; a projection shortcut is a node of its own
    layers  exactly one drawn node per node of the shape graph (input, output and the merge
            nodes included), clustered by stage and block

Every edge carries the shape of the tensor it stands for; an edge leaving something that lowers
the resolution is bold and marked "/2" (or "/4", ...). The DOT text is built with the `graphviz`
package and is a pure function of the analysis (nodes and edges follow the graph's insertion
order), so the same spec always gives the same bytes. A spec with shape errors is drawn too: the
node an error belongs to and the edges into it are red and carry the message, so one sees where a
variant breaks. Shapes after an error are only carried on (the shape engine marks them `tainted`
and reports no errors from them): no "/n" marks or stage strides are derived from them, and the
title counts exactly the errors `resgen check` reports.

Images (svg, png, pdf) need Graphviz's `dot` executable; without it the .dot is written instead
and one line on stderr says how to install Graphviz.

`resgen diagram SPEC` writes `<spec file stem>.<detail>.<format>` in the current directory
(`resgen diagram specs/resnet50.arch` -> `resnet50.stages.svg`), or FILE with `-o FILE` (a
directory there means that default name inside it). Exit codes: 0 ok; 1 the spec has errors (the
diagram is still written when the spec could be analysed); 2 usage, or an image was asked for and
`dot` is not installed (then the .dot is written next to where the image would have gone).
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import graphviz

from resgen.graph import INPUT, MAIN, OUTPUT, SHORTCUT, SKIP, Node, runs_text
from resgen.ops.base import FAMILIES, MERGE, Bundle, Merge
from resgen.output import DOT_MARK, KINDS, SVG_MARK
from resgen.text import axis_text, bytes_text, count_text, pair_text, shape_text, size_text

DETAILS = ("stages", "blocks", "layers")
IMAGE_FORMATS = ("svg", "png", "pdf")
INSTALL_HINT = "install Graphviz to render images (Debian/Ubuntu: apt-get install graphviz)"
ERRORS_ID = "(errors)"  # not an identifier, so no layer can be called that
# In every DOT and SVG file resgen writes, so `resgen build` knows which files it may replace.
_SVG_MARK = SVG_MARK.encode()


FONT = "Helvetica"
INK, MUTED, RED = "#333333", "#777777", "#cc1f1a"
# (fill, border) of what is not a layer; a layer takes its op's family colours (resgen.ops).
COLOURS = {
    "io": ("#ffffff", INK),
    "stage": ("#e6eef7", "#4b77a9"),
    "block": ("#e6eef7", "#4b77a9"),
    "shortcut": ("#f3f6fa", "#4b77a9"),
    "stem": ("#f0f0f0", "#8a8a8a"),
    "error": ("#fde2df", RED),
}
SHORTCUT_BLUE, SKIP_GREY = "#4b77a9", "#8c8c8c"
FEATURE_ORANGE = "#c2571a"  # feature taps (resgen.features): the maps a backbone returns
ROLE_RANK = {MAIN: 0, SHORTCUT: 1, SKIP: 2}  # which edge speaks for a collapsed pair
WRAP = 46  # characters per label line


class GraphvizMissing(RuntimeError):
    """Graphviz's `dot` executable is not on PATH."""


class TooLarge(ValueError):
    """A diagram with more nodes than MAX_DRAWN_NODES: Graphviz's layout grows faster than the
    square of the nodes (an 800-block stage drawn layer by layer took five minutes, 2,000 blocks
    exhausted memory), and no one reads such a picture. The message names the details that fit."""


# Bounds on drawing: the nodes of one diagram (RESGEN_MAX_DIAGRAM_NODES overrides it), and the
# seconds `dot` may take to lay one out.
_NODES_ENV = os.environ.get("RESGEN_MAX_DIAGRAM_NODES", "")
MAX_DRAWN_NODES = int(_NODES_ENV) if _NODES_ENV.isdigit() else 1500  # as resgen.limits reads
DOT_SECONDS = 60.0


# ---------------------------------------------------------------------------------------------
# Text


def _clean(text: object) -> str:
    """Printable text: user names and messages must not break the DOT or the SVG's XML."""
    return "".join(c if c >= " " or c in "\n\t" else "\ufffd" for c in str(text))


def _esc(text: object) -> str:
    """Text for an HTML label. dot expands `\\N` (node name) and friends even there, after
    decoding entities, so a backslash is doubled rather than written as an entity."""
    return html.escape(_clean(text)).replace("\\", "\\\\")


def _plain(text: object) -> graphviz.quoting.NoHtml:
    """An escString attribute (tooltip): backslashes are Graphviz escapes, so double them."""
    return graphviz.nohtml(_clean(text).replace("\\", "\\\\").replace("\n", " "))


def _shape(shape) -> str:
    return shape_text(shape, "×")


def _hw(shape) -> tuple[int, int] | None:
    return (shape[1], shape[2]) if shape is not None and len(shape) == 3 else None


def _count(n) -> str:
    return count_text(n, "short")


def _chain(items: list[str], width: int = WRAP) -> list[str]:
    """Join steps with arrows, breaking lines between steps."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += " → " + item
        else:
            lines.append(("→ " if lines else "") + item)
    return lines


def _lines(*rows: tuple[str, str]) -> str:
    """An HTML label from (kind, text) rows; kind: title, text, small, error."""
    out = []
    for kind, text in rows:
        if kind == "title":
            out.append(f"<b>{_esc(text)}</b>")
        elif kind == "html":  # already escaped by the caller
            out.append(text)
        elif kind == "feature":
            out.append(f'<font point-size="9" color="{FEATURE_ORANGE}">{_esc(text)}</font>')
        elif kind == "small":
            out.append(f'<font point-size="8" color="{MUTED}">{_esc(text)}</font>')
        elif kind == "error":
            wrapped = textwrap.wrap(_clean(text), WRAP) or [""]
            out.append(
                f'<font point-size="9" color="{RED}">'
                + "<br/>".join(_esc(w) for w in wrapped)
                + "</font>"
            )
        else:
            out.append(_esc(text))
    return "<" + "<br/>".join(out) + ">"


# ---------------------------------------------------------------------------------------------
# Grouping: the three levels are one drawing over differently sized groups of graph nodes.


@dataclass
class _Group:
    id: str
    kind: str  # input, output, stem, head, stage, block, shortcut, layer
    clusters: tuple[str, ...]  # enclosing clusters, outermost first
    nodes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _place(node: Node, detail: str) -> tuple[str, str, tuple[str, ...]]:
    stage = node.stage
    if node.kind in (INPUT, OUTPUT):
        return node.id, node.kind, ()
    block = node.instance if stage not in (None, "stem", "head") else None
    if detail == "layers":
        return node.id, "layer", tuple(c for c in (stage, block) if c)
    if stage is None:
        return node.id, "layer", ()
    if stage in ("stem", "head"):
        return stage, stage, ()
    if detail == "stages" or block is None:
        return stage, "stage", ()
    if node.branch == SHORTCUT:
        module = node.module or node.id
        prefix = module.rsplit(".", 1)[0] if module.startswith(block + ".") else module
        return (prefix if prefix != block else block + ".shortcut"), "shortcut", (stage,)
    return block, "block", (stage,)


def _error_messages(analysis) -> tuple[dict[str, list[str]], list[str]]:
    """Error text per graph node, and the errors that belong to no node.

    The shape engine's first error at a node is drawn on it; the diagnostic it reported there
    (which names the node) adds the source location. Other diagnostics go to the node they name,
    or to the layer they name, or, naming none in the graph, are drawn apart."""
    per_node = {n: [_clean(r.error)] for n, r in analysis.shapes.items() if r.error}
    loose: list[str] = []
    for diag in analysis.errors:
        text = f"{diag.message} ({Path(diag.span.file).name}:{diag.span.line})"
        node = diag.node if diag.node in analysis.nodes else None
        if node is None and diag.layer in analysis.nodes:
            node = diag.layer
        if node is None:
            loose.append(text)
            continue
        messages = per_node.setdefault(node, [])
        plain = _clean(diag.message)
        if plain in messages:
            messages[messages.index(plain)] = text
        else:
            messages.append(text)
    return per_node, loose


# ---------------------------------------------------------------------------------------------
# The drawing


def digraph(
    spec, analysis, detail: str = "stages", rankdir: str = "TB", memory=None, train=False
) -> graphviz.Digraph:
    """The diagram of an analysed spec as a `graphviz.Digraph`. With a `memory` estimate
    (resgen.memory) the stem, stage and head nodes show their activation memory: what they save
    for backward (`train`) or their inference peak."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, not {detail!r}")
    graph = analysis.graph
    node_errors, loose_errors = _error_messages(analysis)

    _check_size(analysis, detail)
    groups: dict[str, _Group] = {}
    group_of: dict[str, str] = {}
    for node_id, node in analysis.nodes.items():
        gid, kind, clusters = _place(node, detail)
        group = groups.setdefault(gid, _Group(gid, kind, clusters))
        group.nodes.append(node_id)
        group.errors.extend(node_errors.get(node_id, ()))
        group_of[node_id] = gid

    # Collapse graph edges onto groups; the first pair wins its place, the main role its style.
    edges: dict[tuple[str, str], tuple[str, str, int | None]] = {}
    failing = {
        (group_of[u], group_of[v]) for u, v in _failing_branches(analysis, graph, node_errors)
    }
    for u, v, d in graph.edges(data=True):
        key = (group_of[u], group_of[v])
        if key[0] == key[1]:
            continue
        role = d.get("role") or MAIN
        if key not in edges or ROLE_RANK.get(role, 0) < ROLE_RANK.get(edges[key][0], 0):
            edges[key] = (role, u, d.get("item"))

    name = spec.network.name if getattr(spec, "network", None) else "network"
    errors = len(analysis.errors)  # what `resgen check` reports, not per-instance repeats
    dot = graphviz.Digraph(name=name)
    dot.attr(
        "graph",
        rankdir=rankdir,
        fontname=FONT,
        fontsize="11",
        fontcolor=INK,
        labelloc="t",
        label=_label(name, analysis, errors, detail, memory, train),
        bgcolor="white",
        nodesep="0.3",
        ranksep="0.32",
        pad="0.25",
        newrank="true",
    )
    dot.attr(
        "node",
        fontname=FONT,
        fontsize="10",
        fontcolor=INK,
        shape="box",
        style="rounded,filled",
        penwidth="1",
        margin="0.14,0.06",
    )
    dot.attr(
        "edge",
        fontname=FONT,
        fontsize="8",
        fontcolor="#555555",
        color="#555555",
        arrowsize="0.6",
    )

    stage_info = {s.name: s for s in analysis.stages}
    activations = _activations(memory, train)
    # Feature taps are marked on the edge that leaves the layer they read, or, inside a
    # collapsed group (the stem's act1 at the stages level), on the group.
    leaving = {u for _, u, _ in edges.values()}
    tap_rows: dict[str, list[str]] = {}
    for index, tap in enumerate(analysis.features):
        where = tap.node if tap.node in leaving else group_of[tap.node]
        tap_rows.setdefault(where, []).append(_feature_text(index, tap))
    tree: dict[tuple[str, ...], list] = {(): []}  # cluster path -> groups and child paths
    for group in groups.values():
        for depth in range(1, len(group.clusters) + 1):
            path = group.clusters[:depth]
            if path not in tree:
                tree[path] = []
                tree[path[:-1]].append(path)
        tree[group.clusters].append(group)

    def emit(g: graphviz.Digraph, path: tuple[str, ...]) -> None:
        for item in tree[path]:
            if isinstance(item, _Group):
                _node(g, item, analysis, stage_info, activations, tap_rows.get(item.id, ()))
                continue
            with g.subgraph(name="cluster_" + item[-1]) as sub:
                sub.attr(**_cluster_style(item, tree, analysis, stage_info))
                emit(sub, item)

    emit(dot, ())
    for (gu, gv), (role, u, item) in edges.items():
        _edge(
            dot,
            groups[gu],
            groups[gv],
            role,
            u,
            analysis,
            item,
            tap_rows.get(u, ()),
            failing=(gu, gv) in failing,
        )
    if loose_errors:
        fill, line = COLOURS["error"]
        dot.node(
            ERRORS_ID,
            _lines(("title", "errors"), *(("error", e) for e in loose_errors)),
            fillcolor=fill,
            color=line,
            penwidth="2",
        )
    return dot


def drawn_nodes(analysis, detail: str) -> int:
    """How many nodes the diagram at `detail` draws (one per group of graph nodes)."""
    return len({_place(node, detail)[0] for node in analysis.nodes.values()})


def _check_size(analysis, detail: str) -> None:
    count = drawn_nodes(analysis, detail)
    if count <= MAX_DRAWN_NODES:
        return
    smaller = [
        (d, n)
        for d in DETAILS[: DETAILS.index(detail)]
        if (n := drawn_nodes(analysis, d)) <= MAX_DRAWN_NODES
    ]
    hint = (
        "; use " + " or ".join(f"--detail {d} ({n:,} nodes)" for d, n in reversed(smaller))
        if smaller
        else ""
    )
    raise TooLarge(
        f"the {detail} diagram would draw {count:,} nodes, over the limit of "
        f"{MAX_DRAWN_NODES:,} (RESGEN_MAX_DIAGRAM_NODES){hint}"
    )


def to_dot(
    spec, analysis, detail: str = "stages", rankdir: str = "TB", memory=None, train=False
) -> str:
    """The DOT text of the diagram; identical for identical input."""
    head, _, rest = digraph(spec, analysis, detail, rankdir, memory, train).source.partition("\n")
    return f"{head}\n{DOT_MARK}\n{rest}"  # inside the graph: line 1 stays `digraph`


def _sum(analysis, nodes: list[str], key: str) -> int:
    return sum(getattr(analysis.shapes[n], key) for n in nodes)


def _in_out(group: _Group, analysis, stage_info) -> tuple:
    info = stage_info.get(group.id) if group.kind in ("stem", "head", "stage") else None
    if info is not None:
        return info.in_shape, info.out_shape
    return analysis.shapes[group.nodes[0]].in_shape, analysis.shapes[group.nodes[-1]].out_shape


def _transition(shape_in, shape_out) -> str:
    """`512→1024 · 28×28→14×14`, leaving out what does not change."""
    if shape_in is None or shape_out is None:
        return f"{_shape(shape_in)} → {_shape(shape_out)}"
    hw_in, hw_out = _hw(shape_in), _hw(shape_out)
    if hw_in is None or hw_out is None:
        return f"{_shape(shape_in)} → {_shape(shape_out)}"
    channels = (
        f"{shape_in[0]}→{shape_out[0]} ch" if shape_in[0] != shape_out[0] else f"{shape_in[0]} ch"
    )
    size = f"{size_text(hw_in)}→{size_text(hw_out)}" if hw_in != hw_out else size_text(hw_in)
    return f"{channels} · {size}"


def _activations(memory, train: bool) -> dict[str, str]:
    """Per stem, stage and head: `saves 3.83 GiB` or `peak 674 MiB`, from a memory estimate."""
    if memory is None:
        return {}
    return {
        s.name: (
            f"saves {bytes_text(s.activations_saved_bytes)}"
            if train
            else f"peak {bytes_text(s.inference_peak_bytes)}"
        )
        for s in memory.stages
    }


def _node(
    g: graphviz.Digraph, group: _Group, analysis, stage_info, activations=None, taps=()
) -> None:
    first = analysis.nodes[group.nodes[0]]
    kind = group.kind
    attrs: dict[str, str] = {}
    shape_in, shape_out = _in_out(group, analysis, stage_info)
    cost = (
        f"params {_count(_sum(analysis, group.nodes, 'params'))} · "
        f"MACs {_count(_sum(analysis, group.nodes, 'macs'))}"
    )
    if kind in (INPUT, OUTPUT):
        result = analysis.shapes[first.id]
        shown = result.out_shape if kind == INPUT else result.in_shape
        rows = [("title", kind), ("text", _shape(shown))]
        colours = COLOURS["io"]
    elif kind == "layer":
        family = first.op.family
        colours = (family.fill, family.border)
        shown = _short_name(first)
        if isinstance(first.op, Merge) and not group.errors:
            rows = [("title", first.op.glyph)]
            attrs = {
                "shape": "circle",
                "style": "filled",
                "width": "0.32",
                "fixedsize": "true",
                "fontsize": "12",
            }
        else:
            text = first.label()
            rows = [("title", shown)]
            if text != shown:  # `relu = relu` says it once
                rows.append(("small" if isinstance(first.op, Merge) else "text", text))
    elif kind == "stage":
        info = stage_info.get(group.id)
        colours = COLOURS["stage"]
        head = f"<b>{_esc(group.id)}</b>"
        if info is not None and info.block:
            head += f" · {_esc(_runs_label(info))}"
        rows = [
            ("html", head),
            ("text", _stage_line(group, analysis, shape_in, shape_out)),
            ("text", _stage_cost(info) or cost),
        ]
        if info is not None and info.output_stride and info.out_shape is not None:
            rows.append(("small", f"output stride {axis_text(info.output_stride)}"))
        if activations and group.id in activations:
            rows.append(("small", f"activations: {activations[group.id]}"))
    elif kind in ("stem", "head"):
        colours = COLOURS["stem"]
        steps = [analysis.nodes[n].label() for n in group.nodes]
        rows = [
            ("title", kind),
            *(("small", line) for line in _chain(steps)),
            ("text", f"{_shape(shape_in)} → {_shape(shape_out)}"),
            ("text", _stage_cost(stage_info.get(kind)) or cost),
        ]
        if activations and kind in activations:
            rows.append(("small", f"activations: {activations[kind]}"))
    elif kind == "block":
        colours = COLOURS["block"]
        stage = group.clusters[0] if group.clusters else ""
        info = stage_info.get(stage)
        head = f"<b>{_esc(group.id)}</b>"
        if info is not None and info.block:
            head += f" · {_esc(info.block)}"
        rows = [("html", head), ("text", _transition(shape_in, shape_out)), ("small", cost)]
    else:  # a projection shortcut at the blocks level
        colours = COLOURS["shortcut"]
        steps = [analysis.nodes[n].label() for n in group.nodes]
        rows = [
            ("title", group.id.rsplit(".", 1)[-1]),
            *(("small", line) for line in _chain(steps)),
            ("small", cost),
        ]
        attrs = {"style": "rounded,filled,dashed"}
    rows += [("feature", text) for text in taps]
    fill, line = colours
    if group.errors:
        fill, line = COLOURS["error"]
        rows += [("error", e) for e in group.errors[:3]]
        if len(group.errors) > 3:
            rows.append(("error", f"(+{len(group.errors) - 3} more)"))
        attrs["penwidth"] = "2"
        attrs["fontcolor"] = RED
    where = f" ({first.span})" if kind == "layer" else ""
    if kind != "shortcut" and first.branch != SHORTCUT:
        attrs["group"] = "spine"  # dot keeps one group in a straight line: the main path
    g.node(
        group.id,
        _lines(*rows),
        fillcolor=fill,
        color=line,
        tooltip=_plain(group.id + where),
        **attrs,
    )


def _short_name(node: Node) -> str:
    """The name inside its block (`conv2`, `downsample.0`), without the `#2` of a reuse."""
    name = (node.module or node.id).split("#")[0]
    block = node.instance
    if block and name.startswith(block + "."):
        name = name[len(block) + 1 :]
    return name


def _stage_line(group: _Group, analysis, shape_in, shape_out) -> str:
    """`512→1024 ch · stride 2 · 28×28→14×14` (or `· dilation 2` for a dilated stage)."""
    text = _transition(shape_in, shape_out)
    # Sizes after an error are the main path's, carried on for the drawing: no stride from them.
    tainted = any(analysis.shapes[n].tainted for n in group.nodes)
    ratio = None if tainted else _ratio(shape_in, shape_out)
    if ratio:
        channels, _, size = text.partition(" · ")
        text = f"{channels} · stride {ratio[1:]} · {size}"
    dilation = max(
        (max(w.dilation for w in windows) for windows in _windows(analysis, group.nodes)),
        default=1,
    )
    if dilation > 1:
        text += f" · dilation {dilation}"
    return text


def _windows(analysis, node_ids: list[str]):
    """The per-axis windows of the known convolutions and pools among `node_ids`."""
    for node_id in node_ids:
        node = analysis.nodes[node_id]
        if node.op is not None and node.known:
            spatial = node.op.spatial(node.args)
            if isinstance(spatial, tuple):
                yield spatial


def _stage_cost(info) -> str | None:
    if info is None:
        return None
    return f"params {_count(info.params)} · MACs {_count(info.macs)}"


def _ratio(shape_in, shape_out) -> str | None:
    """'/2' when the resolution drops (per axis when the axes differ), else None."""
    hw_in, hw_out = _hw(shape_in), _hw(shape_out)
    if hw_in is None or hw_out is None or not all(o > 0 for o in hw_out):
        return None
    rh, rw = (round(i / o) for i, o in zip(hw_in, hw_out, strict=True))
    if hw_out == hw_in or (rh <= 1 and rw <= 1):
        return None
    return f"/{rh}" if rh == rw else f"/{rh}×{rw}"


def _edge(
    g: graphviz.Digraph,
    src: _Group,
    dst: _Group,
    role: str,
    u: str,
    analysis,
    item=None,
    taps=(),
    failing: bool = False,
) -> None:
    """An edge labelled with the tensor it carries: one item of a bundle when `item` says
    which (a split's chunk), the whole output otherwise; feature `taps` read there are marked.
    `failing`: on a branch into a join that fails (drawn red)."""
    result, node = analysis.shapes[u], analysis.nodes[u]
    tensor = result.out_shape
    if item is not None and isinstance(tensor, Bundle):
        tensor = tensor[item]
    attrs: dict[str, str] = {}
    ratio = None
    # A drop in resolution is marked on the edge leaving what dropped it; pooling to a fixed
    # size (the head's global pool) is a reduction, not a stride.
    if src.kind not in ("head", INPUT) and not result.tainted and not node.fixes_size:
        src_in = analysis.shapes[src.nodes[0]].in_shape
        ratio = _ratio(src_in, tensor)
    label = "&#160;" + _esc(_shape(tensor))  # a space keeps the text off the line
    if ratio:
        label += f"  <b>{_esc(ratio)}</b>"
        attrs["penwidth"] = "2.2"
    if role == SHORTCUT:
        attrs.update(style="dashed", color=SHORTCUT_BLUE)
    elif role == SKIP:
        attrs.update(style="dashed", color=SKIP_GREY)
    for text in taps:
        label += f'<br/>&#160;<font color="{FEATURE_ORANGE}">{_esc(text)}</font>'
    if dst.errors:
        attrs.update(color=RED, fontcolor=RED)
    elif failing:
        attrs.update(color=RED)
    g.edge(src.id, dst.id, label=f"<{label}>", **attrs)


def _failing_branches(analysis, graph, node_errors) -> set[tuple[str, str]]:
    """The edges of every branch into a join or merge that fails (a concat of different H x W,
    a merge of different shapes): from the fork where the branches part (what every input
    descends from) to the join, so the paths that disagree are red, not only the join."""
    import networkx as nx

    found: set[tuple[str, str]] = set()
    for node_id in node_errors:
        node = analysis.nodes.get(node_id)
        inputs = list(graph.predecessors(node_id)) if node_id in graph else []
        if node is None or len(inputs) < 2:
            continue
        lineage = [nx.ancestors(graph, p) | {p} for p in inputs]
        shared = set.intersection(*lineage)
        branch = set().union(*lineage) - shared
        for u, v in graph.in_edges([*branch, node_id]):
            if u in branch or u in shared:
                found.add((u, v))
    return found


def _feature_text(index: int, tap) -> str:
    """`◆ feature 2: c3 (layer2) · reduction 8`: a feature tap as diagrams mark it (its index
    is what out_indices counts)."""
    reduction = tap.reduction if isinstance(tap.reduction, tuple) else (tap.reduction,) * 2
    name = tap.name if tap.name == tap.module else f"{tap.name} ({tap.module})"
    return f"◆ feature {index}: {name} · reduction {pair_text(reduction, '-')}"


def _cluster_style(path: tuple[str, ...], tree, analysis, stage_info) -> dict[str, str]:
    key = path[-1]
    errors = any(isinstance(i, _Group) and i.errors for i in _walk(tree, path))
    line = RED if errors else "#b9c8da"
    if len(path) == 1:  # a stage
        info = stage_info.get(key)
        head = f"<b>{_esc(key)}</b>"
        if info is not None:
            if info.block:
                head += f" · {_esc(_runs_label(info))}"
            head += f" · {_esc(_stage_cost(info))}"
        return {
            "label": f"<{head}>",
            "style": "rounded,filled",
            "fillcolor": "#f6f8fb",
            "color": line,
            "labeljust": "l",
            "fontsize": "10",
            "penwidth": "1.5",
        }
    block_type = analysis.block_types.get(key)
    label = _esc(key) + (f" · {_esc(block_type)}" if block_type else "")
    return {
        "label": f"<{label}>",
        "style": "rounded,dashed",
        "fillcolor": "#ffffff",
        "color": RED if errors else "#a8a8a8",
        "labeljust": "l",
        "fontsize": "9",
        "fontcolor": MUTED,
    }


def _walk(tree, path):
    for item in tree[path]:
        if isinstance(item, _Group):
            yield item
        else:
            yield from _walk(tree, item)


def _legend(detail: str, errors: int) -> list[tuple[str, str]]:
    """(key cell, description) pairs for the encodings used at this level of detail."""

    def swatch(fill: str, line: str, text: str = "") -> str:
        return f'<td bgcolor="{fill}" color="{line}" border="1" width="28">{text}</td>'

    def stroke(glyph: str, colour: str, text: str = "") -> str:
        return f'<td><font color="{colour}">{glyph}</font>{text}</td>'

    if detail == "layers":
        rows = [(swatch(f.fill, f.border, "+" if f is MERGE else ""), f.legend) for f in FAMILIES]
    elif detail == "blocks":
        rows = [
            (swatch(*COLOURS["block"]), "block (no shortcut node: adds its input)"),
            (swatch(*COLOURS["shortcut"]), "projection shortcut"),
        ]
    else:
        rows = [
            (swatch(*COLOURS["stage"]), "stage: block × repeats"),
            (swatch(*COLOURS["stem"]), "stem, head"),
        ]
    rows.append((stroke("───", "#555555"), "tensor shape C×H×W"))
    rows.append((stroke("━━", "#555555", " <b>/n</b>"), "resolution divided by n"))
    if detail != "stages":
        rows.append((stroke("╌╌╌", SHORTCUT_BLUE), "projection shortcut path"))
    if detail == "layers":
        rows.append((stroke("╌╌╌", SKIP_GREY), "identity shortcut"))
    rows.append((stroke("───", RED), "shape error (red, with message)"))
    if errors:
        rows.append(("<td>?</td>", "after an error: sizes carried on (? if unknown), no /n"))
    return rows


def _label(name: str, analysis, errors: int, detail: str, memory=None, train=False) -> str:
    """The graph's label: a title line over a two-column legend, kept out of the layout."""
    partial = " (partial: the spec has errors)"
    parts = [
        f'<font point-size="14"><b>{_esc(name)}</b></font>',
        f"input {_shape(analysis.input)}",
        f"{_count(analysis.params)} params" + ("" if analysis.params_exact else partial),
        f"{_count(analysis.macs)} MACs" + ("" if analysis.macs_exact else partial),
    ]
    if errors:
        parts.append(f'<font color="{RED}"><b>{errors} error{"s" * (errors != 1)}</b></font>')
    legend = _legend(detail, errors)
    rows = []
    for i in range(0, len(legend), 2):
        cells = "".join(
            f'{key}<td align="left">{_esc(text)}</td>' for key, text in legend[i : i + 2]
        )
        rows.append(f"<tr>{cells}</tr>")
    title = " · ".join(parts)
    if memory is not None:
        settings = memory.settings
        dtype = f"mixed precision ({settings.dtype})" if settings.amp else settings.dtype
        what = "saved for backward" if train else "inference peak"
        title += f"<br/>activations {what}: batch {settings.batch}, {_esc(dtype)}"
    return (
        '<<table border="0" cellborder="0" cellspacing="2" cellpadding="1">'
        f'<tr><td colspan="4" cellpadding="4">{title}</td></tr>'
        f'<tr><td colspan="4" align="left"><font point-size="9" color="{MUTED}">'
        f"<i>legend</i></font></td></tr>"
        f"{''.join(rows)}</table>>"
    )


# ---------------------------------------------------------------------------------------------
# Files and the command line


def render(source: str, fmt: str) -> bytes:
    """Run Graphviz's `dot` on DOT text; raises GraphvizMissing when it is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("Graphviz's `dot` executable was not found on PATH")
    argv = [exe, f"-T{fmt}"] + (["-Gdpi=144"] if fmt == "png" else [])
    try:  # subprocess.run kills dot when the time is up
        proc = subprocess.run(
            argv,
            input=source.encode("utf-8"),
            capture_output=True,
            check=False,
            timeout=DOT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"dot took longer than {DOT_SECONDS:g} s and was stopped") from None
    if proc.returncode != 0:
        reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"dot failed: {reason[0] if reason else proc.returncode}")
    if fmt == "svg":  # dot drops DOT comments; mark the SVG after its XML declaration
        declaration, newline, rest = proc.stdout.partition(b"\n")
        return declaration + newline + _SVG_MARK + b"\n" + rest
    kind = KINDS.get(fmt)
    return kind.mark(proc.stdout) if kind and kind.mark else proc.stdout


def missing_dot_line(dot_path: Path, image: Path) -> str:
    return (
        f"resgen: Graphviz's `dot` was not found, so wrote {dot_path} instead of {image}; "
        f"{INSTALL_HINT}"
    )


def build_diagram_paths(out_dir, stem: str) -> tuple[Path, Path]:
    """Where `resgen build` puts the stages diagram: DIR/<stem>.dot and DIR/<stem>.svg."""
    return Path(out_dir) / f"{stem}.dot", Path(out_dir) / f"{stem}.svg"


def build_diagram_files(spec, analysis, out_dir, stem: str) -> list[tuple[Path, bytes]]:
    """For `resgen build`: the stages diagram as out_dir/<stem>.dot and, when Graphviz draws it,
    out_dir/<stem>.svg (contents; the caller writes them). Never fails the build over the
    picture: without `dot`, or when dot fails, only the .dot is returned and one line on stderr
    says why."""
    dot_path, svg_path = build_diagram_paths(out_dir, stem)
    try:
        source = to_dot(spec, analysis)
    except TooLarge as err:
        print(f"resgen: {dot_path} and {svg_path} not drawn: {err}", file=sys.stderr)
        return []
    files = [(dot_path, source.encode("utf-8"))]
    try:
        files.append((svg_path, render(source, "svg")))
    except GraphvizMissing:
        print(missing_dot_line(dot_path, svg_path), file=sys.stderr)
    except RuntimeError as err:
        print(f"resgen: {svg_path} not drawn: {err}", file=sys.stderr)
    return files


KNOWN_SUFFIXES = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}


def output_path(spec_path: str, detail: str, fmt: str, output: str | None) -> Path:
    """-o FILE, or `<spec stem>.<detail>.<format>` in the current directory (or in -o DIR)."""
    default = f"{Path(spec_path).stem}.{detail}.{fmt}"
    if output is None:
        return Path(default)
    path = Path(output)
    return path / default if path.is_dir() else path


def _runs_label(info) -> str:
    """`Bottleneck ×3`, or `1 × ByobBottleneck + 1 × SelfAttnBlock` for a stage of several runs
    (a repeated pattern once: `3 × (1 × ByobBottleneck + 1 × SelfAttnBlock)`)."""
    if len(info.runs) > 1:
        return runs_text(info.runs, "×")
    return f"{info.block} ×{info.repeats}"
