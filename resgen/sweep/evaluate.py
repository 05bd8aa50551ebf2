"""Counting a variant without building its graph: the sweep's fast path.

`resgen.graph` lowers a network to one node per layer instance and `resgen.shapes` walks that
graph; for a sweep, where nothing draws the graph, building it is most of the time per variant.
`Evaluator` walks the same elaborated plan (resgen.plan) with the lowering's own evaluation of
scopes, arguments, shortcut conditions, stage rules and block names (it is a `_Lowerer` that
creates no nodes), and asks each op (resgen.ops) for its shape and counts, as resgen.shapes does.
Shape rules stay in one place: the ops.

Block instances are memoised on everything their result depends on (the block type, its
arguments, the shape and channels entering it), across instances and across variants: ResNet-50
has 16 blocks but 8 distinct ones, and variants of one spec share most of theirs.

It answers only for a variant with no error: at the first problem of any kind it stops with
`None`, and the caller runs the full analysis (resgen.shapes.analyse) for the located
diagnostics. tests/test_sweep.py checks that both paths agree on validity and every count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from resgen import ops
from resgen import spec as S
from resgen.diagnostics import SpecError
from resgen.expr import EvalError, Value
from resgen.graph import POSITION, _Env, _Lowerer
from resgen.limits import LIMITS
from resgen.names import BLOCK_INPUT
from resgen.ops.base import Bundle, Fixed, Shape
from resgen.ops.layers import FLAT
from resgen.plan import BlockPlan, NetworkPlan, StagePlan, Step
from resgen.stages import stage_runs


class _Invalid(Exception):
    """The variant has a problem: the full analysis reports it."""


@dataclass(frozen=True, slots=True)
class Counted:
    """A valid variant's numbers, as resgen.shapes.Analysis has them."""

    input: tuple[int, int, int]
    params: int
    macs: int
    output: Shape
    output_stride: tuple[int, int] | None  # at the end of the last stage; None after a pool


@dataclass(slots=True)
class _Flow:
    """The tensor between two layers: its shape, the channel count the lowering tracks for
    `in_channels`, the output stride so far (None after a pool to a fixed size), and the shape
    a flatten right before turned into it."""

    shape: Shape
    channels: int | None
    jump: tuple[int, int] | None
    flattened: Shape | None = None


class _Check:
    """resgen.ops.base.Check for the fast path: any error makes the variant invalid."""

    __slots__ = ("flattened",)

    def __init__(self, flattened: Shape | None):
        self.flattened = flattened

    def error(self, code, message, *, arg=None, hint=None) -> None:
        raise _Invalid

    def warning(self, code, message, *, hint=None) -> None:
        pass


class Evaluator(_Lowerer):
    """One variant's counts. `memo` is shared by every Evaluator of one plan's variants."""

    def __init__(self, plan: NetworkPlan, input_shape, memo: dict):
        super().__init__(plan, input_shape)
        self.memo = memo
        self.node_count = 0
        self.params = 0
        self.macs = 0
        self.modules: dict[str, tuple] = {}  # module path -> (op, args), for reuses
        self.seqs: dict[str, Step] = {}  # module path -> its seq step, for reuses of a seq
        self._sharing = 0  # > 0 while a reuse runs: its weights were counted when declared
        self.instances = 0  # block bodies walked: each gets its own module prefix

    def counted(self) -> Counted | None:
        try:
            return self._run()
        except (_Invalid, SpecError, EvalError):
            return None

    # -- errors: the lowering reports through self.report; any report ends the fast path
    def report(self, span, code, message, layer, hint=None) -> None:
        raise _Invalid

    def _add_node(self) -> None:
        if self.node_count >= LIMITS.max_layers:
            raise _Invalid
        self.node_count += 1

    def _run(self) -> Counted:
        net = self.net
        env = self.scope_env(self.plan.scope, {}, None)
        self.num_blocks = self.count_stage_blocks(env)
        self._add_node()  # the input node
        self.input = self.input_shape(env)
        self.check_input(net.input.span if net.input else net.span)
        flow = _Flow(self.input, self.input[0], (1, 1))
        flow = self.steps(self.plan.stem, env, "", flow)
        stride = flow.jump
        dilation = 1
        for stage in self.plan.stages:
            flow, dilation = self.stage_flow(stage, env, flow, dilation)
            stride = flow.jump
        flow = self.steps(self.plan.head, env, "", flow)
        self._add_node()  # the output node
        return Counted(self.input, self.params, self.macs, flow.shape, stride)

    def stage_flow(self, plan: StagePlan, env, flow: _Flow, dilation: int):
        stage = plan.stage
        if any(name not in self.plan.blocks for name in stage.blocks):
            raise _Invalid
        blocks = {name: self.plan.blocks[name].block for name in stage.blocks}
        rules = stage_runs(stage, blocks, env.values, dilation)
        repeats = sum(rule.repeats for rule in rules)
        if repeats > LIMITS.max_repeats:
            raise _Invalid
        flow = self.steps(plan.layers, env, stage.name + ".", flow)
        if stage.pattern is not None:
            self.block_names(stage, env, repeats)  # reports bad names
        for rule in rules:
            block = self.plan.blocks[rule.run.block]
            first, rest = self.run_args(rule, env, stage.name)
            for index in range(rule.repeats):
                self.count_block(stage.span)
                position = (self.block_index, self.num_blocks)
                self.block_index += 1
                flow = self.block_flow(block, first if index == 0 else rest, flow, position)
        return flow, rules[-1].dilation_after

    # -- blocks, memoised
    def block_flow(
        self, plan: BlockPlan, args: Mapping[str, Value], flow: _Flow, position: tuple[int, int]
    ) -> _Flow:
        """`position`: (block_index, num_blocks), as the lowering gives it (resgen.graph)."""
        key = (
            id(plan),
            tuple(args.items()),
            position if plan.positional else None,
            flow.shape,
            flow.channels,
            flow.jump is None,
            flow.flattened,
        )
        found = self.memo.get(key)
        if found is None:
            before = (self.params, self.macs, self.node_count, self.block_count)
            inner = _Flow(flow.shape, flow.channels, (1, 1) if flow.jump else None, flow.flattened)
            out = self.block_body(plan, dict(args), inner, position)
            after = (self.params, self.macs, self.node_count, self.block_count)
            delta = tuple(a - b for a, b in zip(after, before, strict=True))
            found = self.memo[key] = (out.shape, out.channels, out.jump, out.flattened, delta)
        else:
            params, macs, nodes, blocks = found[4]
            self.params += params
            self.macs += macs
            if self.node_count + nodes > LIMITS.max_layers:
                raise _Invalid
            self.node_count += nodes
            self.block_count += blocks
            if self.block_count > LIMITS.max_blocks:
                raise _Invalid
        shape, channels, factor, flattened, _ = found
        jump = None
        if flow.jump is not None and factor is not None:
            jump = (flow.jump[0] * factor[0], flow.jump[1] * factor[1])
        return _Flow(shape, channels, jump, flattened)

    def block_body(self, plan: BlockPlan, args: dict, x: _Flow, position) -> _Flow:
        # Paths only name errors, which this path never reports: one prefix serves all.
        env = self.block_env(plan, args, x.channels, "_", position)
        self.instances += 1
        prefix = f"_{self.instances}."
        values = {BLOCK_INPUT: x}  # what `from` names: shared by main and post
        source = self.steps(plan.main[: plan.cut], env, prefix, x, values)
        out = self.steps(plan.main[plan.cut :], env, prefix, source, values)
        sc = plan.shortcut
        if sc is None or sc.source is None:
            source = x
        other = x
        if sc is not None:
            present = True
            if sc.condition is not None:
                present = self.condition_holds(sc.condition, env, "_")
                if present is None:
                    raise _Invalid
            if present:
                other = self.steps(sc.steps, env, prefix, source)
        merging = plan.merge is not None
        if merging and plan.block.merge_condition is not None:
            merging = self.condition_holds(plan.block.merge_condition, env, "_")
            if merging is None:
                raise _Invalid
        if merging:
            self._add_node()
            shape = plan.merge.combine(out.shape, other.shape)
            if shape is None:
                raise _Invalid
            jumps = [j for j in (out.jump, other.jump) if j is not None]
            jump = tuple(map(max, *jumps)) if len(jumps) == 2 else (jumps[0] if jumps else None)
            out = _Flow(shape, out.channels, jump)
        return self.steps(plan.post, env, prefix, out, values)

    # -- layers
    def steps(
        self, steps: Sequence[Step], env, prefix: str, flow: _Flow, values=None, suffix=""
    ) -> _Flow:
        """As the lowering's steps: `values` holds what `from` names (a bundle as a list of
        flows), a layer absent `when` its condition fails passes its first input, a repeat's
        turn numbers its modules with `suffix`."""
        values = {} if values is None else values
        for step in steps:
            if step.condition is not None:
                holds = self.condition_holds(step.condition, env, "_")
                if holds is None:
                    raise _Invalid
                if not holds:
                    if step.inputs:
                        flow = self._source(step.inputs[0], env, values)
                    if step.attr is not None:
                        values[step.attr] = flow
                    continue
            ins = [self._source(s, env, values) for s in step.inputs] or [flow]
            if step.kind == "repeat":
                flow = self._repeat(step, env, prefix, ins[0], values)
            elif step.kind == "reuse":
                # The module runs again on new input: its MACs count again, its weights do
                # not (the analysis counts a shared layer's parameters once).
                target = prefix + step.target + suffix
                seq = self.seqs.get(target) or self.seqs.get(prefix + step.target)
                entry = self.modules.get(target) or self.modules.get(prefix + step.target)
                if seq is None and entry is None:
                    raise _Invalid
                self._sharing += 1
                try:
                    if seq is not None:
                        flow = self.steps(seq.items, env, prefix, _single(ins), {}, suffix)
                    else:
                        flow = self.apply(*entry, _single(ins))
                finally:
                    self._sharing -= 1
            elif step.kind == "seq":
                self.seqs[prefix + step.path + suffix] = step
                flow = self.steps(step.items, env, prefix, _single(ins), {}, suffix)
            elif step.kind == "block":
                plan = self.plan.blocks[step.block]
                self.count_block(step.span)
                args = {k: self.evaluate(v, env, None) for k, v in step.args.items()}
                position = tuple(env.values.get(name, 0) for name in POSITION)  # the host's
                flow = self.block_flow(plan, args, _single(ins), position)
            else:
                op, args, _, known = self.op_args(step, env, None)
                if not known:
                    raise _Invalid
                if op.arity == "many":
                    flow = self._join(op, args, ins)
                else:
                    flow = _single(ins)
                    if step.kind == "dynamic" and op.channels(args, flow.channels) != flow.channels:
                        raise _Invalid  # the lowering's channels error
                    self.modules[prefix + step.path + suffix] = (op, args)
                    flow = self.apply(op, args, flow)
            if step.attr is not None:
                values[step.attr] = flow
        return flow

    def _source(self, source, env, values):
        value = values.get(source.name)
        if value is None:
            raise _Invalid
        if source.index is None:
            return value
        index = self.evaluate(source.index, env, None)
        if not isinstance(value, list) or not isinstance(index, int) or isinstance(index, bool):
            raise _Invalid
        if not -len(value) <= index < len(value):
            raise _Invalid
        return value[index]

    def _repeat(self, step: Step, env, prefix: str, flow, values) -> list:
        count = self.evaluate(step.count, env, None)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise _Invalid
        if count > LIMITS.max_repeats:
            raise _Invalid
        outputs: list = []
        for turn in range(count):
            key = (id(env), step.var, turn)
            inner = self._env_cache.get(key)
            if inner is None:
                inner = self._env_cache[key] = _Env({**env.values, step.var: turn}, env.failed)
            scope = dict(values)
            scope[step.attr] = list(outputs)
            out = self.steps(step.items, inner, prefix, flow, scope, f".{turn}")
            outputs.append(_single([out]))
        if len({o.channels for o in outputs}) > 1:
            raise _Invalid
        return outputs

    def _join(self, op: ops.Op, args: dict, ins: list) -> _Flow | list:
        """A node reading several tensors (concat, add, mul): the op's rule on their shapes,
        a bundle's as a Bundle; the output stride the maximum over the inputs."""
        self._add_node()
        flows = [f for x in ins for f in (x if isinstance(x, list) else (x,))]
        shapes = [Bundle(f.shape for f in x) if isinstance(x, list) else x.shape for x in ins]
        out = op.infer(shapes, args, _Check(None))
        if out is None:
            raise _Invalid
        counts = op.counts(args, shapes, out)
        self.params += counts.params
        self.macs += counts.macs
        jumps = [f.jump for f in flows if f.jump is not None]
        jump = tuple(map(max, *jumps)) if len(jumps) > 1 else (jumps[0] if jumps else None)
        return _flows(out, jump)

    def apply(self, op: ops.Op, args: dict, flow: _Flow) -> _Flow:
        self._add_node()
        shape = flow.shape
        if (op.accepts == "flat" and len(shape) != 1) or (
            op.accepts == "spatial" and len(shape) != 3
        ):
            raise _Invalid
        out = op.infer(shape, args, _Check(flow.flattened))
        if out is None:
            raise _Invalid
        counts = op.counts(args, shape, out)
        if not self._sharing:
            self.params += counts.params
        self.macs += counts.macs
        if isinstance(out, Bundle):  # a split: its chunks
            return _flows(out, flow.jump)
        try:
            channels = op.channels(args, flow.channels)
        except (KeyError, TypeError):
            channels = None
        if channels is FLAT:
            channels = None
        jump = flow.jump
        spatial = op.spatial(args)
        if isinstance(spatial, Fixed):
            jump = None
        elif spatial is not None and jump is not None:
            jump = (jump[0] * spatial[0][1], jump[1] * spatial[1][1])
        flattened = shape if len(shape) == 3 and len(out) == 1 else None
        return _Flow(out, channels, jump, flattened)


def _single(ins: list) -> _Flow:
    """The one tensor a layer reads; a bundle there is the lowering's error."""
    if isinstance(ins[0], list):
        raise _Invalid
    return ins[0]


def _flows(out, jump) -> _Flow | list:
    """A join's or a split's result: one flow, or a bundle's list of them."""
    if isinstance(out, Bundle):
        return [_Flow(shape, shape[0], jump) for shape in out]
    return _Flow(out, out[0] if len(out) == 3 else None, jump)


def count(plan: NetworkPlan, input_shape, memo: dict) -> Counted | None:
    """The counts of a valid variant, or None when the full analysis must look at it."""
    return Evaluator(plan, input_shape, memo).counted()


def with_params(plan: NetworkPlan, values: Mapping[str, Value]) -> NetworkPlan:
    """The plan with the network's params set to `values` (literals at the params' own
    declarations, which is where an error about the value itself points)."""
    from dataclasses import replace

    from resgen import expr as E
    from resgen.plan import Binding, Scope

    spans = {p.name: p.span for p in plan.network.params}
    bindings = tuple(
        Binding(b.name, E.literal(values[b.name], spans[b.name]), True)
        if b.given and b.name in values
        else b
        for b in plan.scope.bindings
    )
    params = tuple(
        p.model_copy(update={"default": E.literal(values[p.name], p.span)})
        if p.name in values
        else p
        for p in plan.network.params
    )
    network = plan.network.model_copy(update={"params": params})
    return replace(plan, scope=Scope(bindings), network=network)


def spec_with(spec: S.Spec, plan: NetworkPlan) -> S.Spec:
    return spec.model_copy(update={"network": plan.network})
