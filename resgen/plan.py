"""Elaboration: a resolved spec becomes a typed plan, once, for every later stage to read.

A `BlockPlan` is a block type taken apart: its names in the order they are bound (`in_channels`,
parameters, `expansion`, lets), each layer as a `Step` (its op or block, its bound argument
expressions, its module path), where the shortcut's `from` cut falls, its merge op, and its output
channel count as an expression of its own names. The shape engine (resgen.graph) evaluates the
plan with numbers, once per block instance; the code generator (resgen.codegen) renders the same
plan with expressions. Neither rebuilds a block's scope or walks its layers on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from resgen import expr as E
from resgen import ops
from resgen import spec as S
from resgen.diagnostics import Span
from resgen.expr import Value
from resgen.names import BLOCK_INPUT, IN_CHANNELS, POSITION
from resgen.ops.base import Items
from resgen.ops.layers import FLAT

StepKind = Literal["op", "block", "seq", "reuse", "dynamic", "repeat"]
Channels = S.Expr | object  # an expression, or FLAT after a flatten


@dataclass(frozen=True, eq=False)
class Step:
    """One layer of a path.

    kind op     a built-in or plugin op (`op`), arguments bound by parameter name
         block  a block type used as a layer (`block` names it): a submodule
         seq    an nn.Sequential of unnamed `items` (paths conv1.0, conv1.1, ...)
         reuse  a module declared earlier (`target`, declared by step `applies`) applied
                again: a parameter-free one, or shared weights (CBAM's MLP)
         dynamic  a layer made by the op that the name `via` holds per instance (norm_layer)
         repeat  `items` run `count` times with `var` bound to the turn (0, 1, ...); their
                modules are ModuleLists (`convs.0`, `convs.1`), the step's value the bundle
                of each turn's output
    `inputs` are what `from` names (empty: the previous step's output); a step with a
    `condition` (`when`) exists only in the instances where it holds, else its input passes.
    `attr` is the attribute the module is stored under (None for unnamed items of a seq or
    shortcut); `path` is its module path inside the owner (`conv1`, `downsample.0`, `conv1.2`),
    so a node id is the instance's prefix plus `path`.
    """

    kind: StepKind
    attr: str | None
    path: str
    span: Span
    layer: S.Layer
    op: ops.Op | None = None
    block: str | None = None
    args: Mapping[str, S.Expr] = field(default_factory=dict)
    items: tuple[Step, ...] = ()
    target: str | None = None
    via: str | None = None  # kind dynamic: the name (a param or let) holding the op
    inputs: tuple[S.Input, ...] = ()
    condition: S.Expr | None = None
    var: str | None = None  # repeat
    count: S.Expr | None = None  # repeat
    applies: Step | None = None  # reuse: the step that declares the module it applies again

    @property
    def key(self) -> str:
        """The last part of the path: the child's name in its container (`conv1`, `0`, `bn`)."""
        return self.path.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Binding:
    """A name of a block or network scope and how it gets its value: `given` (in_channels, or a
    parameter the caller may set; `expr` is then its default, None when required) or computed
    from `expr` (expansion, lets)."""

    name: str
    expr: S.Expr | None
    given: bool


@dataclass(frozen=True)
class Scope:
    """The names of a block (or the network) in the order they are bound: each sees the ones
    before it. One order, two evaluations: with numbers for an instance, with expressions for
    generated code."""

    bindings: tuple[Binding, ...]

    def values(
        self,
        given: Mapping[str, Value | None],
        evaluate: Callable[[S.Expr, Mapping[str, Value], set[str]], Value | None],
    ) -> tuple[dict[str, Value], set[str]]:
        """Every name's value for one instance, and the names that could not be evaluated.
        `given` holds the caller's arguments (None: failed upstream); `evaluate(expr, values,
        failed)` sees the names bound so far, reports its own failures and returns None."""
        env: dict[str, Value] = {}
        failed: set[str] = set()
        for b in self.bindings:
            if b.given and b.name in given:
                value = given[b.name]
            elif b.expr is not None:
                value = evaluate(b.expr, env, failed)
            else:
                value = None  # a missing argument: resolve reported it
            if value is None:
                failed.add(b.name)
            else:
                env[b.name] = value
        return env, failed

    def exprs(self, given: Mapping[str, S.Expr]) -> dict[str, S.Expr]:
        """Every name as an expression of the caller's names (defaults and lets substituted)."""
        env: dict[str, S.Expr] = {}
        for b in self.bindings:
            if b.given and b.name in given:
                env[b.name] = given[b.name]
            elif b.expr is not None:
                env[b.name] = E.substitute(b.expr, env.get)
        return env


@dataclass(frozen=True)
class ShortcutPlan:
    attr: str
    condition: S.Expr | None  # None: always present
    steps: tuple[Step, ...]
    source: str | None  # `from LAYER`: the main-path layer whose output it reads
    span: Span


@dataclass(frozen=True)
class BlockPlan:
    """A block type, elaborated. Forward: out = post(merge(main(x), shortcut(s) or x)), where
    `s` is the output of main[:cut] (the block input x when the shortcut has no `from`)."""

    name: str
    block: S.Block
    scope: Scope
    main: tuple[Step, ...]
    cut: int
    shortcut: ShortcutPlan | None
    merge: ops.Merge | None
    post: tuple[Step, ...]
    out_channels: Channels  # in terms of the block's own names
    uses: tuple[str, ...]  # block types used as layers inside it, first use first
    positional: bool = False  # uses block_index / num_blocks (itself or a block inside it)

    @property
    def span(self) -> Span:
        return self.block.span

    @property
    def merge_span(self) -> Span:
        return self.block.merge_span or self.block.span

    @property
    def read_names(self) -> tuple[str, ...]:
        """The names a `from` of the body reads (generated forward() binds each to a local)."""
        found: dict[str, None] = {}
        stack = [*self.main, *self.post]
        while stack:
            step = stack.pop()
            found.update(dict.fromkeys(s.name for s in step.inputs))
            stack.extend(step.items)
        return tuple(found)


@dataclass(frozen=True)
class StagePlan:
    """A stage, elaborated: its module path, its own layers (run before its blocks; paths
    relative to the stage), and where its blocks live: `prefix` + each block's name."""

    stage: S.Stage
    layers: tuple[Step, ...]

    @property
    def path(self) -> str:
        return self.stage.name

    @property
    def blocks(self) -> tuple[str, ...]:
        """The block types of its runs, in order, each once."""
        return self.stage.blocks

    @property
    def prefix(self) -> str:
        """`layer1.`, or `stages.1.blocks.` for a stage whose blocks are its child `blocks`."""
        container = self.stage.container
        return f"{self.path}.{container}." if container else f"{self.path}."


@dataclass(frozen=True)
class NetworkPlan:
    """The network: its scope (params, lets), stem, stages and head, and every block type it
    uses, elaborated, in dependency order (a block after the blocks it uses)."""

    network: S.Network
    scope: Scope
    stem: tuple[Step, ...]
    stages: tuple[StagePlan, ...]
    head: tuple[Step, ...]
    blocks: dict[str, BlockPlan]

    @property
    def name(self) -> str:
        return self.network.name


def elaborate(spec: S.Spec) -> NetworkPlan:
    """The plan of the spec's network (which must exist: callers check `spec.network`)."""
    net = spec.network
    plans: dict[str, BlockPlan] = {}

    def use(name: str) -> None:
        if name not in plans and name in spec.blocks:  # resolve refused recursive blocks
            plans[name] = _block_plan(spec.blocks[name], plans, use)

    stem = _steps(net.stem, "")
    head = _steps(net.head, "", declared=_declared(stem))
    stages = tuple(StagePlan(stage, _steps(stage.layers, "")) for stage in net.stages)
    in_stages = [name for stage in stages for name in (*_uses(stage.layers), *stage.blocks)]
    for name in (*_uses(stem), *in_stages, *_uses(head)):  # the order classes are written in
        use(name)
    scope = Scope(
        tuple(Binding(p.name, p.default, True) for p in net.params)
        + tuple(Binding(let.name, let.value, False) for let in net.lets)
    )
    return NetworkPlan(net, scope, stem, stages, head, plans)


def _block_plan(block: S.Block, plans: dict[str, BlockPlan], use) -> BlockPlan:
    """Elaborate one block type; `use` elaborates the block types it contains first, so their
    plans (and output channels) exist when this one's channels are worked out."""
    scope = Scope(
        tuple(Binding(name, None, True) for name in (IN_CHANNELS, *POSITION))
        + tuple(Binding(p.name, p.default, True) for p in block.params)
        + ((Binding("expansion", block.expansion, False),) if block.expansion is not None else ())
        + tuple(Binding(let.name, let.value, False) for let in block.lets)
    )
    main = _steps(block.main, "")
    post = _steps(block.post, "", declared=_declared(main))  # main and post share names
    sc = block.shortcut
    cut = len(main)
    shortcut = None
    if sc is not None:
        if sc.source is not None:
            cut = next(
                (i + 1 for i, s in enumerate(main) if s.kind != "reuse" and s.attr == sc.source),
                cut,
            )
        shortcut = ShortcutPlan(
            sc.name, sc.condition, _items(sc.layers, sc.name), sc.source, sc.span
        )
    uses = _uses(main + post + (shortcut.steps if shortcut else ()))
    for inner in uses:
        use(inner)
    x = S.Ref(span=block.span, name=IN_CHANNELS)
    out = channels_through(main + post, x, plans, {BLOCK_INPUT: x})
    # Whether instances differ by their position (a drop-path schedule): then each gets its own.
    positional = any(plans[inner].positional for inner in uses) or any(
        ref.name in POSITION
        for expr in _expressions(block, main + post, shortcut)
        for ref in E.free_refs(expr)
    )
    return BlockPlan(
        name=block.name,
        block=block,
        scope=scope,
        main=main,
        cut=cut,
        shortcut=shortcut,
        merge=ops.merge(block.merge) if block.merge is not None else None,
        post=post,
        out_channels=out,
        uses=tuple(uses),
        positional=positional,
    )


def _expressions(block: S.Block, steps, shortcut) -> Iterable[S.Expr]:
    """Every expression of a block: parameter defaults, expansion, lets, layer arguments, the
    shortcut's condition."""
    yield from (p.default for p in block.params if p.default is not None)
    if block.expansion is not None:
        yield block.expansion
    yield from (let.value for let in block.lets)
    stack = list(steps) + list(shortcut.steps if shortcut else ())
    while stack:
        step = stack.pop()
        stack.extend(step.items)
        yield from step.args.values()
        yield from (s.index for s in step.inputs if s.index is not None)
        yield from (e for e in (step.condition, step.count) if e is not None)
    if shortcut is not None and shortcut.condition is not None:
        yield shortcut.condition


def _declared(steps: Iterable[Step]) -> dict[str, Step]:
    return {s.attr: s for s in steps if s.kind not in ("reuse", "repeat") and s.attr is not None}


def _steps(layers: Sequence[S.Layer], prefix: str, declared: dict | None = None) -> tuple:
    """A path's layers as steps; a bare name is a reuse of the module declared under it (in
    this path or, for `post`, in `main`: they share names). `declared`: name -> its step."""
    declared = dict(declared or {})
    steps = []
    for layer in layers:
        step = _step(layer, layer.name, prefix + (layer.name or ""), declared)
        if step.kind not in ("reuse", "repeat"):
            declared.setdefault(layer.name, step)
        steps.append(step)
    return tuple(steps)


def _step(layer: S.Layer, attr: str | None, path: str, declared: Mapping[str, Step]) -> Step:
    flow = {"inputs": layer.inputs, "condition": layer.condition}
    if layer.kind == "reuse":
        applies = declared.get(layer.callee)
        target = applies.path if applies is not None else path
        return Step("reuse", attr, path, layer.span, layer, target=target, applies=applies, **flow)
    args = {a.name: a.value for a in layer.args}
    if layer.kind == "repeat":
        body = _steps(layer.items, "", declared=declared)
        return Step(
            "repeat", attr, path, layer.span, layer, items=body, var=layer.var, count=layer.count
        )
    if layer.kind == "seq":
        items = _items(layer.items, path)
        return Step("seq", attr, path, layer.span, layer, items=items, **flow)
    if layer.kind == "block":
        return Step("block", attr, path, layer.span, layer, block=layer.callee, args=args, **flow)
    if layer.kind == "dynamic":
        return Step("dynamic", attr, path, layer.span, layer, args=args, via=layer.callee, **flow)
    op = ops.lookup(layer.callee)
    if layer.kind != "op" or op is None:
        raise AssertionError(f"unresolved layer `{layer.callee}` reached elaboration")
    return Step("op", attr, path, layer.span, layer, op=op, args=args, **flow)


def _items(layers: Sequence[S.Layer], path: str) -> tuple[Step, ...]:
    """The layers of a seq or shortcut: `path.0`, `path.1`, ... or, when named, `path.conv`."""
    return tuple(
        _step(item, item.name, f"{path}.{item.name if item.name else index}", {})
        for index, item in enumerate(layers)
    )


def _uses(steps: Iterable[Step]) -> list[str]:
    found: list[str] = []
    for step in steps:
        if step.kind == "block" and step.block not in found:
            found.append(step.block)
        found += [b for b in _uses(step.items) if b not in found]
    return found


# ---------------------------------------------------------------------------------------------
# Channels, symbolically


def channels_after(
    step: Step, c: Channels, blocks: Mapping[str, BlockPlan], values: dict | None = None
) -> Channels:
    """The channel count after `step` given `c` before it, as an expression of the caller's
    names (FLAT after a flatten; an Items for a bundle). Each op's own rule (Op.channels)
    decides; `values` holds the counts of what `from` may name (filled in as steps go)."""
    values = {} if values is None else values
    ins = [_source_channels(s, values) for s in step.inputs] or [c]
    if step.kind == "op":
        after = step.op.channels(step.args, ins if step.op.arity == "many" else ins[0])
        if isinstance(after, int) and not isinstance(after, bool):  # channel_mean's 1
            return E.literal(after, step.span)
        return after
    if step.kind == "repeat":
        inner = {**values, step.attr: Items(step.count, None)}
        turn = channels_through(step.items, ins[0], blocks, inner)
        return Items(step.count, turn)
    if step.kind == "dynamic":  # norm layers keep their channels; an op that does not is an error
        return ins[0]
    if step.kind == "seq":
        return channels_through(step.items, ins[0], blocks)
    if step.kind == "block":
        return block_out(blocks[step.block], ins[0], step.args)
    if step.kind == "reuse" and step.applies is not None:
        # the module's own rule on this input (the shape engine checks its weights fit it)
        return channels_after(replace(step.applies, inputs=()), ins[0], blocks, {})
    return ins[0]


def _source_channels(source: S.Input, values: Mapping[str, Channels]) -> Channels:
    value = values.get(source.name)
    if source.index is not None and isinstance(value, Items):
        return value.channels
    return value


def channels_through(
    steps: Iterable[Step], c: Channels, blocks, values: dict | None = None
) -> Channels:
    values = {} if values is None else values
    for step in steps:
        c = channels_after(step, c, blocks, values)
        if step.attr is not None:
            values[step.attr] = c
    return c


def block_out(plan: BlockPlan, c: Channels, args: Mapping[str, S.Expr]) -> Channels:
    """A block's output channels for input `c` and the caller's arguments `args`."""
    if plan.out_channels is FLAT or c is FLAT:
        return FLAT
    env = plan.scope.exprs({IN_CHANNELS: c, **args})
    return E.substitute(plan.out_channels, env.get)
