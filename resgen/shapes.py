"""Shape inference, shape checks and counts over the lowered graph (resgen.graph).

`analyse(spec, input_shape)` walks the graph in forward order with C, H and W tracked
separately and asks each node's op for its output shape and counts, keeping one frozen
`ShapeResult` per node; every problem is a located Diagnostic (it never raises for them). Counts
follow torch exactly (`sum(p.numel() for p in model.parameters())`, BatchNorm buffers 2C+1) and
MACs follow torchvision's convention: conv and linear multiply-accumulates only. Nothing here
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import combinations
from typing import TYPE_CHECKING

from resgen import aliasing, codes
from resgen import expr as E
from resgen import spec as S
from resgen.codes import Code
from resgen.diagnostics import Diagnostic, Span
from resgen.features import FeatureTap, feature_taps
from resgen.graph import INPUT, OUTPUT, SKIP, Lowering, Node, Source, lower, no_gc, runs_text
from resgen.ops.base import SIZE_HINT, Bundle, Fixed, Shape
from resgen.plan import NetworkPlan, elaborate
from resgen.sizes import (
    InputSizes,
    SizeFailure,
    gapped_axes,
    input_sizes,
    reads,
    skipping_readers,
    skips,
)
from resgen.stages import repeats_alike, stage_runs
from resgen.storage import overwritten_saves
from resgen.text import shape_text

if TYPE_CHECKING:
    import networkx as nx

MAC_CONVENTION = "torchvision convention: conv + linear multiply-accumulates"


@dataclass(frozen=True, slots=True)
class ShapeResult:
    """What the shape engine found at one node. `tainted`: computed downstream of an error (or
    from an argument that could not be evaluated), so made-up sizes may be carried on."""

    in_shape: Shape | None
    out_shape: Shape | None
    params: int = 0
    buffers: int = 0
    macs: int = 0
    error: str | None = None
    tainted: bool = False


@dataclass(slots=True)
class LayerInfo:
    name: str
    op: str  # the op's name (`conv`), or the merge's (`add`)
    out: Shape | None
    params: int
    macs: int
    span: Span
    stage: str
    block: str | None
    in_shape: Shape | None = None
    buffers: int = 0
    branch: str | None = None
    module: str | None = None  # the module a reused layer applies again


@dataclass
class StageInfo:
    name: str  # "stem", "layer1", ..., "head"
    block: str | None
    repeats: int
    in_shape: Shape | None
    out_shape: Shape | None
    params: int = 0
    buffers: int = 0
    macs: int = 0
    output_stride: tuple[int, int] | None = None  # (h, w); None after a global pool
    receptive_field: tuple[int, int] | None = None  # (h, w); None when it is the whole input
    blocks: list[str] = field(default_factory=list)
    runs: list[tuple[int, str]] = field(default_factory=list)  # (count, block type) in order

    def text(self, times: str = "x") -> str:
        """`3 x Bottleneck`, or `1 x ByobBottleneck + 1 x SelfAttnBlock` for several runs."""
        return runs_text(self.runs, times) if self.runs else f"{self.repeats} {times} {self.block}"


@dataclass
class Analysis:
    diagnostics: list[Diagnostic]
    input: tuple[int, int, int]
    output: Shape | None
    params: int
    buffers: int
    macs: int
    layers: list[LayerInfo]
    stages: list[StageInfo]
    ok: bool
    network: str = ""
    output_stride: tuple[int, int] | None = None  # at the end of the last stage
    receptive_field: tuple[int, int] | None = None
    input_sizes: InputSizes | None = None
    block_types: dict[str, str] = field(default_factory=dict)  # block path -> block type
    # False when an error leaves some counts unknown or computed from made-up shapes (then
    # `params` is what could be counted: a lower bound or a guess, never the model's count)
    params_exact: bool = True
    macs_exact: bool = True
    nodes: dict[str, Node] = field(default_factory=dict)  # the lowered records, forward order
    shapes: dict[str, ShapeResult] = field(default_factory=dict)  # per node id
    plan: NetworkPlan | None = None  # the elaborated network the nodes were lowered from
    # Per block type ("" the network): names that held a number with a fraction somewhere.
    float_names: dict[str, set[str]] = field(default_factory=dict)
    lowering: Lowering | None = field(default=None, repr=False)
    features: list[FeatureTap] = field(default_factory=list)  # resgen.features, in order

    @property
    def graph(self) -> nx.DiGraph:
        """The lowered networkx DiGraph (node data {"node": Node}, edge data {"role": ...}),
        built on first use: checking and counting never need networkx."""
        return self.lowering.graph

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]


def analyse(
    spec: S.Spec,
    input_shape: tuple[int | None, int, int] | None = None,
    plan: NetworkPlan | None = None,
    *,
    sizes: bool = True,
) -> Analysis:
    """Lower, infer shapes, check and count. Shape problems are in `Analysis.diagnostics`.
    `sizes=False` skips the search for the input sizes the network accepts (`input_sizes` is
    then None), which is most of the time of a small network: a sweep needs only the counts."""
    with no_gc():
        plan = plan or (elaborate(spec) if spec.network is not None else None)
        lowering = lower(spec, input_shape, plan)
        analysis = _Inference(lowering, sizes).run()
        # Training would fail at backward: an in-place op on a tensor autograd saved (storage).
        overwritten = overwritten_saves(analysis.nodes, lowering.edges, analysis.shapes)
    found = overwritten + _code_limits(spec, plan, analysis)
    if found:
        analysis.diagnostics = sorted(analysis.diagnostics + found, key=Diagnostic.sort_key)
        analysis.ok = False
    analysis.diagnostics = _with_instantiation_notes(
        analysis.diagnostics, spec.network, analysis.stages
    )
    return analysis


def _owned_in_containers(plan: NetworkPlan) -> list[Diagnostic]:
    """An op whose parameter belongs to the module it sits in (layer_scale: `self.gamma`) is a
    line of a block's main or post, or of the network's stem or head. Inside an nn.Sequential (a
    `seq`, a shortcut, a stage's own layers) there is no module of its own to hold it."""
    found: list[Diagnostic] = []

    def walk(steps, container: str | None) -> None:
        for step in steps:
            emit = step.op.emit if step.op is not None else None
            if container is not None and emit is not None and emit.owned is not None:
                found.append(
                    Diagnostic(
                        step.span,
                        codes.CODEGEN,
                        f"`{step.op.name}` is a parameter of the module it is written in, so it "
                        f"cannot be an item of {container} (an nn.Sequential of modules)",
                        hint="write it as a line of the block's `main` or `post`",
                    )
                )
            walk(step.items, container or "a `seq`")

    for block in plan.blocks.values():
        walk(block.main, None)
        walk(block.post, None)
        if block.shortcut is not None:
            walk(block.shortcut.steps, "a shortcut")
    walk(plan.stem, None)
    walk(plan.head, None)
    for stage in plan.stages:
        walk(stage.layers, "a stage's own layers")
    return found


def _code_limits(spec: S.Spec, plan: NetworkPlan, analysis: Analysis) -> list[Diagnostic]:
    """What generated code cannot express, reported by check (check ok means build ok): a
    helper class resgen writes for an op (PadChannels) named like a block, the network's class
    or its factory, and a stage whose blocks change the channel count with a repeat count that
    is a network parameter."""
    net, found = spec.network, []
    taken = {name: f"block `{name}`" for name in analysis.block_types.values()}
    taken[net.python_class] = "the network's class"  # resolve keeps these two apart
    taken[net.name] = "the network's factory function"
    for node in analysis.nodes.values():
        emit = node.op.emit if node.op is not None else None
        if emit is None or not emit.helper or emit.cls not in taken:
            continue
        name = emit.cls
        found.append(
            Diagnostic(
                spec.blocks[name].span if name in spec.blocks else net.span,
                codes.CODEGEN,
                f"{taken[name]} and the class resgen writes for `{node.op.name}` would both be "
                f"`{name}` in the generated module",
                hint="rename the block (or give the network another `class`)",
            )
        )
        taken.pop(name)
    found += _owned_in_containers(plan)
    if not analysis.ok:
        return found
    try:
        env, _ = plan.scope.values({}, lambda expr, values, _: E.evaluate(expr, values))
        dilation = 1
        for stage_plan in plan.stages:
            stage = stage_plan.stage
            blocks = {name: plan.blocks[name].block for name in stage.blocks}
            rules = stage_runs(stage, blocks, env, dilation)
            dilation = rules[-1].dilation_after
            for rule in rules:
                run, block = rule.run, plan.blocks[rule.run.block]
                if stage.pattern is not None and len(rules) > 1 and E.free_refs(run.repeats):
                    found.append(
                        Diagnostic(
                            run.repeats.span,
                            codes.CODEGEN,
                            f"stage `{stage.name}` names its blocks and has several runs, so "
                            "code writes each block out with its name: its repeat counts must "
                            "be constants",
                            hint="give the repeat count as a number",
                            layer=stage.name,
                        )
                    )
                    continue
                entering = S.Ref(span=run.span, name="channels")
                if E.free_refs(run.repeats) and not repeats_alike(block, entering, rule):
                    found.append(
                        Diagnostic(
                            stage.span if len(rules) == 1 else run.span,
                            codes.CODEGEN,
                            f"stage `{stage.name}` changes the channel count from block to "
                            f"block, so its repeat count `{E.source_text(run.repeats)}` must be "
                            "a constant for code (each block's constructor call is written out)",
                            hint="give the repeat count as a number",
                            layer=stage.name,
                        )
                    )
    except E.EvalError:  # reported by the analysis already
        pass
    return found


def _with_instantiation_notes(
    diagnostics: list[Diagnostic], network: S.Network, stages=()
) -> list[Diagnostic]:
    """An error inside a block points at the block's definition, perhaps in a library; a note
    adds the line of the user's spec that put the block there (its stage, the run of a stage of
    several runs, or its layer). `stages`: the analysis' StageInfo records (block paths)."""
    sites = {
        stage.name: (stage.span, f"stage `{stage.name}` of {' and '.join(stage.blocks)} blocks")
        for stage in network.stages
    }
    infos = {info.name: info for info in stages}
    for stage in network.stages:
        info = infos.get(stage.name)
        if len(stage.runs) < 2 or info is None or len(info.runs) != len(stage.runs):
            continue
        start = 0
        for run, (count, block) in zip(stage.runs, info.runs, strict=True):
            what = f"the run `{count} x {block}` of stage `{stage.name}`"
            sites.update({path: (run.span, what) for path in info.blocks[start : start + count]})
            start += count
    sites.update(
        {
            layer.name: (layer.span, f"layer `{layer.name}`, a {layer.callee}")
            for layer in network.stem + network.head
            if layer.kind == "block"
        }
    )
    noted = []
    for d in diagnostics:
        site = None
        if d.layer:  # the stage (or layer) whose path starts the layer's: `stages.0` of ...
            parts = d.layer.split(".")
            prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
            site = next((sites[p] for p in prefixes if p in sites), None)
        if site is not None and not _contains(site[0], d.span):
            span, what = site
            d = replace(d, notes=d.notes + ((span, f"`{d.layer}` comes from {what}, here"),))
        noted.append(d)
    return noted


def _contains(outer: Span, inner: Span) -> bool:
    return (
        outer.file == inner.file
        and (outer.line, outer.column) <= (inner.line, inner.column)
        and (inner.end_line, inner.end_column) <= (outer.end_line, outer.end_column)
    )


def _may_be_a_consequence(code: Code, channels_tainted: bool) -> bool:
    """Whether an error of this code at a tainted node may just follow from an earlier one."""
    if code.follows == "never":
        return False
    if code.follows == "channels":
        return channels_tainted
    return True


class _NodeCheck:
    """What an op reports through while the engine infers one node (resgen.ops.base.Check)."""

    __slots__ = ("engine", "node", "tainted", "first_error", "flattened")

    def __init__(self, engine: _Inference, node: Node, tainted: bool, flattened: Shape | None):
        self.engine, self.node, self.tainted = engine, node, tainted
        self.first_error: str | None = None  # the message drawn on the node in diagrams
        self.flattened = flattened

    def error(self, code: Code, message: str, *, arg=None, hint=None) -> None:
        self.engine.report(self, code, message, self.node.arg_spans.get(arg), hint)

    def warning(self, code: Code, message: str, *, hint=None) -> None:
        self.engine.report(self, code, message, None, hint, severity="warning")


class _Inference:
    def __init__(self, lowering: Lowering, sizes: bool = True):
        self.lowering = lowering
        self.want_sizes = sizes
        self.pred = lowering.pred
        self.nodes = lowering.nodes
        self.diagnostics = list(lowering.diagnostics)
        self.shapes: dict[str, ShapeResult] = {}
        self._reported: set[tuple] = set()
        self.channel_errors: set[str] = set()  # nodes whose error may leave channels wrong
        self.channel_tainted: set[str] = set()  # those and every node after them
        self.size_tainted: set[str] = set()  # tainted nodes, up to a pool to a fixed size
        # per node: (stride h, stride w, receptive field h, receptive field w); None = global
        self.geometry: dict[str, tuple | None] = {}
        self._memo: dict[tuple, tuple] = {}  # (op, id(args), in_shape) -> results: blocks repeat

    def report(
        self,
        check: _NodeCheck,
        code: Code,
        message: str,
        span: Span | None = None,
        hint: str | None = None,
        severity: str = "error",
        layer: str | None = None,
        sizes_only: bool = False,
        notes: tuple = (),
    ) -> None:
        node = check.node
        if check.tainted and _may_be_a_consequence(code, node.id in self.channel_tainted):
            return  # of an error reported upstream: only the cause is reported
        if severity == "error" and not (code.keeps_channels or sizes_only):
            self.channel_errors.add(node.id)  # later channel counts are guesses too
        if severity == "error" and check.first_error is None:
            check.first_error = message
        span = span or node.span
        # One report per place and kind: a block definition's mistake repeats in every instance
        # (and every stage), often with numbers that drift from block to block.
        key = (span, code)
        if key in self._reported:
            return
        self._reported.add(key)
        self.diagnostics.append(
            Diagnostic(
                span, code, message, severity, layer or node.id, hint, tuple(notes), node=node.id
            )
        )

    def run(self) -> Analysis:
        preds = self.pred
        shapes = self.shapes
        for node_id, node in self.nodes.items():
            if node.kind == INPUT:
                self.geometry[node_id] = (1, 1, 1, 1)
                shapes[node_id] = ShapeResult(None, self.lowering.input)
                self.input_layout(node)
                continue
            incoming = preds[node_id]
            if self.channel_tainted and any(p in self.channel_tainted for p in incoming):
                self.channel_tainted.add(node_id)
            if self.size_tainted and not node.fixes_size:
                if any(p in self.size_tainted for p in incoming):
                    self.size_tainted.add(node_id)
            # Downstream of a reported error shapes go on (from the main path) but are tainted:
            # they report nothing, so one mistake gives its own error and not its consequences.
            tainted = not node.known or any(shapes[p].tainted for p in incoming)
            if node.kind == "merge":
                shapes[node_id] = self.merge(node, incoming, tainted)
                self._after_error(node_id, shapes[node_id].error)
                continue
            if node.inputs is not None:  # a join: concat, add, mul of what `from` names
                shapes[node_id] = self.join(node, tainted)
                self._after_error(node_id, shapes[node_id].error)
                continue
            pred = next(iter(incoming))
            before = shapes[pred]
            shape, geometry = _item(before.out_shape, incoming[pred]), self.geometry.get(pred)
            if shape is None or not node.known or node.kind == OUTPUT:
                out = shape if node.known else None
                shapes[node_id] = ShapeResult(shape, out, tainted=tainted or shape is None)
                self.geometry[node_id] = geometry
                continue
            key = (node.op, id(node.args), shape, tainted)
            memo = self._memo.get(key)
            if memo is None:
                flattened = before.in_shape if _flattens(before) else None
                check = _NodeCheck(self, node, tainted, flattened)
                result = self.infer(node, shape, check)
                self._memo[key] = (result, node_id in self.channel_errors)
            else:  # the same layer on the same input: its messages were reported already
                result, channel_error = memo
                if channel_error:
                    self.channel_errors.add(node_id)
            if node.module not in (None, node_id) and (result.params or result.buffers):
                result = replace(result, params=0, buffers=0)  # the first application's
            shapes[node_id] = result
            self._after_error(node_id, result.error)
            spatial = node.op.spatial(node.args)
            if isinstance(spatial, Fixed):
                geometry = None  # each output sees the whole input
            elif spatial is not None and geometry is not None:
                (kh, sh, _, dh, _), (kw, sw, _, dw, _) = spatial
                jh, jw, rh, rw = geometry
                geometry = (jh * sh, jw * sw, rh + dh * (kh - 1) * jh, rw + dw * (kw - 1) * jw)
            self.geometry[node_id] = geometry
        self.check_reuses()
        return self.finish()

    def check_reuses(self) -> None:
        """A module with parameters applied again (`max_out = mlp from max_pool`) has the
        weights its first application's input made: each later input must make the same ones
        (the same channels for a conv or a norm; any H x W, as a head shared across feature
        levels runs). Checked once every application has a shape: the two may be on parallel
        branches in either order."""
        for node_id, node in self.nodes.items():
            if node.module in (None, node_id) or node.kind in (INPUT, OUTPUT):
                continue
            first, again = self.shapes.get(node.module), self.shapes[node_id]
            if first is None or first.in_shape is None or again.in_shape is None:
                continue
            built, given = first.in_shape, again.in_shape
            if first.params == 0 and first.buffers == 0 or built == given:
                continue
            op, args = node.op, node.args
            weights = [(op.parameters(args, x), op.buffers(args, x)) for x in (built, given)]
            if weights[0] == weights[1] and weights[0] != ((), ()):
                continue
            shapes = " and ".join(shape_text(p) for p in weights[0][0][:1])
            needed = " and ".join(shape_text(p) for p in weights[1][0][:1])
            detail = f": its weight is {shapes}, this input needs {needed}" if shapes else ""
            self.report(
                _NodeCheck(self, node, again.tainted, None),
                codes.REUSE_STATEFUL,
                f"`{node.module}` is applied again to {shape_text(given)}, but its weights were "
                f"made for its first input, {shape_text(built)}{detail}",
                hint="apply it to tensors of the same channels, or declare a second layer "
                "with its own weights",
            )

    def _after_error(self, node_id: str, error: str | None) -> None:
        if error is not None:
            self.size_tainted.add(node_id)
        if node_id in self.channel_errors:
            self.channel_tainted.add(node_id)

    # -- one node
    def infer(self, node: Node, shape: Shape, check: _NodeCheck) -> ShapeResult:
        op = node.op
        out, counts = None, None
        if op.accepts == "flat" and len(shape) != 1:
            self.report(
                check,
                codes.NOT_FLAT,
                f"{op.name} needs a flat input, but it gets {shape_text(shape)}",
                hint="put `flatten` before it",
            )
        elif op.accepts == "spatial" and len(shape) != 3:
            self.report(
                check,
                codes.NOT_SPATIAL,
                f"{op.name} needs a C x H x W input, but it gets the flat {shape_text(shape)}",
                hint="move it before the `flatten`",
            )
        else:
            out = op.infer(shape, node.args, check)
            counts = op.counts(node.args, shape, out)
        params, buffers, macs = counts or (0, 0, 0)
        error = check.first_error
        tainted = check.tainted or error is not None or out is None
        return ShapeResult(shape, out, params, buffers, macs, error, tainted)

    # -- joins
    def join(self, node: Node, tainted: bool) -> ShapeResult:
        """A node that reads several tensors (Node.inputs: one per `from` name, a bundle as a
        tuple of its items): the op's shape rule on the list of their shapes (a Bundle for a
        bundle). Stride and receptive field are the maximum over the inputs that still have
        spatial extent, as for merges."""
        shapes: list = []
        geometries = []
        for record in node.inputs:
            sources = record if isinstance(record, tuple) and not _is_source(record) else None
            found = [
                self._source_shape(source, geometries)
                for source in (sources if sources is not None else (record,))
            ]
            shapes.append(Bundle(found) if sources is not None else found[0])
        spatial = [g for g in geometries if g is not None]
        self.geometry[node.id] = (
            tuple(map(max, *spatial)) if len(spatial) > 1 else (spatial[0] if spatial else None)
        )
        flat = [s for x in shapes for s in (x if isinstance(x, Bundle) else (x,))]
        if any(s is None for s in flat) or not node.known:
            return ShapeResult(None, None, tainted=True)
        check = _NodeCheck(self, node, tainted, None)
        inputs = list(shapes)
        out = node.op.infer(inputs, node.args, check)
        counts = node.op.counts(node.args, inputs, out) if out is not None else None
        params, buffers, macs = counts or (0, 0, 0)
        error = check.first_error
        return ShapeResult(
            Bundle(flat), out, params, buffers, macs, error, tainted or error is not None
        )

    def _source_shape(self, source, geometries: list):
        geometries.append(self.geometry.get(source.node))
        shape = self.shapes[source.node].out_shape
        if source.item is not None and isinstance(shape, Bundle):
            return shape[source.item]
        return shape

    # -- merges
    def merge(self, node: Node, incoming, tainted: bool) -> ShapeResult:
        main = other = None
        role = SKIP
        for source, edge in incoming.items():
            if edge["role"] == "main":
                main = source
            else:
                other, role = source, edge["role"]
        main_shape, other_shape = self.shapes[main].out_shape, self.shapes[other].out_shape
        # Stride and receptive field come from the inputs that still have spatial extent: a
        # squeeze-excite gate (global pool, 1x1 convs) scales the block input's positions, it
        # does not erase them. Only when every input is global is the merge global.
        spatial = [g for g in (self.geometry.get(main), self.geometry.get(other)) if g is not None]
        self.geometry[node.id] = (
            tuple(map(max, *spatial)) if len(spatial) == 2 else (spatial[0] if spatial else None)
        )
        if main_shape is None or other_shape is None or not node.known:
            return ShapeResult(main_shape, None, tainted=tainted)
        check = _NodeCheck(self, node, tainted, None)
        result = node.op.combine(main_shape, other_shape)
        if result is None:  # reported; later layers carry on from the main path
            self.merge_error(check, role, main, other, main_shape, other_shape)
            result = main_shape
        error = check.first_error
        return ShapeResult(main_shape, result, error=error, tainted=tainted or error is not None)

    def merge_error(self, check, role, main, other, main_shape, other_shape) -> None:
        node = check.node
        block, start = node.block, node.block_input
        side = "the identity" if role == SKIP else "the shortcut"
        why = []
        # The merge's own rule says whether the channels fit (mul broadcasts a count of 1).
        spatial = node.op.combine(main_shape[:1], other_shape[:1]) is not None
        branches = [_branch(self.pred, self.nodes, tip, start) for tip in (main, other)]
        notes = []  # each layer the arithmetic names, at its own line
        for steps in branches:
            for step in steps:
                explained = self._explain(step, block, spatial)
                why.extend(explained)
                if explained:
                    name = _local(step, block)
                    after = shape_text(self.shapes[step].out_shape)
                    notes.append((self.nodes[step].span, f"`{name}` gives {after} here"))
        if not spatial and role == SKIP:
            why.append(f"the identity keeps the block input's {other_shape[0]} channels")
        message = (
            f"main path gives {shape_text(main_shape)} but {side} gives "
            f"{shape_text(other_shape)}" + (f"; {'; '.join(why)}" if why else "")
        )
        gate = len(main_shape) == 3 and main_shape[1:] == (1, 1) and other_shape[1:] != (1, 1)
        if spatial:
            hint = SIZE_HINT
            for steps, shape, against in (
                (branches[0], main_shape, other_shape),
                (branches[1], other_shape, main_shape),
            ):
                floors = [n for n in steps if _floors(self.nodes[n])]
                if floors and shape[1:] < against[1:]:
                    hint = (
                        f"`ceil_mode=true` on `{_local(floors[-1], block)}` rounds its output "
                        "up, as the padded layers of the other path do"
                    )
        elif gate:
            hint = (
                f"a gate's last layer gives the input's {other_shape[0]} channels, "
                "e.g. `conv(in_channels, 1)`"
            )
        elif role == SKIP:
            hint = (
                "add a projection (`shortcut downsample when ... { conv(C, 1) batchnorm }`) "
                "or make the main path end with the input's channels"
            )
        else:
            hint = "make the shortcut's conv produce the main path's channels"
        self.report(
            check,
            codes.MERGE_MISMATCH,
            message,
            hint=hint,
            layer=block,
            sizes_only=spatial and main_shape[0] == other_shape[0],
            notes=notes,
        )

    def _explain(self, node_id: str, block: str | None, spatial: bool) -> list[str]:
        """Why a layer changed the shape: worked arithmetic for sizes, the count for channels."""
        result, node = self.shapes[node_id], self.nodes[node_id]
        before, after = result.in_shape, result.out_shape
        if before is None or after is None or before == after or node.op is None:
            return []
        text = node.op.explain(node.args, before, after, spatial)
        if text is None:
            return []
        name = node_id[len(block) + 1 :] if block and node_id.startswith(block + ".") else node_id
        return [f"{name}: {text}" if spatial else f"{name} {text}"]

    # -- totals
    def finish(self) -> Analysis:
        lowering, shapes = self.lowering, self.shapes
        layers = []
        params = buffers = macs = 0
        params_exact = macs_exact = True
        for node_id, node in self.nodes.items():
            if node.kind in (INPUT, OUTPUT):
                continue
            result = shapes[node_id]
            if not node.op.stateless and (result.tainted or result.in_shape is None):
                # After an error: the MACs follow made-up sizes. Conv and batch norm weights
                # follow the channels only, which a size mismatch keeps; anything else is a
                # guess, or missing when there is no shape at all.
                macs_exact = False
                if result.in_shape is None or not node.known or not self._params_follow(node):
                    params_exact = False
            params += result.params
            buffers += result.buffers
            macs += result.macs
            layers.append(
                LayerInfo(
                    node_id,
                    node.op.name,
                    result.out_shape,
                    result.params,
                    result.macs,
                    node.span,
                    node.stage,
                    node.block,
                    result.in_shape,
                    result.buffers,
                    node.branch,
                    node.module,
                )
            )
        stages = self.stage_infos(layers)
        self.diagnostics.extend(aliasing.diagnostics(self.nodes, self.lowering))
        self.flatten_placement()
        readers = skipping_readers(self.nodes, self.pred, self.lowering.succ)
        sizes = (
            input_sizes(self.nodes, self.pred, shapes, lowering.input[1:], gapped_axes(readers))
            if self.want_sizes
            else None
        )
        self.unread_warnings(readers)
        if sizes is not None and not any(d.severity == "error" for d in self.diagnostics):
            self.size_warnings(sizes)
        if sizes is not None and sizes.smallest is not None:
            smallest = f"{sizes.smallest[0]}x{sizes.smallest[1]}"
            self.diagnostics = [
                replace(d, hint=f"{d.hint}; the smallest input this network accepts is {smallest}")
                if d.code == codes.TOO_SMALL
                else d
                for d in self.diagnostics
            ]
        taps, feature_errors = feature_taps(
            lowering.network,
            self.nodes,
            {node_id: result.out_shape for node_id, result in shapes.items()},
            self.geometry,
        )
        self.diagnostics.extend(feature_errors)
        diagnostics = sorted(self.diagnostics, key=Diagnostic.sort_key)
        last = next((s for s in reversed(stages) if s.name != "head"), None)
        return Analysis(
            lowering=lowering,
            diagnostics=diagnostics,
            input=lowering.input,
            output=shapes[OUTPUT].out_shape,
            params=params,
            buffers=buffers,
            macs=macs,
            layers=layers,
            stages=stages,
            ok=not any(d.severity == "error" for d in diagnostics),
            network=lowering.network.name,
            output_stride=last.output_stride if last else None,
            receptive_field=last.receptive_field if last else None,
            input_sizes=sizes,
            block_types=lowering.block_types,
            params_exact=params_exact,
            macs_exact=macs_exact,
            nodes=self.nodes,
            shapes=shapes,
            plan=lowering.plan,
            float_names=lowering.float_names,
            features=taps,
        )

    def input_layout(self, node: Node) -> None:
        """`--input 256x128x3`: an image's H x W x C where torch's C x H x W goes, read as 256
        channels of 128 x 3 pixels. Warned when the last size looks like channels (1, 3 or 4:
        grey, RGB, RGBA) and the first like a spatial size."""
        c, h, w = self.lowering.input
        if w in (1, 3, 4) and c > 4 and h > 4:
            self.report(
                _NodeCheck(self, node, False, None),
                codes.INPUT_LAYOUT,
                f"the input {c}x{h}x{w} reads as {c} channels of {h} x {w} pixels",
                hint=f"sizes are C x H x W, torch's order: a {c} x {h} image with {w} "
                f"channel{'s' * (w > 1)} is {w}x{c}x{h}",
                severity="warning",
            )

    # -- the graph as a whole
    def flatten_placement(self) -> None:
        """A flatten's output size depends on H x W at that instance; the generated code gives it
        to a block used as a network layer (`in_features`), not to a block a stage repeats or one
        inside another block, whose classes are written once for all instances."""
        stage_blocks = {b: e.name for e in self.lowering.stages for b in e.blocks}
        types = self.lowering.block_types
        for node_id, node in self.nodes.items():
            block = node.block
            if block is None or node.kind != "layer" or not _flattens(self.shapes[node_id]):
                continue
            parts = block.split(".")
            outer = [".".join(parts[:i]) for i in range(1, len(parts))]
            outer = [b for b in outer if b in types]
            if block in stage_blocks:
                where = f"a block of stage `{stage_blocks[block]}`"
            elif outer:
                where = f"inside block `{outer[-1]}`"
            else:
                continue
            self.report(
                _NodeCheck(self, node, self.shapes[node_id].tainted, None),
                codes.FLATTEN_IN_BLOCK,
                f"`{_local(node_id, block)}` flattens inside `{block}` ({types[block]}), "
                f"{where}: what follows needs its size, H x W at each instance, which only a "
                "block used as a layer of the network is given",
                hint=f"use {types[block]} as a layer of the network's head (`head {{ h = "
                f"{types[block]}(...) }}`), or flatten in the head",
                layer=block,
            )

    # -- warnings about the graph as a whole
    def unread_warnings(self, readers: dict[str, list]) -> None:
        """Rows and columns of a tensor that no layer reads: every reader is a window, and some
        stride over their kernels (ResNet v1's strided 1x1 on both paths of a downsampling
        block reads one position in four: the observation behind ResNet-D, He et al. 2019).
        Counted exactly at the analysed size: a position is read when some reader's window
        covers both its row and its column. `readers`: resgen.sizes.skipping_readers."""
        for tensor, found in readers.items():
            users = [r for r, _ in found]
            windows = [w for _, w in found]
            result = self.shapes[tensor]
            shape = result.out_shape
            if result.tainted or shape is None or len(shape) != 3 or len(users) > 12:
                continue
            if isinstance(shape, Bundle):  # a split's chunks: each read by its own layers
                continue
            height, width = shape[1], shape[2]
            rows = [reads(w[0], height) for w in windows]
            columns = [reads(w[1], width) for w in windows]
            read = 0
            for size in range(1, len(users) + 1):  # inclusion-exclusion over the readers
                for group in combinations(range(len(users)), size):
                    both = len(set.intersection(*(rows[i] for i in group))) * len(
                        set.intersection(*(columns[i] for i in group))
                    )
                    read += both if size % 2 else -both
            total = height * width
            if read >= total:
                continue
            skipping = [i for i, w in enumerate(windows) if skips(w[0]) or skips(w[1])]
            first = self.nodes[users[skipping[0]]]
            block = first.block
            who = "; ".join(
                f"{_local(users[i], block)} ({self.nodes[users[i]].label('x')}) reads "
                f"{len(rows[i])} of {height} rows and {len(columns[i])} of {width} columns"
                for i in skipping
            )
            message = (
                f"{_fraction(total - read, total)} of {self._tensor_name(tensor, users)} "
                f"({shape_text(shape)}) is read by no layer: {who}"
            )
            self.report(
                _NodeCheck(self, first, False, None),
                codes.UNREAD_INPUT,
                message,
                hint="a kernel at least as large as its stride reads every row; ResNet-D puts "
                "the stride on the 3x3 and average-pools the shortcut (std.timm's BottleneckD)",
                severity="warning",
                layer=block or first.id,
            )

    def _tensor_name(self, tensor: str, users: list[str]) -> str:
        if tensor == INPUT:
            return "the network input"
        blocks = {self.nodes[u].block for u in users}
        block = next(iter(blocks))
        if len(blocks) == 1 and block is not None and self.nodes[tensor].block != block:
            return f"the input of {block}"
        return f"the output of {tensor}"

    def size_warnings(self, sizes: InputSizes) -> None:
        """Input sizes above the smallest accepted one that fail: `summary` lists the sizes,
        check says that some fail, where, and why (one warning for both axes when they agree)."""
        failures = [f for f in sizes.failures if f is not None]
        if len(failures) == 2 and sizes.accepted[0] == sizes.accepted[1]:
            a, b = failures
            if (a.node, a.kind, a.size) == (b.node, b.kind, b.size):
                failures = [replace(a, axis=-1)]
        for failure in failures:
            node = self.nodes[failure.node]
            axis = failure.axis
            label = ("heights", "widths", "sizes")[axis]
            accepted = sizes.accepted[max(axis, 0)]
            other = ""
            if sizes.coupled:
                other = (
                    " (each with the other axis as analysed)"
                    if axis < 0
                    else f" (the {('width', 'height')[axis]} at {self.lowering.input[2 - axis]})"
                )
            block = node.block
            culprits = "; ".join(f"{_local(n, block)}: {text}" for n, text in failure.culprits)
            where, hint, at = self._failure_cause(failure, node)
            message = f"accepted input {label}{other}: {accepted}; {failure.size} fails {where}" + (
                f"; {culprits}" if culprits else ""
            )
            self.report(
                _NodeCheck(self, at, False, None),
                codes.INPUT_SIZES,
                message,
                hint=hint,
                severity="warning",
                layer=block or node.id,
            )

    def _failure_cause(self, failure: SizeFailure, node: Node) -> tuple[str, str, Node]:
        """Where a size fails in words, the hint, and the node to point at."""
        if failure.kind == "features":
            features = self.shapes[node.id].in_shape
            count = features[0] if features else "its"
            return (
                f"at `{node.id}`, built for {count} flattened features",
                "put `adaptive_avgpool(1)` before `flatten` to accept any size",
                node,
            )
        if failure.kind == "too-small":
            return f"at `{node.id}`: its window does not fit", SIZE_HINT, node
        for name, _ in failure.culprits:
            culprit = self.nodes[name]
            if _floors(culprit):
                return (
                    f"at the merge of {node.block}",
                    f"`ceil_mode=true` on `{_local(name, node.block)}` rounds its output up, as "
                    "the padded layers of the other path do",
                    culprit,
                )
        return f"at the merge of {node.block}", SIZE_HINT, node

    def _params_follow(self, node: Node) -> bool:
        """Whether a tainted node's parameter count is still the model's: conv and batch norm
        weights follow the channels, which a size mismatch keeps; a layer on flat features
        (linear) also follows the sizes it flattens, unless a pool to a fixed size fixed them
        after the error."""
        if node.id in self.channel_tainted:
            return False
        return node.op.accepts != "flat" or not any(
            p in self.size_tainted for p in self.pred[node.id]
        )

    def stage_infos(self, layers: list[LayerInfo]) -> list[StageInfo]:
        entries = {e.name: e for e in self.lowering.stages}
        order = ["stem", *entries, "head"]
        infos = {
            name: StageInfo(
                name,
                entries[name].block if name in entries else None,
                entries[name].repeats if name in entries else 1,
                None,
                None,
                blocks=list(entries[name].blocks) if name in entries else [],
                runs=list(entries[name].runs) if name in entries else [],
            )
            for name in order
        }
        last_node: dict[str, str] = {}
        for layer in layers:
            info = infos[layer.stage]
            if info.in_shape is None and not last_node.get(layer.stage):
                info.in_shape = layer.in_shape
            last_node[layer.stage] = layer.name
            info.params += layer.params
            info.buffers += layer.buffers
            info.macs += layer.macs
        previous: tuple | None = (1, 1, 1, 1)
        previous_shape = self.lowering.input
        for name in order:
            info = infos[name]
            tail = last_node.get(name)
            if tail is None:  # an empty stem or head: passes its input through
                info.in_shape = info.out_shape = previous_shape
                geometry = previous
            else:
                info.out_shape = self.shapes[tail].out_shape
                geometry = self.geometry.get(tail)
            if geometry is not None:
                info.output_stride = (geometry[0], geometry[1])
                info.receptive_field = (geometry[2], geometry[3])
            previous, previous_shape = geometry, info.out_shape
        return [infos[name] for name in order]


def _item(shape: Shape | None, edge: dict) -> Shape | None:
    """The shape an edge carries: one item of a bundle (`item` on the edge), or the whole."""
    item = edge.get("item")
    if item is not None and isinstance(shape, Bundle):
        return shape[item]
    return shape


def _is_source(record) -> bool:
    return isinstance(record, Source)


def _local(name: str, block: str | None) -> str:
    """A node's name inside its block (`conv1` for `layer2.0.conv1`)."""
    return name[len(block) + 1 :] if block and name.startswith(block + ".") else name


def _floors(node: Node) -> bool:
    """A strided pool that rounds its output down where ceil_mode would round it up."""
    op = node.op
    if op is None or op.param("ceil_mode") is None or node.args.get("ceil_mode"):
        return False
    windows = op.spatial(node.args)
    return isinstance(windows, tuple) and any(w.stride > 1 for w in windows)


def _fraction(part: int, whole: int) -> str:
    """`3/4` when the fraction is simple, else a count and a percentage."""
    exact = Fraction(part, whole)
    if exact.denominator <= 16:
        return f"{exact.numerator}/{exact.denominator}"
    return f"{part:,} of {whole:,} positions ({100 * part / whole:.0f}%)"


def _flattens(result: ShapeResult) -> bool:
    """Whether a layer turned C x H x W into flat features (a flatten)."""
    shapes = (result.in_shape, result.out_shape)
    if any(s is None or isinstance(s, Bundle) for s in shapes):  # a split of one chunk
        return False
    return len(shapes[0]) == 3 and len(shapes[1]) == 1


def _branch(pred: dict, nodes, tip: str, start: str) -> list[str]:
    """The nodes of one merge input, from the block input (exclusive) to `tip`, in order."""
    steps = []
    node = tip
    while node != start:
        steps.append(node)
        preds = pred[node]
        if len(preds) != 1 and nodes[node].kind != "merge":
            break
        main = [p for p, e in preds.items() if e["role"] != SKIP] or list(preds)
        node = main[0]
        if node == INPUT:
            break
    return steps[::-1]
