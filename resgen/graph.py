"""Lowering: a resolved `Spec` becomes a networkx DiGraph with one node per layer instance.

Node ids are the module paths of the generated torch model (`conv1`, `layer2.0.conv2`,
`layer2.0.downsample.0`), so they match state_dict prefixes; `input`, `output` and merge nodes
(`layer2.0.add`) complete the forward pass, and a stateless module applied again gets
`<path>#2`, `#3`. Insertion order is the topological order of the forward pass.

This module evaluates every expression (network params and lets, the stage rule, block params,
defaults, lets and layer arguments) and tracks the channel count, because a block's
`in_channels` is the channel count entering it. Shapes are left to resgen.shapes. Evaluation
errors become located diagnostics; a value that could not be evaluated is simply absent, and
anything that depends on it stays silent, so one mistake gives one error.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import networkx as nx

from resgen import expr as E
from resgen import spec as S
from resgen.diagnostics import Diagnostic, Span, SpecError
from resgen.expr import EvalError, Value
from resgen.limits import LIMITS
from resgen.names import IN_CHANNELS
from resgen.ops import FROM_INPUT, OPS, REQUIRED
from resgen.stages import plan_stage

INPUT, OUTPUT = "input", "output"
_APPLICATION = re.compile(r"^(.*)#(\d+)$")


def application_id(module: str, call: int) -> str:
    """The node of the call-th application of a module: `relu`, then `relu#2`, `relu#3`
    (torchvision's Bottleneck applies its one `relu` three times)."""
    return module if call == 1 else f"{module}#{call}"


def module_and_call(node: str) -> tuple[str, int]:
    """`layer1.0.relu#2` -> (`layer1.0.relu`, 2): the inverse of application_id."""
    match = _APPLICATION.match(node)
    return (match.group(1), int(match.group(2))) if match else (node, 1)


# Lowest allowed value of each numeric op argument; anything not listed must be >= 1.
_MINIMUM = {"padding": 0, "p": 0}


@dataclass
class StageEntry:
    """One `stage` line as lowered: the block type, how many instances, their paths."""

    name: str
    block: str | None
    repeats: int
    span: Span
    blocks: list[str] = field(default_factory=list)


@dataclass
class Lowering:
    graph: nx.DiGraph
    diagnostics: list[Diagnostic]
    input: tuple[int, int, int]
    network: S.Network
    stages: list[StageEntry]
    block_types: dict[str, str]  # block instance path -> block type name (nested ones too)


class _Env(dict):
    """Names to values. `failed` holds names whose evaluation failed (already reported)."""

    __slots__ = ("failed",)

    def __init__(self):
        super().__init__()
        self.failed: set[str] = set()


@dataclass
class _Scope:
    """Where a layer sits: attributes copied onto each node it produces."""

    stage: str
    block: str | None
    branch: str | None


def lower(spec: S.Spec, input_shape: tuple[int | None, int, int] | None = None) -> Lowering:
    """Lower the spec's network. Raises SpecError only when there is no network to lower."""
    if spec.network is None:
        raise SpecError(
            [Diagnostic(spec.span, "no-network", f"{spec.path} defines no network to analyse")]
        )
    with no_gc():
        return _Lowerer(spec, input_shape).run()


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building ~100,000 small dicts otherwise triggers
    collections that scan all of them, about half the time of a large network."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Lowerer:
    def __init__(self, spec: S.Spec, input_shape):
        self.spec = spec
        self.net: S.Network = spec.network
        self.nodes: dict[str, dict] = {}  # built here, handed to networkx once at the end
        self.edges: list[tuple[str, str, str]] = []
        self.diagnostics: list[Diagnostic] = []
        self._reported: set[tuple] = set()
        self._uses: dict[str, int] = {}  # module path -> times applied (for `#2` ids)
        self._arg_cache: dict[tuple, tuple] = {}
        self._env_cache: dict[tuple, _Env] = {}
        self.block_types: dict[str, str] = {}
        self.stages: list[StageEntry] = []
        self.block_count = 0  # instances, nested ones included: nesting multiplies them
        declared = self.net.input.as_tuple() if self.net.input else (3, 224, 224)
        if input_shape is not None:
            c, h, w = input_shape
            declared = (declared[0] if c is None else c, h, w)
        self.input = declared

    # -- diagnostics
    def report(
        self,
        span: Span,
        code: str,
        message: str,
        layer: str | None,
        hint: str | None = None,
        severity: str = "error",
    ) -> None:
        key = (span, code, message)
        if key in self._reported:  # a block definition error repeats in every instance
            return
        self._reported.add(key)
        self.diagnostics.append(Diagnostic(span, code, message, severity, layer, hint))

    def evaluate(self, expr: S.Expr, env: _Env, path: str | None) -> Value | None:
        """The value, or None after reporting (or silently, when an input already failed)."""
        try:
            return E.evaluate(expr, env)
        except EvalError as err:
            if env.failed and any(r.name in env.failed for r in E.free_refs(expr)):
                return None
            self.report(err.span, err.code, err.message, path, err.hint)
            return None

    # -- the network
    def run(self) -> Lowering:
        net = self.net
        env = self._network_env()
        span = net.input.span if net.input else net.span
        self.add_node(INPUT, INPUT, span, _Scope("stem", None, None), {}, {})
        self.nodes[INPUT]["out_shape"] = self.input
        self.check_input(span)
        cur, channels = INPUT, self.input[0]
        declared: dict[str, tuple[str, S.Layer]] = {}
        cur, channels = self.sequence(
            net.stem, env, "", cur, channels, _Scope("stem", None, None), declared, "main"
        )
        dilation = 1
        for stage in net.stages:
            cur, channels, dilation, _ = self.stage(stage, env, cur, channels, dilation)
        cur, channels = self.sequence(
            net.head, env, "", cur, channels, _Scope("head", None, None), declared, "main"
        )
        last_span = net.head[-1].span if net.head else net.span
        self.add_node(OUTPUT, OUTPUT, last_span, _Scope("head", None, None), {}, {})
        self.edges.append((cur, OUTPUT, "main"))
        graph = _digraph(self.nodes, self.edges, network=net.name)
        return Lowering(graph, self.diagnostics, self.input, net, self.stages, self.block_types)

    def _network_env(self) -> _Env:
        env = _Env()
        for item in (*self.net.params, *self.net.lets):
            expr = item.default if isinstance(item, S.Param) else item.value
            value = self.evaluate(expr, env, None) if expr is not None else None
            if value is None:
                env.failed.add(item.name)
            else:
                env[item.name] = value
        return env

    def stage(self, stage: S.Stage, env: _Env, cur: str, channels: int | None, dilation: int):
        block = self.spec.blocks.get(stage.block)
        entry = StageEntry(stage.name, stage.block, 0, stage.span)
        self.stages.append(entry)
        if block is None:
            raise SpecError(
                [Diagnostic(stage.block_span, "unknown-block", f"unknown block `{stage.block}`")]
            )
        try:
            plan = plan_stage(stage, block, env, dilation)
        except EvalError as err:
            if not (
                env.failed
                and any(r.name in env.failed for a in stage.args for r in E.free_refs(a.value))
            ):
                self.report(err.span, err.code, err.message, stage.name, err.hint)
            return cur, None, dilation, 0
        if plan.repeats > LIMITS.max_repeats:
            self.report(
                stage.repeats.span,
                "limit",
                f"{plan.repeats} blocks in one stage is over the limit of {LIMITS.max_repeats}",
                stage.name,
                "set RESGEN_MAX_REPEATS to raise it",
            )
            return cur, None, plan.dilation_after, 0
        entry.repeats = plan.repeats
        first = {k: self.evaluate(v, env, stage.name) for k, v in plan.first.items()}
        rest = (
            first
            if plan.rest == plan.first
            else {k: self.evaluate(v, env, stage.name) for k, v in plan.rest.items()}
        )
        for index in range(plan.repeats):
            path = f"{stage.name}.{index}"
            entry.blocks.append(path)
            self.count_block(stage.span)
            cur, channels = self.block(
                block, first if index == 0 else rest, path, cur, channels, stage.name
            )
        return cur, channels, plan.dilation_after, plan.repeats

    # -- blocks
    def block_env(
        self, block: S.Block, args: dict[str, Value | None], channels: int | None, path: str
    ) -> _Env:
        key = (id(block), channels, tuple(args.items()))
        cached = self._env_cache.get(key)
        if cached is not None:
            return cached
        env = _Env()
        if channels is None:
            env.failed.add(IN_CHANNELS)
        else:
            env[IN_CHANNELS] = channels
        for param in block.params:
            if param.name in args:
                value = args[param.name]
            elif param.default is not None:
                value = self.evaluate(param.default, env, path)
            else:
                value = None  # a missing argument: resolve reported it
            if value is None:
                env.failed.add(param.name)
            else:
                env[param.name] = value
        named = [("expansion", block.expansion)] if block.expansion is not None else []
        named += [(let.name, let.value) for let in block.lets]
        for name, expr in named:
            value = self.evaluate(expr, env, path)
            if value is None:
                env.failed.add(name)
            else:
                env[name] = value
        self._env_cache[key] = env
        return env

    def block(
        self,
        block: S.Block,
        args: dict[str, Value | None],
        path: str,
        x: str,
        channels: int | None,
        stage: str,
    ) -> tuple[str, int | None]:
        self.block_types[path] = block.name
        env = self.block_env(block, args, channels, path)
        declared: dict[str, tuple[str, S.Layer]] = {}
        shortcut = block.shortcut
        # `shortcut ... from LAYER`: the main path is lowered in two parts, so the shortcut can
        # start from the output of LAYER instead of the block input.
        cut = len(block.main)
        if shortcut is not None and shortcut.source is not None:
            cut = next(
                (
                    i + 1
                    for i, layer in enumerate(block.main)
                    if layer.kind != "reuse" and layer.name == shortcut.source
                ),
                cut,
            )
        main_scope = _Scope(stage, path, "main")
        source_out, source_channels = self.sequence(
            block.main[:cut], env, path + ".", x, channels, main_scope, declared, "main"
        )
        main_out, main_channels = self.sequence(
            block.main[cut:],
            env,
            path + ".",
            source_out,
            source_channels,
            main_scope,
            declared,
            "main",
        )
        if shortcut is None or shortcut.source is None:
            source_out, source_channels = x, channels
        shortcut_out, known = None, True
        if shortcut is not None:
            present = True
            if shortcut.condition is not None:
                present = self.shortcut_present(shortcut.condition, env, path)
                known = present is not None
            if present:
                prefix = f"{path}.{shortcut.name}."
                scope = _Scope(stage, path, "shortcut")
                shortcut_out, shortcut_channels = source_out, source_channels
                for index, item in enumerate(shortcut.layers):
                    shortcut_out, shortcut_channels = self.item(
                        item,
                        env,
                        f"{prefix}{index}",
                        shortcut_out,
                        shortcut_channels,
                        scope,
                        "shortcut",
                    )
        out = main_out
        if block.merge is not None:
            out = f"{path}.{block.merge}"
            scope = _Scope(stage, path, None)
            self.add_node(
                out,
                block.merge,
                block.merge_span or block.span,
                scope,
                {},
                {},
                known=known,
                block_input=x,
            )
            self.edges.append((main_out, out, "main"))
            if shortcut_out is not None:
                self.edges.append((shortcut_out, out, "shortcut"))
            else:
                self.edges.append((x, out, "identity"))
        return self.sequence(
            block.post,
            env,
            path + ".",
            out,
            main_channels,
            _Scope(stage, path, "post"),
            declared,
            "main",
        )

    def shortcut_present(self, condition: S.Expr, env: _Env, path: str) -> bool | None:
        key = (id(condition), id(env))
        if key in self._arg_cache:
            return self._arg_cache[key]
        present = self.evaluate(condition, env, path)
        if present is not None and not isinstance(present, bool):
            self.report(
                condition.span,
                "type",
                f"a shortcut condition is true or false, not {E.type_name(present)}",
                path,
            )
            present = None
        self._arg_cache[key] = present
        return present

    # -- layers
    def sequence(
        self,
        layers: Sequence[S.Layer],
        env: _Env,
        prefix: str,
        cur: str,
        channels: int | None,
        scope: _Scope,
        declared: dict,
        role: str,
    ):
        for layer in layers:
            if layer.kind == "reuse":
                cur = self.reuse(layer, declared, cur, scope, role)
                continue
            path = prefix + layer.name
            if layer.kind == "seq":
                for index, item in enumerate(layer.items):
                    cur, channels = self.item(
                        item, env, f"{path}.{index}", cur, channels, scope, role
                    )
            else:
                cur, channels = self.item(layer, env, path, cur, channels, scope, role)
            declared.setdefault(layer.name, (path, layer))
        return cur, channels

    def item(
        self,
        layer: S.Layer,
        env: _Env,
        path: str,
        cur: str,
        channels: int | None,
        scope: _Scope,
        role: str,
    ) -> tuple[str, int | None]:
        if layer.kind == "block":
            block = self.spec.blocks[layer.callee]
            self.count_block(layer.span)
            args = {a.name: self.evaluate(a.value, env, path) for a in layer.args}
            return self.block(block, args, path, cur, channels, scope.stage)
        if layer.kind != "op":
            raise SpecError(
                [Diagnostic(layer.span, "internal", f"unresolved layer `{layer.callee}`")]
            )
        args, spans, known = self.op_args(layer, env, path)
        self.add_node(path, layer.callee, layer.span, scope, args, spans, known=known, module=path)
        self.edges.append((cur, path, role))
        return path, _channels_after(layer.callee, args, channels)

    def reuse(self, layer: S.Layer, declared: dict, cur: str, scope: _Scope, role: str) -> str:
        target_path, target = declared[layer.name]
        count = self._uses.get(target_path, 1) + 1
        self._uses[target_path] = count
        node_id = application_id(target_path, count)
        original = self.nodes[target_path]
        self.add_node(
            node_id,
            original["op"],
            layer.span,
            scope,
            original["args"],
            original["arg_spans"],
            known=original["known"],
            module=target_path,
        )
        self.edges.append((cur, node_id, role))
        return node_id

    def add_node(
        self, node_id: str, op: str, span: Span, scope: _Scope, args: dict, spans: dict, **extra
    ) -> None:
        if node_id in self.nodes:
            raise SpecError(
                [
                    Diagnostic(
                        span,
                        "duplicate-name",
                        f"two layers would both be `{node_id}`",
                        layer=node_id,
                    )
                ]
            )
        if len(self.nodes) >= LIMITS.max_layers:
            raise SpecError(
                [
                    Diagnostic(
                        span,
                        "limit",
                        f"more than {LIMITS.max_layers} layers in one network",
                        layer=node_id,
                        hint="set RESGEN_MAX_LAYERS to raise it",
                    )
                ]
            )
        attrs = _attrs(op, span, scope, args, spans)
        attrs.update(extra)
        self.nodes[node_id] = attrs

    def count_block(self, span: Span) -> None:
        """Stop at the block limit before lowering more: blocks used as layers inside blocks
        multiply (four of a block of four of ... is 4**depth instances), which would hang."""
        self.block_count += 1
        if self.block_count > LIMITS.max_blocks:
            raise SpecError(
                [
                    Diagnostic(
                        span,
                        "limit",
                        f"more than {LIMITS.max_blocks} blocks "
                        "in one network (nested blocks count once per use)",
                        hint="set RESGEN_MAX_BLOCKS to raise it",
                    )
                ]
            )

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
                    "limit",
                    f"input {label} {value} is over the limit of {limit}",
                    None,
                    f"set RESGEN_MAX_{name} to raise it",
                )

    def op_args(self, layer: S.Layer, env: _Env, path: str) -> tuple[dict, dict, bool]:
        """Evaluated arguments with defaults filled in, their spans, and whether all are known."""
        key = (id(layer), id(env))  # envs are cached and kept alive, so ids are stable
        cached = self._arg_cache.get(key)
        if cached is not None:
            return cached
        op = OPS[layer.callee]
        args: dict[str, Value] = {}
        spans: dict[str, Span] = {}
        known = True
        given = {a.name: a for a in layer.args}
        for param in op.params:
            arg = given.get(param.name)
            if arg is None:
                if param.default is not REQUIRED and param.default is not FROM_INPUT:
                    args[param.name] = param.default
                continue
            spans[param.name] = arg.span
            value = self.evaluate(arg.value, env, path)
            if value is not None:
                problem = _argument_problem(param.name, param.type, value)
                if problem:
                    self.report(
                        arg.span,
                        "bad-argument",
                        f"`{param.name}` of {layer.callee} "
                        f"{problem}, not {E.show(value)} (`{E.source_text(arg.value)}`)",
                        path,
                    )
                    value = None
            if value is None:
                known = False
            else:
                args[param.name] = value
        if layer.callee in ("maxpool", "avgpool") and "stride" not in args and "kernel" in args:
            args["stride"] = args["kernel"]  # torch's default: stride = kernel
        result = (args, spans, known)
        self._arg_cache[key] = result
        return result


def _digraph(nodes: dict[str, dict], edges: list[tuple[str, str, str]], **graph_attrs):
    """A DiGraph filled through its adjacency dicts: networkx's add_node costs ~10 us per call,
    which dominates a 10,000-block network. The result is an ordinary DiGraph."""
    graph = nx.DiGraph(**graph_attrs)
    for node, attrs in nodes.items():
        graph._node[node] = attrs
        graph._succ[node] = {}
        graph._pred[node] = {}
    for source, target, role in edges:
        data = {"role": role}
        graph._succ[source][target] = data
        graph._pred[target][source] = data
    return graph


def _attrs(op: str, span: Span, scope: _Scope, args: dict, spans: dict) -> dict:
    return {
        "op": op,
        "span": span,
        "stage": scope.stage,
        "block": scope.block,
        "branch": scope.branch,
        "args": args,
        "arg_spans": spans,
        "known": True,
        "module": None,
        "in_shape": None,
        "out_shape": None,
        "params": 0,
        "buffers": 0,
        "macs": 0,
        "error": None,
        "tainted": False,
    }


def _channels_after(op: str, args: dict, channels: int | None) -> int | None:
    if op == "flatten":
        return None  # no longer C x H x W; resgen.shapes reports a conv or block after it
    sets = OPS[op].out_channels if op in OPS else None
    return args.get(sets) if sets else channels


def _argument_problem(name: str, kind: str, value: Value) -> str | None:
    """Why `value` cannot be argument `name` of type `kind`, or None."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return None if isinstance(value, bool) else "is true or false"
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "is a number"
        return "is between 0 and 1" if name == "p" and not 0 <= value <= 1 else None
    parts = value if (kind == "size" and isinstance(value, tuple)) else (value,)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in parts):
        return "is an integer or an (h, w) pair" if kind == "size" else "is an integer"
    if not is_int and kind != "size":
        return "is an integer"
    lowest = _MINIMUM.get(name, 1)
    if any(v < lowest for v in parts):
        return f"must be at least {lowest}"
    if name in ("kernel", "dilation", "stride", "padding") and any(
        v > LIMITS.max_kernel for v in parts
    ):
        return f"is over the limit of {LIMITS.max_kernel}"
    if name in ("channels", "features", "in_features", "groups") and (value > LIMITS.max_channels):
        return f"is over the limit of {LIMITS.max_channels}"
    return None
