"""Lowering: the network's plan (resgen.plan) becomes a networkx DiGraph, one node per layer
instance.

Node ids are the module paths of the generated torch model (`conv1`, `layer2.0.conv2`,
`layer2.0.downsample.0`), so they match state_dict prefixes; `input`, `output` and merge nodes
(`layer2.0.add`) complete the forward pass, and a stateless module applied again gets
`<path>#2`, `#3`. Insertion order is the topological order of the forward pass. Each node's data
is one frozen `Node` record (`graph.nodes[id]["node"]`); each edge's `role` says which input of a
merge it is (main, shortcut, or skip: the block input itself).

This module evaluates every expression (network params and lets, the stage rule, block scopes
and layer arguments) and tracks the channel count, because a block's `in_channels` is the
channel count entering it. Shapes are left to resgen.shapes. Evaluation errors become located
diagnostics; a value that could not be evaluated is simply absent, and anything that depends on
it stays silent, so one mistake gives one error.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal, NamedTuple

from resgen import codes, ops
from resgen import expr as E
from resgen import spec as S
from resgen.codes import Code
from resgen.diagnostics import Diagnostic, Span, SpecError, did_you_mean
from resgen.expr import EvalError, Value
from resgen.limits import LIMITS
from resgen.names import BLOCK_INPUT, IN_CHANNELS, MODULE_ATTRIBUTES, POSITION, STAGE_INDEX
from resgen.ops.base import UNKNOWN, Fixed, Items
from resgen.ops.layers import FLAT
from resgen.plan import BlockPlan, NetworkPlan, StagePlan, Step, elaborate
from resgen.stages import stage_runs

if TYPE_CHECKING:
    import networkx as nx

INPUT, OUTPUT = "input", "output"
MAIN, SHORTCUT, SKIP = "main", "shortcut", "skip"  # edge roles: the inputs of a merge
_APPLICATION = re.compile(r"^(.*)#(\d+)$")

NodeKind = Literal["input", "output", "layer", "merge"]


class Source(NamedTuple):
    """One tensor a join reads: a node's output, or item `item` of the bundle it makes."""

    node: str
    item: int | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One node of the lowered graph: what it is and where it came from (shapes are resgen.shapes'
    separate record).

    op          the layer's op, or the merge's; None for input and output
    args        the evaluated arguments, op defaults filled in; `known` is False when one could
                not be evaluated (already reported)
    module      the module a layer applies: itself, or the one a reuse applies again
    stage       stem, a stage's path (`layer1`, `stages.0`) or head; `block` the enclosing block
                instance (`layer1.0`, nested: `layer1.0.se`), `instance` the outermost one
                (`layer1.0`); `branch` main, shortcut or post inside a block
    block_input a merge's block input node (where both its paths start)
    """

    id: str
    kind: NodeKind
    span: Span
    stage: str
    block: str | None = None
    branch: str | None = None
    op: ops.Op | None = None
    args: Mapping[str, Value] = field(default_factory=dict)
    arg_spans: Mapping[str, Span] = field(default_factory=dict)
    known: bool = True
    module: str | None = None
    block_input: str | None = None
    instance: str | None = None  # the stage's (or stem's, head's) block instance it is inside
    step: Step | None = None  # the plan step it was lowered from (layers)
    # A join's inputs in order (`concat from a, b`); None for a layer that reads its one
    # predecessor. A tuple of Sources stands for a bundle gathered from several nodes.
    inputs: tuple[Source | tuple[Source, ...], ...] | None = None

    @property
    def fixes_size(self) -> bool:
        """A pool to a fixed size: what comes after it no longer depends on earlier sizes."""
        return self.op is not None and self.known and isinstance(self.op.spatial(self.args), Fixed)

    def label(self, times: str = "×") -> str:
        """`conv 3×3 s2 p1`, with `(again)` for a module applied a second time."""
        text = self.op.label(self.args, times) if self.op is not None else self.kind
        return text + " (again)" if self.module is not None and self.module != self.id else text


def application_id(module: str, call: int) -> str:
    """The node of the call-th application of a module: `relu`, then `relu#2`, `relu#3`
    (torchvision's Bottleneck applies its one `relu` three times)."""
    return module if call == 1 else f"{module}#{call}"


def module_and_call(node: str) -> tuple[str, int]:
    """`layer1.0.relu#2` -> (`layer1.0.relu`, 2): the inverse of application_id."""
    match = _APPLICATION.match(node)
    return (match.group(1), int(match.group(2))) if match else (node, 1)


def runs_text(runs, times: str = "x") -> str:
    """`3 x Bottleneck`, `1 x ByobBottleneck + 1 x SelfAttnBlock`: a stage's runs as text; runs
    that repeat a pattern, as timm's interleave_blocks lays them out, are written once:
    `3 x (1 x ByobBottleneck + 1 x SelfAttnBlock)`. `runs`: (count, block type) pairs."""
    runs = list(runs)
    for period in range(1, len(runs) // 2 + 1):
        times_over, rest = divmod(len(runs), period)
        if rest or runs != runs[:period] * times_over:
            continue
        if period > 1:
            return f"{times_over} {times} ({runs_text(runs[:period], times)})"
        if all(isinstance(count, int) for count, _ in runs):  # not `n` of generated code
            return f"{sum(count for count, _ in runs)} {times} {runs[0][1]}"
    return " + ".join(f"{count} {times} {block}" for count, block in runs)


@dataclass
class StageEntry:
    """One `stage` line as lowered: its block types (`block`: the names, joined by " + " for a
    stage of several types), how many instances, their runs ((count, block type) in order) and
    their paths."""

    name: str
    block: str | None
    repeats: int
    span: Span
    blocks: list[str] = field(default_factory=list)
    runs: list[tuple[int, str]] = field(default_factory=list)

    def text(self, times: str = "x") -> str:
        """`3 x Bottleneck`, or `1 x ByobBottleneck + 1 x SelfAttnBlock` for several runs."""
        return runs_text(self.runs, times) if self.runs else f"{self.repeats} {times} {self.block}"


@dataclass
class Lowering:
    """The lowered network: its records and edges. `pred` is what the shape engine walks;
    `graph`, the networkx DiGraph, is built the first time someone asks for it (diagrams,
    verification), so `resgen check` never imports networkx."""

    nodes: dict[str, Node]  # the graph's records, in forward order
    edges: list[tuple]  # (source, target, role[, data]), in forward order
    diagnostics: list[Diagnostic]
    input: tuple[int, int, int]
    network: S.Network
    stages: list[StageEntry]
    block_types: dict[str, str]  # block instance path -> block type name (nested ones too)
    plan: NetworkPlan | None = None  # what was lowered (nodes' `step`s are its steps)
    float_names: dict[str, set[str]] = field(default_factory=dict)  # scope -> fraction names
    # block instance -> the nodes whose outputs its generated forward() keeps in a named local
    # (a value a later `from` reads, a repeat's list) until it returns
    held_locals: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @cached_property
    def pred(self) -> dict[str, dict[str, dict]]:
        """node -> {predecessor: {"role": role}}, as networkx's `DiGraph.pred` has it."""
        pred: dict[str, dict[str, dict]] = {node: {} for node in self.nodes}
        for source, target, role, *extra in self.edges:
            pred[target][source] = {"role": role, **(extra[0] if extra else {})}
        return pred

    @cached_property
    def succ(self) -> dict[str, dict[str, dict]]:
        """node -> {successor: {"role": role}}, as networkx's `DiGraph.succ` has it."""
        succ: dict[str, dict[str, dict]] = {node: {} for node in self.nodes}
        for source, target, role, *extra in self.edges:
            succ[source][target] = {"role": role, **(extra[0] if extra else {})}
        return succ

    @cached_property
    def graph(self) -> nx.DiGraph:
        return digraph(self.nodes, self.edges, network=self.network.name)


def lower(
    spec: S.Spec,
    input_shape: tuple[int | None, int, int] | None = None,
    plan: NetworkPlan | None = None,
) -> Lowering:
    """Lower the spec's network. Raises SpecError only when there is no network to lower."""
    if spec.network is None:
        raise SpecError(
            [Diagnostic(spec.span, codes.NO_NETWORK, f"{spec.path} defines no network to analyse")]
        )
    with no_gc():
        return _Lowerer(plan or elaborate(spec), input_shape).run()


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building ~100,000 small records otherwise triggers
    collections that scan all of them, about half the time of a large network."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def digraph(nodes: Mapping[str, Node], edges: Sequence[tuple], **attrs):
    """The networkx DiGraph of records and (source, target, role[, data]) edges.

    The one place resgen fills a graph through networkx's adjacency dicts rather than add_node
    and add_edge: those cost ~10 us per call, which dominates a 10,000-block network. The result
    is an ordinary DiGraph (node data {"node": record}, edge data {"role": role, ...}: `group`
    and `item` tell a node's several inputs apart, see _Lowerer.connect)."""
    import networkx as nx  # only what draws or walks the graph pays for the import

    graph = nx.DiGraph(**attrs)
    for node_id, record in nodes.items():
        graph._node[node_id] = {"node": record}
        graph._succ[node_id] = {}
        graph._pred[node_id] = {}
    for source, target, role, *extra in edges:
        data = {"role": role, **(extra[0] if extra else {})}
        graph._succ[source][target] = data
        graph._pred[target][source] = data
    return graph


@dataclass(frozen=True)
class _Value:
    """What a name holds while a path is lowered: a node's output (`node`), one item of a
    node's bundle (`item`), or a bundle gathered from several values (`parts`: a repeat's
    outputs); `channels` its channel count (each item's, for a bundle) when known."""

    node: str | None = None
    item: int | None = None
    parts: tuple[_Value, ...] | None = None
    channels: int | None = None


def _first_node(value: _Value) -> str:
    while value.parts:
        value = value.parts[0]
    return value.node or INPUT


@dataclass
class _Env:
    """One scope's values for one instance; `failed` holds names whose evaluation failed (and
    was reported), so what depends on them stays silent."""

    values: dict[str, Value]
    failed: set[str]


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a layer sits: copied onto each node it produces."""

    stage: str
    block: str | None
    branch: str | None
    instance: str | None = None


class _Lowerer:
    def __init__(self, plan: NetworkPlan, input_shape):
        self.plan = plan
        self.net: S.Network = plan.network
        self.nodes: dict[str, Node] = {}
        self.edges: list[tuple[str, str, str]] = []
        self.diagnostics: list[Diagnostic] = []
        self._reported: set[tuple] = set()
        self._uses: dict[str, int] = {}  # module path -> times applied (for `#2` ids)
        self._arg_cache: dict[tuple, tuple] = {}
        self._env_cache: dict[tuple, _Env] = {}
        self.block_types: dict[str, str] = {}
        self.stages: list[StageEntry] = []
        self.block_count = 0  # instances, nested ones included: nesting multiplies them
        self.block_index = 0  # the next stage block's position among all of them
        self.float_names: dict[str, set[str]] = {}  # block type ("" the network) -> names
        self.held_locals: dict[str, tuple[str, ...]] = {}
        self.bundle_sizes: dict[str, int] = {}  # nodes that make bundles (split) -> item count
        self.declared_steps: dict[str, Step] = {}  # module path -> its step (to apply again)
        self.num_blocks = 0  # how many blocks the stages hold (set in run)
        self.input_override = input_shape
        self.input = (3, 224, 224)  # replaced in run() by the spec's (or --input's)

    # -- diagnostics
    def report(self, span: Span, code: Code, message: str, layer: str | None, hint=None) -> None:
        key = (span, code, message)
        if key in self._reported:  # a block definition error repeats in every instance
            return
        self._reported.add(key)
        self.diagnostics.append(Diagnostic(span, code, message, "error", layer, hint))

    def evaluate(self, expr: S.Expr, env: _Env, path: str | None) -> Value | None:
        """The value, or None after reporting (or silently, when an input already failed)."""
        try:
            return E.evaluate(expr, env.values)
        except EvalError as err:
            if env.failed and any(r.name in env.failed for r in E.free_refs(expr)):
                return None
            self.report(err.span, err.code, err.message, path, err.hint)
            return None

    def scope_env(self, scope, given: Mapping[str, Value | None], path: str | None) -> _Env:
        def evaluate(expr: S.Expr, values: dict, failed: set) -> Value | None:
            return self.evaluate(expr, _Env(values, failed), path)

        return _Env(*scope.values(given, evaluate))

    # -- the network
    def run(self) -> Lowering:
        net = self.net
        env = self.scope_env(self.plan.scope, {}, None)
        self.note_floats("", env)
        span = net.input.span if net.input else net.span
        stem = _Where("stem", None, None)
        self.add(Node(INPUT, INPUT, span, "stem"))
        self.input = self.input_shape(env)
        self.check_input(span)
        cur, channels = INPUT, self.input[0]
        cur, channels = self.sequence(self.plan.stem, env, "", cur, channels, stem, MAIN)
        self.num_blocks = self.count_stage_blocks(env)
        dilation = 1
        for stage in self.plan.stages:
            cur, channels, dilation = self.stage(stage, env, cur, channels, dilation)
        head = _Where("head", None, None)
        cur, channels = self.sequence(self.plan.head, env, "", cur, channels, head, MAIN)
        last_span = net.head[-1].span if net.head else net.span
        self.add(Node(OUTPUT, OUTPUT, last_span, "head"))
        self.edges.append((cur, OUTPUT, MAIN))
        return Lowering(
            self.nodes,
            self.edges,
            self.diagnostics,
            self.input,
            net,
            self.stages,
            self.block_types,
            self.plan,
            self.float_names,
            self.held_locals,
        )

    def stage(self, plan: StagePlan, env: _Env, cur: str, channels: int | None, dilation: int):
        stage = plan.stage
        entry = StageEntry(stage.name, " + ".join(stage.blocks), 0, stage.span)
        self.stages.append(entry)
        for run in stage.runs:
            if run.block not in self.plan.blocks:
                raise SpecError(
                    [
                        Diagnostic(
                            run.block_span, codes.UNKNOWN_BLOCK, f"unknown block `{run.block}`"
                        )
                    ]
                )
        blocks = {name: self.plan.blocks[name].block for name in stage.blocks}
        try:
            rules = stage_runs(stage, blocks, env.values, dilation)
        except EvalError as err:
            refs = (r.name for run in stage.runs for a in run.args for r in E.free_refs(a.value))
            if not (env.failed and any(name in env.failed for name in refs)):
                self.report(err.span, err.code, err.message, stage.name, err.hint)
            return cur, None, dilation
        repeats = sum(rule.repeats for rule in rules)
        if repeats > LIMITS.max_repeats:
            self.report(
                stage.runs[0].repeats.span if len(rules) == 1 else stage.span,
                codes.LIMIT,
                f"{repeats} blocks in one stage is over the limit of {LIMITS.max_repeats}",
                stage.name,
                "set RESGEN_MAX_REPEATS to raise it",
            )
            return cur, None, rules[-1].dilation_after
        entry.repeats = repeats
        entry.runs = [(rule.repeats, rule.run.block) for rule in rules]
        own = _Where(stage.name, None, None)
        cur, channels = self.sequence(plan.layers, env, stage.name + ".", cur, channels, own, MAIN)
        names = self.block_names(stage, env, repeats)
        for rule in rules:
            block = self.plan.blocks[rule.run.block]
            first, rest = self.run_args(rule, env, stage.name)
            for index in range(rule.repeats):
                path = plan.prefix + names[rule.start + index]
                entry.blocks.append(path)
                self.count_block(stage.span)
                args = first if index == 0 else rest
                position = (self.block_index, self.num_blocks)
                self.block_index += 1
                value = self.block(
                    block, args, path, _Value(cur, channels=channels), stage.name, position=position
                )
                cur, channels = _first_node(value), value.channels
        return cur, channels, rules[-1].dilation_after

    def run_args(self, rule, env: _Env, path: str) -> tuple[dict, dict]:
        """The evaluated arguments of a run's first block and of its later blocks (one dict
        when they are alike)."""
        first = {k: self.evaluate(v, env, path) for k, v in rule.first.items()}
        if rule.rest == rule.first:
            return first, first
        return first, {k: self.evaluate(v, env, path) for k, v in rule.rest.items()}

    def count_stage_blocks(self, env: _Env) -> int:
        """How many blocks the stages hold (`num_blocks`); a count that does not evaluate is
        left out here and reported where the stage is lowered."""
        total = 0
        for plan in self.plan.stages:
            for run in plan.stage.runs:
                try:
                    repeats = E.evaluate(run.repeats, env.values)
                except EvalError:
                    continue
                if isinstance(repeats, int) and not isinstance(repeats, bool) and repeats > 0:
                    total += repeats
        return total

    def block_names(self, stage: S.Stage, env: _Env, repeats: int) -> list[str]:
        """Each block's name in its stage: `0`, `1`, ... or what `named "..."` makes of its
        index. A name torch would refuse (empty, with a dot, taken twice) is reported at the
        pattern; the index stands in for it."""
        if stage.pattern is None:
            return [str(index) for index in range(repeats)]
        names: list[str] = []
        for index in range(repeats):
            scope = _Env({**env.values, STAGE_INDEX: index}, env.failed)
            parts = []
            for part in stage.pattern:
                if isinstance(part, str):
                    parts.append(part)
                    continue
                value = self.evaluate(part, scope, stage.name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    self.report(
                        part.span,
                        codes.TYPE,
                        f"a block name is made of text and whole numbers, not {E.show(value)}",
                        stage.name,
                    )
                    value = None
                parts.append(None if value is None else str(value))
            name = "".join(parts) if None not in parts else None
            problem = None
            if name is not None:
                if not name:  # the pattern's text allows letters, digits, `_` and `-` only
                    problem = f"the name of block {index} would be empty"
                elif name in names:
                    problem = f"blocks {names.index(name)} and {index} would both be `{name}`"
                elif name in MODULE_ATTRIBUTES:
                    problem = f"block {index} would be `{name}`, which replaces nn.Module.{name}"
            if problem:
                self.report(
                    stage.pattern_span or stage.span,
                    codes.BAD_NAME,
                    f"{problem}: block names are unique, non-empty module names",
                    stage.name,
                    hint='use `index` in the pattern, e.g. named "b{index + 1}"',
                )
                name = None
            names.append(str(index) if name is None else name)
        return names

    # -- blocks
    def block_env(self, plan: BlockPlan, args: dict, channels, path: str, position) -> _Env:
        # Instances alike share one scope; only blocks that use their position differ by it.
        where = position if plan.positional else None
        key = (id(plan), channels, tuple(args.items()), where)
        env = self._env_cache.get(key)
        if env is None:
            given = {**args, IN_CHANNELS: channels, **dict(zip(POSITION, position, strict=True))}
            env = self._env_cache[key] = self.scope_env(plan.scope, given, path)
            self.note_floats(plan.name, env)
        return env

    def note_floats(self, scope: str, env: _Env) -> None:
        """Which names of a scope held a number with a fraction in some instance: generated
        code writes their `/` as Python's `/` (resgen.expr.is_float)."""
        floats = {name for name, value in env.values.items() if isinstance(value, float)}
        if floats:
            self.float_names.setdefault(scope, set()).update(floats)

    def block(
        self,
        plan: BlockPlan,
        args: dict,
        path: str,
        x: _Value,
        stage: str,
        instance=None,
        position: tuple[int, int] | None = None,
    ) -> _Value:
        """Lower one block instance at `path` reading `x`; `instance` is the outermost block it
        sits in (itself, unless it is a block used as a layer inside another); `position` its
        (block_index, num_blocks)."""
        self.block_types[path] = plan.name
        instance = instance or path
        env = self.block_env(plan, args, x.channels, path, position or (0, self.num_blocks))
        prefix = path + "."
        main = _Where(stage, path, MAIN, instance)
        values: dict[str, _Value] = {BLOCK_INPUT: x}  # what `from` names: shared by main and post
        # The main path in two parts when the shortcut reads the output of main[cut - 1].
        source = self.path(plan.main[: plan.cut], env, prefix, x, main, MAIN, values)
        out = self.path(plan.main[plan.cut :], env, prefix, source, main, MAIN, values)
        sc = plan.shortcut
        if sc is None or sc.source is None:
            source = x
        shortcut_out, known = None, True
        if sc is not None:
            present = True
            if sc.condition is not None:
                present = self.condition_holds(sc.condition, env, path)
                known = present is not None
            if present:
                where = _Where(stage, path, SHORTCUT, instance)
                shortcut_out = self.path(sc.steps, env, prefix, source, where, SHORTCUT, {})
        merging = plan.merge is not None
        if merging and plan.block.merge_condition is not None:
            holds = self.condition_holds(plan.block.merge_condition, env, path)
            merging = holds is not False  # unknown: drawn, and its shapes not checked
            known = known and holds is not None
        if merging:
            merged = f"{path}.{plan.merge.name}"
            self.add(
                Node(
                    merged,
                    "merge",
                    plan.merge_span,
                    stage,
                    path,
                    None,
                    op=plan.merge,
                    known=known,
                    block_input=x.node,
                    instance=instance,
                )
            )
            self.edge(out, merged, MAIN)
            if shortcut_out is not None:
                self.edge(shortcut_out, merged, SHORTCUT)
            else:
                self.edge(x, merged, SKIP)
            out = _Value(merged, channels=out.channels)
        post = _Where(stage, path, "post", instance)
        out = self.path(plan.post, env, prefix, out, post, MAIN, values)
        self.hold_locals(plan, path, values)
        return out

    def hold_locals(self, plan: BlockPlan, path: str, values: dict) -> None:
        """The values forward() binds to a local of their own name (those a `from` reads: a
        split's chunks, a repeat's list, CBAM's pooled maps) stay alive until it returns."""
        held = []
        for name in plan.read_names:
            value = values.get(name)
            if value is not None and name != BLOCK_INPUT:
                held += [_first_node(p) for p in value.parts] if value.parts else [value.node]
        if held:
            self.held_locals[path] = tuple(dict.fromkeys(held))

    def condition_holds(self, condition: S.Expr, env: _Env, path: str) -> bool | None:
        """A `when` of a layer, shortcut or merge, for one instance; None when it cannot be
        told."""
        key = (id(condition), id(env))
        if key in self._arg_cache:
            return self._arg_cache[key]
        present = self.evaluate(condition, env, path)
        if present is not None and not isinstance(present, bool):
            self.report(
                condition.span,
                codes.TYPE,
                f"a `when` condition is true or false, not {E.type_name(present)}",
                path,
            )
            present = None
        self._arg_cache[key] = present
        return present

    # -- layers
    def sequence(
        self,
        steps: Sequence[Step],
        env: _Env,
        prefix: str,
        cur: str,
        channels: int | None,
        where: _Where,
        role: str,
    ) -> tuple[str, int | None]:
        """Lower a path of the stem, a stage or the head from node `cur`: its last node and
        channel count."""
        value = self.path(steps, env, prefix, _Value(cur, channels=channels), where, role, {})
        return value.node, value.channels

    def path(self, steps, env, prefix, cur: _Value, where, role, values) -> _Value:
        """A path of steps that ends in one tensor (a bundle left over is an error)."""
        value = self.steps(steps, env, prefix, cur, where, role, values)
        if steps and self.size(value) is not None:
            self.report(
                steps[-1].span,
                codes.BUNDLE,
                f"this path ends with a bundle of {self.size(value)} tensors, where one tensor "
                "goes on: join them first (concat, add)",
                prefix.rstrip(".") or None,
            )
            return _Value(_first_node(value), channels=None)
        return value

    def steps(
        self, steps, env, prefix, cur: _Value, where, role, values, suffix="", base=None
    ) -> _Value:
        """Lower steps from `cur`. `values` holds what names refer to for `from` (the block
        input as `x`); a step's path is prefix + its path + `suffix` (a repeat's turn), or,
        inside a seq, `base` + its key."""
        for step in steps:
            path = f"{base}.{step.key}" if base is not None else prefix + step.path + suffix
            absent = (
                step.condition is not None
                and self.condition_holds(step.condition, env, path) is False
            )
            # Absent in this instance (`when`): its first input passes through, and what else
            # it names need not exist (Res2Net's carry from a turn before the first).
            inputs = self.inputs(step, env, prefix, cur, values, only_first=absent)
            if inputs is None:  # reported: what follows goes on from one tensor, silently
                first = cur.parts[0] if cur.parts else cur
                item = 0 if first.item is None and self.size(first) is not None else first.item
                return _Value(_first_node(first), item, channels=None)
            if absent:
                cur = inputs[0]
                if step.attr is not None:
                    values[step.attr] = cur
                continue
            if step.kind == "repeat":
                cur = self.repeat(step, env, prefix, inputs, where, role, values)
            elif step.kind == "reuse":
                cur = self.reuse(step, prefix, suffix, inputs, where, role)
            elif step.kind == "seq":
                self.declared_steps[path] = step
                first = self.single(inputs, step, path)
                cur = self.steps(step.items, env, prefix, first, where, role, {}, base=path)
            else:
                cur = self.layer(step, env, path, inputs, where, role)
            if step.attr is not None:
                values[step.attr] = cur
        return cur

    def inputs(
        self, step: Step, env: _Env, prefix: str, cur: _Value, values, only_first=False
    ) -> list | None:
        """What a step reads: the previous value, or what its `from` names (an item of a
        bundle by its index, evaluated here); only the first of them with `only_first`."""
        if not step.inputs:
            return [cur]
        found = []
        for source in step.inputs[:1] if only_first else step.inputs:
            value = values.get(source.name)
            if value is None:  # resolve checked the name: a repeat turn not yet run
                self.report(
                    source.span,
                    codes.UNKNOWN_NAME,
                    f"`{source.name}` has no value here yet",
                    prefix.rstrip(".") or None,
                )
                return None
            if source.index is not None:
                index = self.evaluate(source.index, env, prefix.rstrip("."))
                if index is None:
                    return None
                value = self.item(value, index, source, prefix)
                if value is None:
                    return None
            found.append(value)
        return found

    def size(self, value: _Value) -> int | None:
        """How many tensors a value holds when it is a bundle; None for one tensor."""
        if value.parts is not None:
            return len(value.parts)
        return self.bundle_sizes.get(value.node) if value.item is None else None

    def item(self, value: _Value, index, source, prefix: str) -> _Value | None:
        size = self.size(value)
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or size is None
            or not -size <= index < size
        ):
            what = "one tensor, not a bundle" if size is None else f"a bundle of {size}"
            self.report(
                source.span,
                codes.BUNDLE,
                f"`{source.name}[{E.show(index)}]`: `{source.name}` is {what} here"
                + ("" if size is None else f", so its items are {-size} to {size - 1}"),
                prefix.rstrip(".") or None,
            )
            return None
        if value.parts is not None:
            return value.parts[index]
        return _Value(value.node, index % size, channels=value.channels)

    def single(self, inputs, step: Step, path: str) -> _Value:
        """The one tensor a layer that is not a join reads; a bundle is reported (and its
        first item read on, so what follows is still checked)."""
        value = inputs[0]
        size = self.size(value)
        if size is not None:
            self.report(
                step.span,
                codes.BUNDLE,
                f"`{step.attr or step.key}` reads one tensor, but gets a bundle of {size}: pick "
                "one item (`from name[0]`) or join them first (concat, add)",
                path,
            )
            return value.parts[0] if value.parts else _Value(value.node, 0, channels=value.channels)
        return value

    def repeat(self, step: Step, env: _Env, prefix, inputs, where, role, values) -> _Value:
        """`name = repeat i < n { ... }`: the body lowered n times with `i` bound, its layers
        numbered `convs.0`, `convs.1`, ...; the value is the bundle of each turn's output. In a
        turn, `name[j]` is turn j's output (j < i)."""
        path = prefix + step.path
        count = self.evaluate(step.count, env, path)
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 1
        ):
            self.report(
                step.count.span,
                codes.BAD_ARGUMENT,
                f"a repeat runs at least once: its count is an integer of at least 1, not "
                f"{E.show(count)} (`{E.source_text(step.count)}`)",
                path,
            )
            count = None
        if count is not None and count > LIMITS.max_repeats:
            self.report(
                step.count.span,
                codes.LIMIT,
                f"a repeat of {count} turns is over the limit of {LIMITS.max_repeats}",
                path,
                "set RESGEN_MAX_REPEATS to raise it",
            )
            count = None
        outputs: list[_Value] = []
        for turn in range(count or 0):
            key = (id(env), step.var, turn)
            inner = self._env_cache.get(key)
            if inner is None:
                inner = self._env_cache[key] = _Env({**env.values, step.var: turn}, env.failed)
            scope = dict(values)
            scope[step.attr] = _Value(parts=tuple(outputs))
            body = self.steps(step.items, inner, prefix, inputs[0], where, role, scope, f".{turn}")
            if self.size(body) is not None:
                self.report(
                    step.items[-1].span,
                    codes.BUNDLE,
                    "each turn of a repeat gives one tensor, not a bundle: join it first",
                    path,
                )
                return _Value(_first_node(body), channels=None)
            outputs.append(body)
        counts = {v.channels for v in outputs}
        if len(counts) > 1:
            self.report(
                step.span,
                codes.CHANNELS,
                "the turns of a repeat give "
                + ", ".join(str(c) for c in (v.channels for v in outputs))
                + " channels; a bundle's items have one channel count",
                path,
            )
        channels = outputs[0].channels if outputs and len(counts) == 1 else None
        return _Value(parts=tuple(outputs), channels=channels)

    def layer(self, step: Step, env: _Env, path: str, inputs, where, role) -> _Value:
        if step.kind == "block":
            x = self.single(inputs, step, path)
            plan = self.plan.blocks[step.block]
            self.count_block(step.span)
            args = {k: self.evaluate(v, env, path) for k, v in step.args.items()}
            position = tuple(env.values.get(name, 0) for name in POSITION)  # the host's
            if position == (0, 0):
                position = None  # not inside a stage block: the stem's or head's
            return self.block(plan, args, path, x, where.stage, where.instance, position)
        op, args, spans, known = self.op_args(step, env, path)
        self.declared_steps[path] = step
        return self.apply(path, path, step, op, args, spans, known, inputs, where, role)

    def apply(self, node_id, module, step, op, args, spans, known, inputs, where, role, span=None):
        """Add the node of one application of `module`'s op to `inputs`; the value it gives.
        `span`: where the application is written, when that is not where `step` declares it
        (a reuse: its errors point at the reuse)."""
        if op.arity == "one":
            inputs = [self.single(inputs, step, node_id)]
        self.add(
            Node(
                node_id,
                "layer",
                span or step.span,
                where.stage,
                where.block,
                where.branch,
                op=op,
                args=args,
                arg_spans=spans,
                known=known,
                module=module,
                instance=where.instance,
                step=step,
                inputs=self.connect(inputs, node_id, role) if op.arity == "many" else None,
            )
        )
        if op.arity == "one":
            self.edge(inputs[0], node_id, role)
        return self.output(node_id, step, op, args, known, inputs)

    def output(self, node: str, step: Step, op, args, known: bool, inputs) -> _Value:
        """The value a new op node gives: its channel count by the op's own rule (for several
        inputs, their counts), and its bundle size when it makes a bundle (split)."""
        sizes = [self.size(v) for v in inputs]
        counts = [
            v.channels if n is None or v.channels is None else Items(n, v.channels)
            for v, n in zip(inputs, sizes, strict=True)
        ]
        try:
            after = op.channels(args, counts if op.arity == "many" else counts[0])
            size = op.bundle(args, sizes) if known else None
        except (KeyError, TypeError):  # an argument (or an input) that could not be evaluated
            after = size = None
        if isinstance(after, Items):
            after = after.channels
        channels = counts[0]
        if step.kind == "dynamic" and known and after != channels and channels is not None:
            self.report(
                step.span,
                codes.CHANNELS,
                f"`{step.via}` holds {op.name}, which makes {after} channels from {channels}; a "
                "layer made from a parameter's op keeps the channel count (norms, activations)",
                node,
            )
        if size is not None:
            self.bundle_sizes[node] = size
        return _Value(node, channels=None if after is FLAT else after)

    def edge(self, value: _Value, target: str, role: str) -> None:
        """The edge from one tensor (an item of a bundle: `item` says which) to `target`."""
        data = {"item": value.item} if value.item is not None else {}
        self.edges.append((_first_node(value), target, role, data))

    def connect(self, inputs, target: str, role: str) -> tuple:
        """Edges into a join (`concat from a, b`), and its inputs as Node.inputs records:
        edges are for drawing (networkx keeps one edge per pair of nodes); the records say
        which tensors, in order, a bundle's items grouped."""
        records = []
        for value in inputs:
            parts = value.parts if value.parts is not None else (value,)
            sources = []
            for part in parts:
                self.edge(part, target, role)
                sources.append(Source(_first_node(part), part.item))
            records.append(tuple(sources) if value.parts is not None else sources[0])
        return tuple(records)

    def reuse(self, step: Step, prefix: str, suffix: str, inputs, where, role) -> _Value:
        """A module applied again: `relu` (parameter-free, on the previous value), or any layer
        on what `from` names (shared weights: CBAM's one MLP on two pooled tensors); a `seq`
        is applied again item by item. A module absent in this instance (`when`) passes its
        input through."""
        target = prefix + step.target + suffix
        if target not in self.declared_steps:  # declared outside the repeat it is used in
            target = prefix + step.target
        declared = self.declared_steps.get(target)
        if declared is None:
            return inputs[0]
        return self._apply_again(target, declared, step, inputs, where, role)

    def _apply_again(self, target: str, declared: Step, step: Step, inputs, where, role):
        if declared.kind == "seq":
            cur = self.single(inputs, step, target)
            for item in declared.items:
                path = f"{target}.{item.key}"
                item_step = self.declared_steps.get(path, item)
                cur = self._apply_again(path, item_step, step, [cur], where, role)
                role = MAIN
            return cur
        original = self.nodes.get(target)
        if original is None:  # absent in this instance (`when`): its input passes through
            return inputs[0]
        count = self._uses.get(target, 1) + 1
        self._uses[target] = count
        node_id = application_id(target, count)
        return self.apply(
            node_id,
            target,
            original.step,
            original.op,
            original.args,
            original.arg_spans,
            original.known,
            inputs,
            where,
            role,
            span=step.span,
        )

    def add(self, node: Node) -> None:
        if node.id in self.nodes:
            raise SpecError(
                [
                    Diagnostic(
                        node.span,
                        codes.DUPLICATE_NAME,
                        f"two layers would both be `{node.id}`",
                        layer=node.id,
                    )
                ]
            )
        if len(self.nodes) >= LIMITS.max_layers:
            raise SpecError(
                [
                    Diagnostic(
                        node.span,
                        codes.LIMIT,
                        f"more than {LIMITS.max_layers} layers in one network",
                        layer=node.id,
                        hint="set RESGEN_MAX_LAYERS to raise it",
                    )
                ]
            )
        self.nodes[node.id] = node

    def count_block(self, span: Span) -> None:
        """Stop at the block limit before lowering more: blocks used as layers inside blocks
        multiply (four of a block of four of ... is 4**depth instances), which would hang."""
        self.block_count += 1
        if self.block_count > LIMITS.max_blocks:
            raise SpecError(
                [
                    Diagnostic(
                        span,
                        codes.LIMIT,
                        f"more than {LIMITS.max_blocks} blocks in one network (nested blocks "
                        "count once per use)",
                        hint="set RESGEN_MAX_BLOCKS to raise it",
                    )
                ]
            )

    def input_shape(self, env: _Env) -> tuple[int, int, int]:
        """The spec's `input C x H x W` evaluated (each may use the network's params and lets),
        with `--input` replacing what it gives. A dimension that cannot be used is reported
        and analysed as 1, so the rest of the network is still checked."""
        dims = list(self.net.input.dims()) if self.net.input else [None] * 3
        given = self.input_override or (None, None, None)
        values = []
        for label, expr, override in zip(("channels", "height", "width"), dims, given, strict=True):
            if override is not None:
                values.append(override)
                continue
            value = self.evaluate(expr, env, None) if expr is not None else 1
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                self.report(
                    expr.span,
                    codes.BAD_INPUT,
                    f"input {label} is a whole number of at least 1, not {E.show(value)} "
                    f"(`{E.source_text(expr)}`)",
                    None,
                )
                value = None
            values.append(1 if value is None else value)
        return tuple(values)

    def check_input(self, span: Span) -> None:
        """The input as analysed (the spec's, or --input's) within the limits."""
        c, h, w = self.input
        for label, value, limit, name in (
            ("channels", c, LIMITS.max_channels, "CHANNELS"),
            ("height", h, LIMITS.max_spatial, "SPATIAL"),
            ("width", w, LIMITS.max_spatial, "SPATIAL"),
        ):
            if value > limit:
                self.report(
                    span,
                    codes.LIMIT,
                    f"input {label} {value} is over the limit of {limit}",
                    None,
                    f"set RESGEN_MAX_{name} to raise it",
                )

    def op_args(self, step: Step, env: _Env, path: str) -> tuple:
        """The step's op (for a dynamic step, the one its name holds here), its evaluated
        arguments with the op's defaults filled in, their spans, and whether all are known.
        Cached per step and scope: block instances repeat."""
        key = (id(step), id(env))  # envs are cached and kept alive, so ids are stable
        cached = self._arg_cache.get(key)
        if cached is not None:
            return cached
        op, bound = step.op, {}
        if step.kind == "dynamic":
            op, bound = self.held_op(step, env, path)
            if op is None:  # reported (or failed upstream): a placeholder that is not analysed
                result = (UNKNOWN, {}, {}, False)
                self._arg_cache[key] = result
                return result
        args: dict[str, Value] = dict(bound)
        spans: dict[str, Span] = {}
        known = True
        given = {a.name: a for a in step.layer.args}
        for name, arg in given.items():
            if op.param(name) is None:
                self.report(
                    arg.span,
                    codes.UNKNOWN_ARGUMENT,
                    f"{op.name} (held by `{step.via}` here) has no parameter `{name}`"
                    + did_you_mean(name, [p.name for p in op.params]),
                    path,
                )
                known = False
        for param in op.params:
            arg = given.get(param.name)
            if arg is None:
                continue
            spans[param.name] = arg.span
            value = self.evaluate(arg.value, env, path)
            if value is not None:
                problem = param.problem(value)
                if problem:
                    self.report(
                        arg.span,
                        codes.BAD_ARGUMENT,
                        f"`{param.name}` of {op.name} {problem}, not {E.show(value)} "
                        f"(`{E.source_text(arg.value)}`)",
                        path,
                    )
                    value = None
            if value is None:
                known = False
            else:
                args[param.name] = value
        result = (op, op.with_defaults(args, given.keys()), spans, known)
        self._arg_cache[key] = result
        return result

    def held_op(self, step: Step, env: _Env, path: str):
        """The op (and its bound arguments) a dynamic step's name holds in this scope."""
        if step.via in env.failed:
            return None, {}
        value = env.values.get(step.via)
        if not isinstance(value, E.OpValue):
            self.report(
                step.span,
                codes.TYPE,
                f"`{step.via}` is {E.show(value)} here, not an op (write e.g. "
                f"`{step.via} = batchnorm` where it is set)",
                path,
            )
            return None, {}
        return value.op, dict(value.args)
