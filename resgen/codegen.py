"""PyTorch source for a resolved spec: one nn.Module per block type, the network, a factory.

The work is done in two steps. Here every spec value becomes code (validated identifiers,
`repr()` literals, calls assembled from parts, block arguments per `resgen.stages.plan_stage`);
the templates (templates/*.jinja) then only loop over that view and interpolate it. The rendered
text is parsed with `ast` and checked against an allow-list before anyone can import it.

Channel counts are carried symbolically, as .arch expressions: inside a block they are written
in terms of the block's parameters (`nn.BatchNorm2d(width)`), in the network they fold to ints
unless they depend on a network parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from resgen import expr as E
from resgen import spec as S
from resgen.diagnostics import Diagnostic, Span, SpecError
from resgen.graph import application_id
from resgen.guard import UnsafeCode, check_source
from resgen.ops import OPS, REQUIRED
from resgen.output import PY_MARK
from resgen.render import (
    Atom,
    Call,
    Code,
    CodeError,
    Keyword,
    Repeated,
    Starred,
    dotted,
    environment,
    ident,
    literal,
)
from resgen.stages import plan_stage

GENERATED_MARK = PY_MARK
MODULE_TEMPLATE = "module.py.jinja"

# torch.nn arguments passed by position, after the incoming channel count (torchvision's style:
# nn.Conv2d(64, 128, kernel_size=3, ...), nn.Linear(2048, num_classes)).
POSITIONAL = {
    "conv": ("channels",),
    "linear": ("features",),
    "adaptive_avgpool": ("size",),
    "pad_channels": ("channels",),
}

# Layer kinds whose output channel count is an argument of the layer (the ops table says which).
CHANNEL_ARGUMENT = {name: op.out_channels for name, op in OPS.items() if op.out_channels}


# The "channel count" after a flatten inside a block: not expressible in the block's code.
_FLATTENED = S.Ref(span=Span("<flatten>", 1, 1, 1, 1), name="<flattened features>")


# ---------------------------------------------------------------------------------------------
# The view the templates render


@dataclass
class ParamView:
    name: str
    annotation: str
    default: str | None  # Python source; None for a required parameter
    star_before: bool = False  # a required parameter after defaulted ones is keyword-only
    late_default: str | None = None  # default that refers to earlier parameters


@dataclass
class LayerView:
    attr: str
    build: Code
    comment: str | None = None


@dataclass
class StepView:
    call: str  # `self.conv1`
    comment: str | None = None


@dataclass
class ShortcutView:
    attr: str
    condition: str | None  # None: always built
    build: Code
    after: int | None = None  # `from LAYER`: index of the main step whose output it reads
    input: str = "x"  # the forward-local the shortcut is applied to


@dataclass
class BlockView:
    name: str
    expansion: str | None  # class attribute value
    expansion_local: str | None  # expansion that depends on parameters
    params: list[ParamView]
    lets: list[tuple[str, str]]
    layers: list[LayerView]  # main path
    main: list[StepView]
    shortcut: ShortcutView | None
    merge: str | None
    post_layers: list[LayerView]
    post: list[StepView]

    @property
    def identity_first(self) -> bool:
        """`identity = x` up front: the merge sees x unless a shortcut always replaces it. A
        gate (`merge mul` without a shortcut) reads `x * out` instead, as squeeze-excite does."""
        if self.merge == "mul" and self.shortcut is None:
            return False
        return self.merge is not None and (
            self.shortcut is None or self.shortcut.condition is not None
        )


@dataclass
class ZeroInitView:
    block: str
    weight: str  # `module.bn3.weight`


@dataclass
class NetworkView:
    class_name: str
    factory: str
    params: list[ParamView]
    lets: list[tuple[str, str]]
    layers: list[LayerView]
    steps: list[StepView]
    zero_init: list[ZeroInitView]


@dataclass
class ModuleView:
    source: str
    doc: list[str]
    blocks: list[BlockView]
    network: NetworkView
    helpers: tuple[str, ...] = ()  # templates of helper modules (ops with `helper`), in use order

    @property
    def header_noqa(self) -> str:
        """A spec whose file name alone overflows the header line."""
        return "  # noqa: E501" if len(self.source) > HEADER_PATH_ROOM else ""


# ---------------------------------------------------------------------------------------------
# Public entry points


def generate(
    spec: S.Spec, analysis=None, *, templates: str | Path | None = None, source: str | None = None
) -> str:
    """The generated module for `spec` as text.

    `analysis` (resgen.shapes.Analysis) supplies shape comments and the params/MACs docstring;
    it is computed when not given. Raises SpecError when the spec has errors.
    """
    if spec.network is None:
        raise SpecError(
            [Diagnostic(spec.span, "no-network", f"{spec.path} defines no network to generate")]
        )
    if analysis is None:
        analysis = _analyse(spec)
    if analysis is not None and not analysis.ok:
        raise SpecError(analysis.diagnostics)
    try:
        view = _ModuleBuilder(spec, analysis, _source_label(source or display_path(spec.path)))
        view = view.build()
        text = environment(templates).get_template(MODULE_TEMPLATE).render(module=view)
    except CodeError as err:
        raise SpecError([Diagnostic(spec.network.span, "codegen", str(err))]) from None
    except E.EvalError as err:
        raise SpecError([Diagnostic(err.span, err.code, err.message, hint=err.hint)]) from None
    try:
        check_source(text)
    except UnsafeCode as err:  # only a user's --templates can get here
        raise SpecError([Diagnostic(spec.network.span, "unsafe-code", str(err))]) from None
    return text


def display_path(path: str) -> str:
    """The spec path as written in the header: relative to the working directory when inside it,
    with forward slashes, so the output does not depend on where the checkout lives."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(Path.cwd())
        except ValueError:
            pass
    return p.as_posix()


HEADER_PATH_ROOM = 100 - len(GENERATED_MARK + " from ")


def _source_label(path: str) -> str:
    """The spec path for the header comment: printable, and short enough for the line (else
    just the file name)."""
    path = "".join(ch if ch.isprintable() else "?" for ch in path)
    return path if len(path) <= HEADER_PATH_ROOM else path.rsplit("/", 1)[-1]


def _analyse(spec: S.Spec):
    from resgen.shapes import analyse

    return analyse(spec)


# ---------------------------------------------------------------------------------------------
# Spec -> view


class _Scope:
    """Turns expressions of one scope (a block or the network) into Python, noting the names
    used so only the `let`s that matter become locals."""

    def __init__(self, rename: Mapping[str, str] | None = None):
        self.rename = dict(rename or {})
        self.used: set[str] = set()

    def name(self, n: str) -> str:
        self.used.add(n)
        return self.rename.get(n) or ident(n)

    def code(self, expr: S.Expr) -> str:
        return E.to_python(expr, self.name)

    def atom(self, expr: S.Expr) -> Atom:
        return Atom(self.code(expr))


def _annotation(value: E.Value | None) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return "float"
    if isinstance(value, tuple):
        return "tuple[int, int]"
    return "int"


def _constant(expr: S.Expr | None) -> E.Value | None:
    if expr is None or E.free_refs(expr):
        return None
    return E.evaluate(expr, {})


def _params(params: Iterable[S.Param], scope: _Scope, first: list[ParamView]) -> list[ParamView]:
    views, seen_default = list(first), False
    for p in params:
        name = ident(p.name)
        value = _constant(p.default)
        if p.default is None:
            views.append(ParamView(name, "int", None, star_before=seen_default))
        elif value is None:  # refers to earlier parameters: resolved in the body
            views.append(
                ParamView(
                    name, "int | None", "None", late_default=E.to_python(p.default, scope.name)
                )
            )
            seen_default = True
        else:
            views.append(ParamView(name, _annotation(value), literal(value)))
            seen_default = True
    # Only the first keyword-only parameter carries the `*`.
    starred = False
    for v in views:
        v.star_before, starred = v.star_before and not starred, starred or v.star_before
    return views


def _lets(lets: Iterable[S.Let], scope: _Scope) -> list[tuple[str, str]]:
    """The lets the emitted code uses, directly or through later lets (unused ones would be dead
    locals), each as (name, Python source)."""
    lets = list(lets)
    needed = set(scope.used)
    keep = []
    for let in reversed(lets):
        if let.name in needed:
            keep.append(let)
            needed |= {r.name for r in E.free_refs(let.value)}
    kept = {let.name for let in keep}
    return [(ident(let.name), scope.code(let.value)) for let in lets if let.name in kept]


def _same(a: S.Expr, b: S.Expr | None) -> bool:
    """Whether two expressions are certainly equal (both constant and the same value)."""
    if b is None:
        return False
    va, vb = _constant(a), _constant(b)
    return va is not None and vb is not None and type(va) is type(vb) and va == vb


class _ModuleBuilder:
    def __init__(self, spec: S.Spec, analysis, source: str):
        self.spec, self.analysis, self.source = spec, analysis, source
        self.net: S.Network = spec.network
        self.blocks: dict[str, S.Block] = spec.blocks
        self.used_blocks: list[str] = []  # dependency order: a block after the blocks it uses
        self.helpers: dict[str, str] = {}  # helper class -> its template, for ops not in torch.nn

    def build(self) -> ModuleView:
        network = self._network()
        blocks = [self._block(self.blocks[name]) for name in self.used_blocks]
        names = [b.name for b in blocks] + [network.class_name, network.factory, *self.helpers]
        clash = sorted({n for n in names if names.count(n) > 1} | ({"nn", "Tensor"} & set(names)))
        if clash:
            raise CodeError(
                f"the generated module would define `{clash[0]}` twice; give the "
                "network a different `class` or name"
            )
        return ModuleView(self.source, self._doc(), blocks, network, tuple(self.helpers.values()))

    # -- channels, symbolically
    def _use_block(self, name: str) -> S.Block:
        block = self.blocks[name]
        if name not in self.used_blocks:
            shortcut = block.shortcut.layers if block.shortcut else ()
            for layer in _walk_layers(block.main + block.post + shortcut):
                if layer.kind == "block":
                    self._use_block(layer.callee)
            if name not in self.used_blocks:
                self.used_blocks.append(name)
        return block

    def _block_env(
        self, block: S.Block, in_channels: S.Expr, args: Mapping[str, S.Expr]
    ) -> dict[str, S.Expr]:
        """Block-scope names as expressions of the caller's scope."""
        env: dict[str, S.Expr] = {"in_channels": in_channels}
        for p in block.params:
            given = args.get(p.name)
            env[p.name] = given if given is not None else E.substitute(p.default, env.get)
        if block.expansion is not None:
            env["expansion"] = E.substitute(block.expansion, env.get)
        for let in block.lets:
            env[let.name] = E.substitute(let.value, env.get)
        return env

    def _block_out(self, block: S.Block, in_channels: S.Expr, args: Mapping[str, S.Expr]) -> S.Expr:
        inner = self._channels(block.main + block.post, S.Ref(span=block.span, name="in_channels"))
        return E.substitute(inner, self._block_env(block, in_channels, args).get)

    def _channels(self, layers: Iterable[S.Layer], channels: S.Expr) -> S.Expr:
        for layer in layers:
            channels = self._layer_channels(layer, channels)
        return channels

    def _layer_channels(self, layer: S.Layer, channels: S.Expr) -> S.Expr:
        if layer.kind == "op" and layer.callee in CHANNEL_ARGUMENT:
            return layer.arg(CHANNEL_ARGUMENT[layer.callee])
        if layer.kind == "op" and layer.callee == "flatten":
            # C x H x W features: H and W are only known per instance, so only the network
            # (which _network_layer handles with the analysed shape) can say how many.
            return _FLATTENED
        if layer.kind == "block":
            return self._block_out(self.blocks[layer.callee], channels, _args(layer))
        if layer.kind == "seq":
            return self._channels(layer.items, channels)
        return channels

    # -- layers
    def _build(
        self, layer: S.Layer, channels: S.Expr, scope: _Scope, node: str | None = None
    ) -> Code:
        """The constructor call of one layer that receives `channels` channels. `node` is the
        layer's graph node at network level (None inside a block), where a flatten's size is
        known from the analysis."""
        if layer.kind == "seq":
            items = []
            for index, item in enumerate(layer.items):
                item_node = f"{node}.{index}" if node is not None else None
                items.append(self._build(item, channels, scope, item_node))
                channels = (
                    self._after(item, channels, item_node)
                    if item_node is not None
                    else self._layer_channels(item, channels)
                )
            return Call("nn.Sequential", tuple(items))
        if layer.kind == "block":
            block = self._use_block(layer.callee)
            return Call(
                ident(block.name),
                (scope.atom(channels), *_block_arguments(block, _args(layer), scope)),
            )
        if layer.kind != "op":
            raise CodeError(f"layer `{layer.name}` of kind {layer.kind} cannot be built")
        op = OPS[layer.callee]
        args: list[Code] = []
        if op.input_channels is not None:
            if channels is _FLATTENED:
                raise E.EvalError(
                    layer.span,
                    f"`{layer.callee}` after `flatten` inside a block: "
                    "its input size depends on H x W, which a block's code cannot "
                    "know",
                    "flatten-in-block",
                    hint="put flatten and what follows it in the network's head",
                )
            args.append(scope.atom(channels))
        given = _args(layer)
        positional = POSITIONAL.get(op.name, ())
        for name in positional:
            if name in given:
                args.append(scope.atom(given[name]))
        for p in op.params:
            value = given.get(p.name)
            if value is None or p.name in positional or p.torch is None:
                continue
            if (
                p.default is not REQUIRED
                and _constant(value) == p.default
                and (type(_constant(value)) is type(p.default))
            ):
                continue  # torchvision does not spell out defaults
            args.append(Keyword(ident(p.torch), scope.atom(value)))
        if op.helper is not None:  # a small module the generated file defines (PadChannels)
            self.helpers[ident(op.torch_class)] = op.helper
            return Call(ident(op.torch_class), tuple(args))
        return Call(f"nn.{dotted(op.torch_class)}", tuple(args))

    # -- blocks
    def _block(self, block: S.Block) -> BlockView:
        expansion_value = _constant(block.expansion)
        constant_expansion = block.expansion is not None and expansion_value is not None
        scope = _Scope({"expansion": "self.expansion"} if constant_expansion else {})
        params = _params(block.params, scope, [ParamView("in_channels", "int", None)])
        expansion_local = None
        if block.expansion is not None and not constant_expansion:
            expansion_local = scope.code(block.expansion)
        layers, main = [], []
        channels: S.Expr = S.Ref(span=block.span, name="in_channels")
        sc = block.shortcut
        source: tuple[int, S.Expr] | None = None  # `from LAYER`: its step and channels
        for layer in block.main:
            channels = self._block_layer(layer, channels, scope, layers, main)
            if (
                sc is not None
                and sc.source is not None
                and source is None
                and layer.kind != "reuse"
                and layer.name == sc.source
            ):
                source = (len(main) - 1, channels)
        shortcut = None
        if sc is not None:
            start = S.Ref(span=sc.span, name="in_channels") if source is None else source[1]
            build = self._build(
                S.Layer(span=sc.span, kind="seq", name=sc.name, items=sc.layers), start, scope
            )
            condition = scope.code(sc.condition) if sc.condition is not None else None
            shortcut = ShortcutView(ident(sc.name), condition, build)
            if source is not None:
                shortcut.after, shortcut.input = source[0], "shortcut_input"
        post_layers: list[LayerView] = []
        post: list[StepView] = []
        for layer in block.post:
            channels = self._block_layer(layer, channels, scope, post_layers, post)
        lets = _lets(block.lets, scope)
        return BlockView(
            name=ident(block.name),
            expansion=literal(expansion_value) if constant_expansion else None,
            expansion_local=expansion_local,
            params=params,
            lets=lets,
            layers=layers,
            main=main,
            shortcut=shortcut,
            merge=block.merge,
            post_layers=post_layers,
            post=post,
        )

    def _block_layer(
        self,
        layer: S.Layer,
        channels: S.Expr,
        scope: _Scope,
        layers: list[LayerView],
        steps: list[StepView],
    ) -> S.Expr:
        if layer.kind == "reuse":
            steps.append(StepView(f"self.{ident(layer.callee or layer.name)}"))
            return channels
        attr = ident(layer.name)
        layers.append(LayerView(attr, self._build(layer, channels, scope)))
        steps.append(StepView(f"self.{attr}"))
        return self._layer_channels(layer, channels)

    # -- network
    def _network(self) -> NetworkView:
        net = self.net
        scope = _Scope()
        params = _params(net.params, scope, [])
        env = _network_env(net)
        layers: list[LayerView] = []
        steps: list[StepView] = []
        channels: S.Expr = E.literal(self._input()[0], net.span)
        applied: dict[str, int] = {}
        for layer in net.stem:
            channels = self._network_layer(layer, channels, scope, layers, steps, applied)
        dilation = 1
        for stage in net.stages:
            block = self._use_block(stage.block)
            plan = plan_stage(stage, block, env, dilation)
            dilation = plan.dilation_after
            build, channels = self._stage(stage, block, plan, channels, scope)
            info = self._stage_info(stage.name)
            comment = None
            if info is not None:
                comment = (
                    f"{stage.name}: {_repeats_text(stage, plan)} x {block.name}, "
                    f"{_shape(info.in_shape)} -> {_shape(info.out_shape)}"
                )
            layers.append(LayerView(ident(stage.name), build, comment))
            steps.append(
                StepView(
                    f"self.{ident(stage.name)}",
                    _shape(info.out_shape) if info is not None else None,
                )
            )
        for layer in net.head:
            channels = self._network_layer(layer, channels, scope, layers, steps, applied)
        zero_init = [
            z for name in self.used_blocks if (z := _zero_init(self.blocks[name])) is not None
        ]
        has_zero_param = any(p.name == "zero_init_residual" for p in net.params)
        if zero_init and not has_zero_param:
            params.append(ParamView("zero_init_residual", "bool", "False"))
        lets = _lets(net.lets, scope)
        class_name = ident(net.python_class)
        return NetworkView(class_name, ident(net.name), params, lets, layers, steps, zero_init)

    def _input(self) -> tuple[int, int, int]:
        if self.analysis is not None:
            return tuple(self.analysis.input)
        return self.net.input.as_tuple()

    def _network_layer(
        self,
        layer: S.Layer,
        channels: S.Expr,
        scope: _Scope,
        layers: list[LayerView],
        steps: list[StepView],
        applied: dict[str, int],
    ) -> S.Expr:
        target = layer.callee if layer.kind == "reuse" else layer.name
        applied[target] = applied.get(target, 0) + 1
        node = application_id(target, applied[target])
        if layer.kind == "seq" and layer.items:  # an nn.Sequential: its last layer's output
            node = f"{target}.{len(layer.items) - 1}"
        out_shape = self._node_shape(node)
        steps.append(StepView(f"self.{ident(target)}", _shape(out_shape) if out_shape else None))
        if layer.kind == "reuse":
            return channels
        layers.append(LayerView(ident(layer.name), self._build(layer, channels, scope, target)))
        return self._after(layer, channels, target)

    def _after(self, layer: S.Layer, channels: S.Expr, node: str) -> S.Expr:
        """The channel count after a network-level layer: as in a block, except that a flatten
        gives C x H x W features, H and W from the shape engine."""
        if layer.kind == "seq":
            for index, item in enumerate(layer.items):
                channels = self._after(item, channels, f"{node}.{index}")
            return channels
        after = self._layer_channels(layer, channels)
        if after is not _FLATTENED:
            return after
        in_shape = self._node_shape(node, "in_shape")
        if in_shape is None or len(in_shape) != 3:
            raise E.EvalError(
                layer.span, "cannot tell the size of `flatten`'s input", "flatten-size"
            )
        area = in_shape[1] * in_shape[2]
        return (
            channels
            if area == 1
            else E.fold(
                S.BinOp(span=layer.span, op="*", left=channels, right=E.literal(area, layer.span))
            )
        )

    def _stage(
        self, stage: S.Stage, block: S.Block, plan, channels: S.Expr, scope: _Scope
    ) -> tuple[Code, S.Expr]:
        """`nn.Sequential(first, *[rest for _ in range(n - 1)])`, or each block written out when
        the blocks after the first do not all look alike (their input grows, say)."""
        name = ident(block.name)
        first = Call(name, (scope.atom(channels), *_block_arguments(block, plan.first, scope)))
        out = self._block_out(block, channels, plan.first)
        items: list[Code] = [first]
        repeats_free = bool(E.free_refs(stage.repeats))
        if plan.repeats > 1 or repeats_free:
            rest = Call(name, (scope.atom(out), *_block_arguments(block, plan.rest, scope)))
            after = self._block_out(block, out, plan.rest)
            if E.to_python(after) == E.to_python(out):
                if repeats_free and str(rest) == str(first):
                    items = [Starred(Repeated(first, scope.code(stage.repeats)))]
                elif repeats_free:
                    count = scope.code(
                        S.BinOp(
                            span=stage.span,
                            op="-",
                            left=stage.repeats,
                            right=E.literal(1, stage.span),
                        )
                    )
                    items.append(Starred(Repeated(rest, count)))
                elif str(rest) == str(first):
                    items = [Starred(Repeated(first, str(plan.repeats)))]
                elif plan.repeats == 2:
                    items.append(rest)
                else:
                    items.append(Starred(Repeated(rest, str(plan.repeats - 1))))
            elif repeats_free:
                raise CodeError(
                    f"stage `{stage.name}` changes its channel count from block to "
                    "block, so its repeat count must be a constant"
                )
            else:
                current = out
                for _ in range(plan.repeats - 1):
                    items.append(
                        Call(
                            name, (scope.atom(current), *_block_arguments(block, plan.rest, scope))
                        )
                    )
                    current = self._block_out(block, current, plan.rest)
                after = current
            out = after
        return Call("nn.Sequential", tuple(items)), out

    # -- analysis lookups
    def _node_shape(self, node: str, which: str = "out_shape") -> tuple | None:
        if self.analysis is None or node not in self.analysis.graph.nodes:
            return None
        shape = self.analysis.graph.nodes[node].get(which)
        return tuple(shape) if shape else None

    def _stage_info(self, name: str):
        if self.analysis is None:
            return None
        return next((s for s in self.analysis.stages if s.name == name), None)

    def _doc(self) -> list[str]:
        net, a = self.net, self.analysis
        lines = [f"{net.name}: {net.python_class}, generated by resgen."]
        if a is None:
            return lines
        output = _shape(a.output) if a.output else "?"
        lines += [
            "",
            f"Input {_shape(a.input)} -> output {output}, at the default arguments:",
            f"{a.params:,} parameters, {a.macs:,} multiply-accumulates "
            f"({a.macs / 1e9:.2f} GMACs) per image.",
        ]
        if a.stages:
            rows = [("stage", "blocks", "output", "params", "MACs")]
            for s in a.stages:
                blocks = f"{s.repeats} x {s.block}" if s.block else "-"
                rows.append((s.name, blocks, _shape(s.out_shape), f"{s.params:,}", f"{s.macs:,}"))
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            lines.append("")
            for r in rows:
                cells = [
                    r[0].ljust(widths[0]),
                    r[1].ljust(widths[1]),
                    r[2].ljust(widths[2]),
                    r[3].rjust(widths[3]),
                    r[4].rjust(widths[4]),
                ]
                lines.append("  ".join(cells).rstrip())
        return lines


def _network_env(net: S.Network) -> dict[str, E.Value]:
    env: dict[str, E.Value] = {}
    for p in net.params:
        env[p.name] = E.evaluate(p.default, env)
    for let in net.lets:
        env[let.name] = E.evaluate(let.value, env)
    return env


def _args(layer: S.Layer) -> dict[str, S.Expr]:
    return {a.name: a.value for a in layer.args}


def _walk_layers(layers: Iterable[S.Layer]) -> Iterable[S.Layer]:
    for layer in layers:
        yield layer
        yield from _walk_layers(layer.items)


def _block_arguments(block: S.Block, given: Mapping[str, S.Expr], scope: _Scope) -> list[Code]:
    """Leading required parameters by position, then keywords for values that differ from the
    block's defaults (`Bottleneck(256, 128, stride=2)`)."""
    args: list[Code] = []
    positional = True
    for p in block.params:
        value = given.get(p.name)
        if positional and p.default is None and value is not None:
            args.append(scope.atom(value))
            continue
        positional = False
        if value is None or _same(value, p.default):
            continue
        args.append(Keyword(ident(p.name), scope.atom(value)))
    return args


def _zero_init(block: S.Block) -> ZeroInitView | None:
    """The last batchnorm of a residual (`merge add`) block's main path: zeroing its weight
    starts the block as an identity, as torchvision's zero_init_residual does."""
    if block.merge != "add":
        return None
    for layer in reversed(block.main):
        if layer.kind == "op" and layer.callee == "batchnorm":
            return ZeroInitView(ident(block.name), f"module.{ident(layer.name)}.weight")
        if layer.kind == "seq":
            for index in reversed(range(len(layer.items))):
                item = layer.items[index]
                if item.kind == "op" and item.callee == "batchnorm":
                    return ZeroInitView(
                        ident(block.name), f"module.{ident(layer.name)}[{index}].weight"
                    )
    return None


def _repeats_text(stage: S.Stage, plan) -> str:
    return E.source_text(stage.repeats) if E.free_refs(stage.repeats) else str(plan.repeats)


def _shape(shape: Iterable[int] | None) -> str:
    return "x".join(str(d) for d in shape) if shape is not None else "?"


# Names callers may want without reaching into the builder.
__all__ = ["GENERATED_MARK", "check_source", "display_path", "generate"]
