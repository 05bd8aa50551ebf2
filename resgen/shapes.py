"""Shape inference, shape checks and counts over the lowered graph (resgen.graph).

`analyse(spec, input_shape)` walks the graph in forward order with C, H and W tracked
separately, fills each node's in_shape, out_shape, params, buffers and MACs, and reports every
shape problem as a located Diagnostic (it never raises for them). Counts follow torch exactly
(`sum(p.numel() for p in model.parameters())`, BatchNorm buffers 2C+1) and MACs follow
torchvision's convention: conv and linear multiply-accumulates only. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import networkx as nx

from resgen import spec as S
from resgen.diagnostics import Diagnostic, Span
from resgen.graph import INPUT, OUTPUT, Lowering, lower, no_gc

MAC_CONVENTION = "torchvision convention: conv + linear multiply-accumulates"
SIZE_HINT = "S=1 and K=2P+1 keep the size; K=3, P=1, S=2 halves it"
_WINDOWED = ("conv", "maxpool", "avgpool")
_SAME_SHAPE = ("relu", "sigmoid", "dropout", "identity")
_COUNTED = ("conv", "batchnorm", "linear")  # the ops with parameters or MACs
_SIZE_SEARCH_WORK = 3_000_000  # steps x sizes; beyond it the size search gives up


Shape = tuple  # (C, H, W) or (F,)


@dataclass(slots=True)
class LayerInfo:
    name: str
    op: str
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


@dataclass
class InputSizes:
    """What input sizes the network takes, per axis (height, width), found by arithmetic."""

    smallest: tuple[int, int] | None  # smallest accepted H and W (None: none found)
    accepted: tuple[str, str]  # e.g. "any size >= 29"
    no_dropped_rows: tuple[str, str]  # sizes no strided layer drops rows or columns for
    exact: tuple[str, str]  # sizes every strided layer divides exactly, e.g. "multiples of 32"


@dataclass
class Analysis:
    graph: nx.DiGraph
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

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]


def analyse(spec: S.Spec, input_shape: tuple[int | None, int, int] | None = None) -> Analysis:
    """Lower, infer shapes, check and count. Shape problems are in `Analysis.diagnostics`."""
    with no_gc():
        lowering = lower(spec, input_shape)
        analysis = _Inference(lowering).run()
    analysis.diagnostics = _with_instantiation_notes(analysis.diagnostics, spec.network)
    return analysis


def _with_instantiation_notes(
    diagnostics: list[Diagnostic], network: S.Network
) -> list[Diagnostic]:
    """An error inside a block points at the block's definition, perhaps in a library; a note
    adds the line of the user's spec that put the block there (its stage, or its layer)."""
    sites = {
        stage.name: (stage.span, f"stage `{stage.name}` of {stage.block} blocks")
        for stage in network.stages
    }
    sites.update(
        {
            layer.name: (layer.span, f"layer `{layer.name}`, a {layer.callee}")
            for layer in network.stem + network.head
            if layer.kind == "block"
        }
    )
    noted = []
    for d in diagnostics:
        site = sites.get(d.layer.split(".")[0]) if d.layer else None
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


# ---------------------------------------------------------------------------------------------
# Per-axis window arithmetic (conv and pools), shared by inference, messages and the size search


def _at(value, axis: int) -> int:
    return value[axis] if isinstance(value, tuple) else value


def _window_params(args: dict, axis: int) -> tuple[int, int, int, int, bool]:
    """kernel, stride, padding, dilation, ceil_mode of a conv or pool along one axis."""
    return (
        _at(args["kernel"], axis),
        _at(args.get("stride", 1), axis),
        _at(args.get("padding", 0), axis),
        _at(args.get("dilation", 1), axis),
        bool(args.get("ceil_mode", False)),
    )


def window_out(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's output size, including ceil_mode's rule that the last window must start
    inside the input or the left padding."""
    span = n + 2 * p - d * (k - 1) - 1
    if not ceil:
        return span // s + 1
    out = (span + s - 1) // s + 1
    if (out - 1) * s >= n + p:
        out -= 1
    return out


def dropped_rows(n: int, k: int, s: int, p: int, d: int) -> int:
    """Input rows after the last window that no window reads (beyond the regular gap between
    windows when the kernel is narrower than the stride), for a floor-mode window."""
    effective = d * (k - 1) + 1
    span = n + 2 * p - effective
    if span < 0 or s == 1:
        return 0
    return max(0, span % s - p - max(0, s - effective))


def arithmetic(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> str:
    """`(56 + 2*1 - 5) / 2 + 1 = 27 (remainder 1 dropped)`: the output size, shown worked."""
    inner = f"{n} + 2*{p} - {k}" if d == 1 else f"{n} + 2*{p} - {d}*({k}-1) - 1"
    out = window_out(n, k, s, p, d, ceil)
    span = n + 2 * p - d * (k - 1) - 1
    if ceil:
        text = f"ceil(({inner}) / {s}) + 1 = {out}"
        if out != (span + s - 1) // s + 1:
            text += " (one fewer: the last window would start in the right padding)"
        return text
    text = f"({inner}) / {s} + 1 = {out}"
    if span >= 0 and span % s:
        text += f" (remainder {span % s} dropped)"
    return text


def show_shape(shape: Shape | None) -> str:
    return "?" if shape is None else "x".join(str(v) for v in shape)


# ---------------------------------------------------------------------------------------------

# Errors about a layer's own arguments cannot follow from an upstream error; channel errors
# follow only from an upstream channel error; the rest (sizes, merges, flattening) from any.
_ARGUMENT_CODES = frozenset({"bad-argument", "padding-too-large"})
_CHANNEL_CODES = frozenset({"groups", "channels"})


def _may_be_a_consequence(code: str, channels_tainted: bool) -> bool:
    if code in _ARGUMENT_CODES:
        return False
    if code in _CHANNEL_CODES:
        return channels_tainted
    return True


class _Inference:
    def __init__(self, lowering: Lowering):
        self.lowering = lowering
        self.graph = lowering.graph
        self.diagnostics = list(lowering.diagnostics)
        self._reported: set[tuple] = set()
        self.channel_errors: set[str] = set()  # nodes whose error may leave channels wrong
        self.channel_tainted: set[str] = set()  # those and every node after them
        self.size_tainted: set[str] = set()  # tainted nodes, up to a pool to a fixed size
        # per node: (stride h, stride w, receptive field h, receptive field w); None = global
        self.geometry: dict[str, tuple | None] = {}
        self._memo: dict[tuple, tuple] = {}  # (op, id(args), in_shape) -> results: blocks repeat
        self._axes: dict[int, tuple] = {}  # id(args) -> window params per axis

    def axes(self, args: dict) -> tuple:
        found = self._axes.get(id(args))
        if found is None:
            found = self._axes[id(args)] = (_window_params(args, 0), _window_params(args, 1))
        return found

    def report(
        self,
        node: str,
        attrs: dict,
        code: str,
        message: str,
        span: Span | None = None,
        hint: str | None = None,
        severity: str = "error",
        layer: str | None = None,
        kind: str = "",
        sizes_only: bool = False,
    ):
        if attrs["tainted"] and _may_be_a_consequence(code, node in self.channel_tainted):
            return  # of an error reported upstream: only the cause is reported
        if severity == "error" and not (code in ("too-small", "padding-too-large") or sizes_only):
            self.channel_errors.add(node)  # later channel counts are guesses too
        if severity == "error" and attrs.get("error") is None:
            attrs["error"] = message
        span = span or attrs["span"]
        # One report per place and kind: a block definition's mistake repeats in every instance
        # (and every stage), often with numbers that drift from block to block.
        key = (span, code, kind)
        if key in self._reported:
            return
        self._reported.add(key)
        self.diagnostics.append(Diagnostic(span, code, message, severity, layer or node, hint))

    def run(self) -> Analysis:
        graph = self.graph
        nodes = graph._node  # plain dict access: this loop runs once per layer instance
        preds = graph._pred
        for node, attrs in nodes.items():
            op = attrs["op"]
            if op == INPUT:
                self.geometry[node] = (1, 1, 1, 1)
                continue
            incoming = preds[node]
            if self.channel_tainted and any(p in self.channel_tainted for p in incoming):
                self.channel_tainted.add(node)
            if (
                self.size_tainted
                and op != "adaptive_avgpool"
                and any(p in self.size_tainted for p in incoming)
            ):
                self.size_tainted.add(node)
            # Downstream of a reported error shapes go on (from the main path) but are tainted:
            # they report nothing, so one mistake gives its own error and not its consequences.
            tainted = attrs["tainted"] = not attrs["known"] or any(
                nodes[p]["tainted"] for p in incoming
            )
            if op in ("add", "mul"):
                self.merge(node, attrs, incoming, nodes)
                attrs["tainted"] = tainted or attrs["error"] is not None
                if attrs["error"] is not None:
                    self.size_tainted.add(node)
                if node in self.channel_errors:
                    self.channel_tainted.add(node)
                continue
            pred = next(iter(incoming))
            shape = nodes[pred]["out_shape"]
            geometry = self.geometry.get(pred)
            attrs["in_shape"] = shape
            if shape is None or not attrs["known"] or op == OUTPUT:
                attrs["out_shape"] = shape if attrs["known"] else None
                attrs["tainted"] = tainted or shape is None
                self.geometry[node] = geometry
                continue
            args = attrs["args"]
            key = (op, id(args), shape, tainted)
            memo = self._memo.get(key)
            if memo is None:
                out = self.infer(node, attrs, op, shape, nodes, pred)
                self._memo[key] = (
                    out,
                    attrs["params"],
                    attrs["buffers"],
                    attrs["macs"],
                    attrs["error"],
                    node in self.channel_errors,
                )
            else:  # the same layer on the same input: its messages were reported already
                (
                    out,
                    attrs["params"],
                    attrs["buffers"],
                    attrs["macs"],
                    attrs["error"],
                    channel_error,
                ) = memo
                if channel_error:
                    self.channel_errors.add(node)
            attrs["out_shape"] = out
            attrs["tainted"] = tainted or attrs["error"] is not None or out is None
            if attrs["error"] is not None:
                self.size_tainted.add(node)
            if node in self.channel_errors:
                self.channel_tainted.add(node)
            if op in _WINDOWED and geometry is not None:
                (kh, sh, _, dh, _), (kw, sw, _, dw, _) = self.axes(args)
                jh, jw, rh, rw = geometry
                geometry = (jh * sh, jw * sw, rh + dh * (kh - 1) * jh, rw + dw * (kw - 1) * jw)
            elif op == "adaptive_avgpool":
                geometry = None  # each output sees the whole input
            self.geometry[node] = geometry
        return self.finish()

    # -- one node
    def infer(self, node: str, attrs: dict, op: str, shape: Shape, nodes, pred) -> Shape | None:
        args = attrs["args"]
        if op in _SAME_SHAPE:
            return shape
        if op == "flatten":
            return (math.prod(shape),)
        if op == "linear":
            return self.linear(node, attrs, args, shape, nodes, pred)
        if len(shape) != 3:
            self.report(
                node,
                attrs,
                "not-spatial",
                f"{op} needs a C x H x W input, but it gets the flat {show_shape(shape)}",
                hint="move it before the `flatten`",
            )
            return None
        channels = shape[0]
        if op == "batchnorm":
            given = args.get("channels")
            if given is not None and given != channels:
                self.report(
                    node,
                    attrs,
                    "channels",
                    f"batchnorm is declared for {given} "
                    f"channels but its input {show_shape(shape)} has {channels}",
                    span=attrs["arg_spans"].get("channels"),
                    hint=f"write `batchnorm` (channels follow the input) or "
                    f"`batchnorm({channels})`",
                )
            attrs["params"] = 2 * channels
            attrs["buffers"] = 2 * channels + 1
            return shape
        if op == "adaptive_avgpool":
            size = args["size"]
            return (channels, _at(size, 0), _at(size, 1))
        if op == "pad_channels":
            return self.pad_channels(node, attrs, args, shape)
        if op in _WINDOWED:
            return self.windowed(node, attrs, op, args, shape)
        raise AssertionError(op)

    def windowed(self, node: str, attrs: dict, op: str, args: dict, shape: Shape):
        channels, height, width = shape
        out_channels = channels
        if op == "conv":
            out_channels = args["channels"]
            groups = args["groups"]
            for label, value in (("input", channels), ("output", out_channels)):
                if value % groups:
                    self.report(
                        node,
                        attrs,
                        "groups",
                        f"{label} channels {value} are not "
                        f"divisible by groups={groups} ({value} / {groups} leaves "
                        f"{value % groups})",
                        span=attrs["arg_spans"].get("groups"),
                        hint="groups must divide both the input and the output channels",
                    )
                    break
        else:
            self.pool_padding(node, attrs, op, args)
        if op == "conv":  # the weights follow the channels, whatever the sizes do
            kernel_h, kernel_w = _at(args["kernel"], 0), _at(args["kernel"], 1)
            per_output = channels // args["groups"] * kernel_h * kernel_w
            attrs["params"] = out_channels * per_output + (out_channels if args["bias"] else 0)
        sizes = []
        dropped = []
        for axis, n in enumerate((height, width)):
            k, s, p, d, ceil = self.axes(args)[axis]
            out = window_out(n, k, s, p, d, ceil)
            label = "height" if axis == 0 else "width"
            if out < 1:
                worked = arithmetic(n, k, s, p, d, ceil)
                self.report(
                    node,
                    attrs,
                    "too-small",
                    f"output {label} {worked} is below 1: "
                    f"the {op} input {show_shape(shape)} is too small "
                    f"for kernel {k}"
                    + (f", dilation {d}" if d > 1 else "")
                    + (f", stride {s}" if s > 1 else ""),
                    hint=SIZE_HINT,
                )
                return None
            lost = 0 if ceil else dropped_rows(n, k, s, p, d)
            if lost:
                rows = "row" if axis == 0 else "column"
                dropped.append(
                    f"{label}: {arithmetic(n, k, s, p, d, ceil)}: the last {lost} "
                    f"input {rows}{'s' * (lost > 1)} of {n} "
                    f"{'is' if lost == 1 else 'are'} never read"
                )
            sizes.append(out)
        if dropped:
            self.report(
                node, attrs, "dropped-rows", "; ".join(dropped), severity="warning", hint=SIZE_HINT
            )
        if op == "conv":
            attrs["macs"] = out_channels * sizes[0] * sizes[1] * per_output
        return (out_channels, sizes[0], sizes[1])

    def pad_channels(self, node: str, attrs: dict, args: dict, shape: Shape) -> Shape | None:
        """Zero channels appended (split before and after): the count may only grow."""
        channels, wanted = shape[0], args["channels"]
        if wanted < channels:
            self.report(
                node,
                attrs,
                "channels",
                f"pad_channels({wanted}) would shrink its "
                f"input {show_shape(shape)} from {channels} channels to {wanted}; "
                "padding only adds channels",
                span=attrs["arg_spans"].get("channels"),
                hint=f"pad to at least {channels} channels, or project with `conv({wanted}, 1)`",
            )
            return None
        return (wanted, shape[1], shape[2])

    def pool_padding(self, node: str, attrs: dict, op: str, args: dict) -> None:
        """PyTorch refuses padding over half the (effective) kernel."""
        for k, _, p, d, _ in self.axes(args):
            limit = (d * (k - 1) + 1) // 2 if op == "maxpool" else k // 2
            if p > limit:
                kernel = f"{k}" if d == 1 else f"{d}*({k}-1) + 1 = {d * (k - 1) + 1}"
                self.report(
                    node,
                    attrs,
                    "padding-too-large",
                    f"padding {p} is more than half "
                    f"the {'effective ' if d > 1 else ''}kernel {kernel} (at most "
                    f"{limit}); PyTorch refuses it",
                    span=attrs["arg_spans"].get("padding"),
                    hint=f"use padding <= {limit}",
                )
                return

    def linear(self, node: str, attrs: dict, args: dict, shape: Shape, nodes, pred):
        if len(shape) != 1:
            self.report(
                node,
                attrs,
                "not-flat",
                f"linear needs a flat input, but it gets {show_shape(shape)}",
                hint="put `flatten` before it",
            )
            return None
        features = shape[0]
        given = args.get("in_features")
        if given is not None and given != features:
            source = nodes[pred]
            worked = ""
            if source["op"] == "flatten" and source["in_shape"] is not None:
                worked = f" = {' x '.join(str(v) for v in source['in_shape'])}"
            self.report(
                node,
                attrs,
                "in-features",
                f"linear is declared with in_features="
                f"{given} but its input has {features}{worked} features",
                span=attrs["arg_spans"].get("in_features"),
                hint="drop `in_features` (it follows the input) or make the input "
                f"{given} wide, e.g. with adaptive_avgpool before flatten",
            )
        out = args["features"]
        attrs["params"] = features * out + (out if args["bias"] else 0)
        attrs["macs"] = features * out
        return (out,)

    # -- merges
    def merge(self, node: str, attrs: dict, incoming, nodes) -> None:
        main = other = None
        role = "identity"
        for source, edge in incoming.items():
            if edge["role"] == "main":
                main = source
            else:
                other, role = source, edge["role"]
        main_shape, other_shape = nodes[main]["out_shape"], nodes[other]["out_shape"]
        attrs["in_shape"] = main_shape
        # Stride and receptive field come from the inputs that still have spatial extent: a
        # squeeze-excite gate (global pool, 1x1 convs) scales the block input's positions, it
        # does not erase them. Only when every input is global is the merge global.
        spatial = [g for g in (self.geometry.get(main), self.geometry.get(other)) if g is not None]
        self.geometry[node] = (
            tuple(map(max, *spatial)) if len(spatial) == 2 else (spatial[0] if spatial else None)
        )
        if main_shape is None or other_shape is None or not attrs["known"]:
            return
        result = _merged(attrs["op"], main_shape, other_shape)
        if result is None:  # reported; later layers carry on from the main path
            self.merge_error(node, attrs, role, main, other, main_shape, other_shape, nodes)
            result = main_shape
        attrs["out_shape"] = result

    def merge_error(self, node, attrs, role, main, other, main_shape, other_shape, nodes):
        block = attrs["block"]
        start = attrs["block_input"]
        side = "the identity" if role == "identity" else "the shortcut"
        why = []
        spatial = main_shape[1:] != other_shape[1:]
        for tip in (main, other):
            for step in _branch(self.graph, tip, start):
                why.extend(_explain(step, nodes[step], block, spatial))
        if not spatial and role == "identity":
            why.append(f"the identity keeps the block input's {other_shape[0]} channels")
        message = (
            f"main path gives {show_shape(main_shape)} but {side} gives "
            f"{show_shape(other_shape)}" + (f"; {'; '.join(why)}" if why else "")
        )
        if spatial:
            hint = SIZE_HINT
        elif role == "identity":
            hint = (
                "add a projection (`shortcut downsample when ... { conv(C, 1) batchnorm }`) "
                "or make the main path end with the input's channels"
            )
        else:
            hint = "make the shortcut's conv produce the main path's channels"
        self.report(
            node,
            attrs,
            "merge-mismatch",
            message,
            hint=hint,
            layer=block,
            sizes_only=spatial and main_shape[0] == other_shape[0],
        )

    # -- totals
    def finish(self) -> Analysis:
        lowering, graph = self.lowering, self.graph
        nodes = graph._node
        layers = []
        params = buffers = macs = 0
        params_exact = macs_exact = True
        for node, attrs in nodes.items():
            op = attrs["op"]
            if op in (INPUT, OUTPUT):
                continue
            if op in _COUNTED and (attrs["tainted"] or attrs["in_shape"] is None):
                # After an error: the MACs follow made-up sizes. Conv and batch norm weights
                # follow the channels only, which a size mismatch keeps; anything else is a
                # guess, or missing when there is no shape at all.
                macs_exact = False
                if (
                    attrs["in_shape"] is None
                    or not attrs["known"]
                    or not self._params_follow(node, op)
                ):
                    params_exact = False
            params += attrs["params"]
            buffers += attrs["buffers"]
            macs += attrs["macs"]
            layers.append(
                LayerInfo(
                    node,
                    attrs["op"],
                    attrs["out_shape"],
                    attrs["params"],
                    attrs["macs"],
                    attrs["span"],
                    attrs["stage"],
                    attrs["block"],
                    attrs["in_shape"],
                    attrs["buffers"],
                    attrs["branch"],
                    attrs["module"],
                )
            )
        stages = self.stage_infos(layers)
        sizes = input_sizes(graph, self.axes)
        if sizes.smallest is not None:
            smallest = f"{sizes.smallest[0]}x{sizes.smallest[1]}"
            self.diagnostics = [
                replace(d, hint=f"{d.hint}; the smallest input this network accepts is {smallest}")
                if d.code == "too-small"
                else d
                for d in self.diagnostics
            ]
        diagnostics = sorted(self.diagnostics, key=Diagnostic.sort_key)
        last = next((s for s in reversed(stages) if s.name != "head"), None)
        return Analysis(
            graph=graph,
            diagnostics=diagnostics,
            input=lowering.input,
            output=nodes[OUTPUT]["out_shape"],
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
        )

    def _params_follow(self, node: str, op: str) -> bool:
        """Whether a tainted node's parameter count is still the model's: conv and batch norm
        weights follow the channels, which a size mismatch keeps; a linear layer's also follow
        the sizes it flattens, unless a global pool fixed them after the error."""
        if node in self.channel_tainted:
            return False
        return op != "linear" or not any(p in self.size_tainted for p in self.graph._pred[node])

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
                info.out_shape = self.graph._node[tail]["out_shape"]
                geometry = self.geometry.get(tail)
            if geometry is not None:
                info.output_stride = (geometry[0], geometry[1])
                info.receptive_field = (geometry[2], geometry[3])
            previous, previous_shape = geometry, info.out_shape
        return [infos[name] for name in order]


def _merged(op: str, a: Shape, b: Shape) -> Shape | None:
    """The merge's output shape, or None when the inputs do not fit together. `mul` broadcasts
    (squeeze-excite multiplies C x H x W by C x 1 x 1); `add` needs equal shapes."""
    if a == b:
        return a
    if op != "mul" or len(a) != len(b):
        return None
    if all(x == y or x == 1 or y == 1 for x, y in zip(a, b, strict=True)):
        return tuple(max(x, y) for x, y in zip(a, b, strict=True))
    return None


def _branch(graph: nx.DiGraph, tip: str, start: str) -> list[str]:
    """The nodes of one merge input, from the block input (exclusive) to `tip`, in order."""
    steps = []
    node = tip
    while node != start:
        steps.append(node)
        preds = graph._pred[node]
        if len(preds) != 1 and graph._node[node]["op"] not in ("add", "mul"):
            break
        main = [p for p, e in preds.items() if e["role"] != "identity"] or list(preds)
        node = main[0]
        if node == INPUT:
            break
    return steps[::-1]


def _explain(node: str, attrs: dict, block: str | None, spatial: bool) -> list[str]:
    """Why `node` changed the shape: worked arithmetic for sizes, the count for channels."""
    before, after = attrs["in_shape"], attrs["out_shape"]
    if before is None or after is None or before == after:
        return []
    name = node[len(block) + 1 :] if block and node.startswith(block + ".") else node
    args = attrs["args"]
    if spatial and attrs["op"] in _WINDOWED and before[1:] != after[1:]:
        parts = []
        for axis, label in ((0, "height"), (1, "width")):
            work = arithmetic(before[1 + axis], *_window_params(args, axis))
            parts.append(work if axis == 0 else f"{label} {work}")
        same = before[1] == before[2] and _window_params(args, 0) == _window_params(args, 1)
        return [f"{name}: {parts[0] if same else ', '.join(parts)}"]
    if not spatial and before[0] != after[0]:
        return [f"{name} makes {after[0]} channels from {before[0]}"]
    return []


# ---------------------------------------------------------------------------------------------
# Input sizes: the network's spatial chain re-run over many sizes, per axis


def input_sizes(graph: nx.DiGraph, axes=None) -> InputSizes:
    program = _spatial_program(
        graph, axes or (lambda a: (_window_params(a, 0), _window_params(a, 1)))
    )
    results = [_search_axis(program, axis) for axis in (0, 1)]
    smallest = None if any(r[0] is None for r in results) else (results[0][0], results[1][0])
    return InputSizes(
        smallest,
        (results[0][1], results[1][1]),
        (results[0][2], results[1][2]),
        (results[0][3], results[1][3]),
    )


def _spatial_program(graph: nx.DiGraph, axes) -> list[tuple]:
    """Only the steps that can change H or W: (kind, inputs, per-axis args). Layers that keep
    every size (1x1 stride-1 convs, batch norm, ReLU, 'same' 3x3s) alias their input."""
    slot: dict[str, int] = {}
    program: list[tuple] = []
    nodes = graph._node
    for node, attrs in nodes.items():
        op = attrs["op"]
        preds = graph._pred[node]
        if op == INPUT:
            slot[node] = 0
            program.append(("input",))
            continue
        if len(preds) == 1 and op not in _WINDOWED and op != "adaptive_avgpool":
            source = slot.get(next(iter(preds)))
            if source is not None and attrs["known"]:
                slot[node] = source
            continue
        inputs = [slot.get(p) for p in preds]
        if any(i is None for i in inputs) or not attrs["known"]:
            continue  # not analysable (an earlier error); downstream steps drop out too
        args = attrs["args"]
        if op in ("add", "mul"):
            if inputs[0] == inputs[1]:
                slot[node] = inputs[0]
                continue
            program.append((op, inputs))
        elif op in _WINDOWED:
            per_axis = axes(args)
            if all(
                s == 1 and 2 * p == d * (k - 1) and (op == "conv" or p <= k // 2)
                for k, s, p, d, _ in per_axis
            ):
                slot[node] = inputs[0]  # size-preserving for every input size
                continue
            program.append(("window", inputs, per_axis))
        elif op == "adaptive_avgpool":
            size = args["size"]
            program.append(("fixed", inputs, (_at(size, 0), _at(size, 1))))
        else:
            slot[node] = inputs[0]
            continue
        slot[node] = len(program) - 1
    return program


def _run_axis(program: list[tuple], axis: int, n: int) -> tuple[bool, bool, bool]:
    """(accepted, no rows dropped, every stride divides exactly) for input size n."""
    sizes = [0] * len(program)
    sizes[0] = n
    clean = exact = True
    for index in range(1, len(program)):
        step = program[index]
        kind = step[0]
        if kind == "window":
            size = sizes[step[1][0]]
            k, s, p, d, ceil = step[2][axis]
            out = window_out(size, k, s, p, d, ceil)
            if out < 1:
                return False, False, False
            if s > 1:
                if size % s:
                    exact = False
                if not ceil and dropped_rows(size, k, s, p, d):
                    clean = False
            sizes[index] = out
        elif kind == "fixed":
            sizes[index] = step[2][axis]
        else:  # a merge: both inputs must agree (mul broadcasts a size of 1)
            a, b = sizes[step[1][0]], sizes[step[1][1]]
            if a != b and not (kind == "mul" and 1 in (a, b)):
                return False, False, False
            sizes[index] = max(a, b)
    return True, clean, exact


def _search_axis(program: list[tuple], axis: int):
    """Smallest accepted size and a description of each size set, for one axis."""
    period = 1
    strides = [1] * len(program)
    for index, step in enumerate(program[1:], 1):
        if step[0] == "window":
            strides[index] = strides[step[1][0]] * step[2][axis][1]
        elif step[0] in ("add", "mul"):
            strides[index] = max(strides[i] for i in step[1])
        else:
            strides[index] = strides[step[1][0]] if step[0] != "fixed" else 1
        period = math.lcm(period, strides[index])
    steps = max(1, len(program))
    budget = _SIZE_SEARCH_WORK // steps
    first = None
    n = 0
    results: list[tuple[bool, bool, bool]] = []
    limit = min(budget, max(4096, 8 * period))
    while n < limit:
        n += 1
        result = _run_axis(program, axis, n)
        results.append(result)
        if result[0] and first is None:
            first = n
            limit = min(budget, n + 3 * period + 64)
    if first is None:
        none = f"none up to {n}"
        return None, none, none, none
    return (
        first,
        _describe(results, 0, period),
        _describe(results, 1, period),
        _describe(results, 2, period),
    )


def _describe(results: list[tuple], which: int, period: int) -> str:
    """Describe {n : results[n-1][which]} as eventually periodic: 'multiples of 32', ..."""
    total = len(results)
    members = [i + 1 for i, r in enumerate(results) if r[which]]
    if not members:
        return f"none up to {total}"
    if total < 2 * period:
        return (
            f"from {members[0]}: "
            + ", ".join(map(str, members[:8]))
            + (", ..." if len(members) > 8 else "")
        )
    tail = range(total - period + 1, total + 1)
    residues = sorted({n % period for n in tail if results[n - 1][which]})
    if not residues:  # only some small sizes
        return "only " + ", ".join(map(str, members[:8])) + (", ..." if len(members) > 8 else "")
    for q in (d for d in range(1, period + 1) if period % d == 0):  # the smallest period
        folded = {r % q for r in residues}
        if all((r in residues) == (r % q in folded) for r in range(period)):
            period, residues = q, sorted(folded)
            break
    member = set(residues)
    start = total  # the pattern holds from here on
    for n in range(total, 0, -1):
        if results[n - 1][which] != (n % period in member):
            break
        start = n
    begin = next(n for n in range(start, total + 1) if n % period in member)
    if len(member) == period:
        return f"any size >= {begin}"
    if member == {0}:
        return f"multiples of {period}" + (f" from {begin}" if begin > period else "")
    if len(member) == 1:
        return f"{period}k + {residues[0]} (from {begin})"
    return (
        f"n mod {period} in {{{', '.join(map(str, residues))}}} (from {begin})"
        if len(member) <= 8
        else f"{len(member)} of every {period} sizes from {begin}"
    )
