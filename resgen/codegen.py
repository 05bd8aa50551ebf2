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

import keyword
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from resgen import codes, designspace, metadata, ops
from resgen import expr as E
from resgen import spec as S
from resgen.algebra import simplify
from resgen.diagnostics import Diagnostic, Span, SpecError
from resgen.graph import application_id, runs_text
from resgen.guard import UnsafeCode, check_source
from resgen.names import BLOCK_INDEX, BLOCK_INPUT, IN_CHANNELS, NUM_BLOCKS, STAGE_INDEX
from resgen.ops.base import CONV, LINEAR, NORM, Fixed, Items, Operand
from resgen.ops.layers import FLAT
from resgen.output import PY_MARK
from resgen.plan import (
    BlockPlan,
    Channels,
    NetworkPlan,
    StagePlan,
    Step,
    block_out,
    channels_after,
    elaborate,
)
from resgen.render import (
    Atom,
    Call,
    Code,
    CodeError,
    Keyword,
    Repeated,
    Starred,
    dotted,
    ident,
    literal,
    render,
)
from resgen.stages import stage_runs
from resgen.text import shape_text

GENERATED_MARK = PY_MARK
ORDERED_DICT = "from collections import OrderedDict"
SEQUENCE = "from collections.abc import Sequence"
TORCH = "import torch"
CHECKPOINT = "from torch.utils.checkpoint import checkpoint"
ANY = "from typing import Any"
CALLABLE = "from collections.abc import Callable"
OP_ANNOTATION = "Callable[..., nn.Module]"  # a param holding an op: a module constructor
MODULE_TEMPLATE = "module.py.jinja"

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
    local: bool = False  # a local of __init__ (a stage built before its container), not self.
    condition: str | None = None  # `when`: built where it holds, None elsewhere

    @property
    def target(self) -> str:
        return self.attr if self.local else f"self.{self.attr}"


@dataclass
class StepView:
    """One line of forward(): `before + input + after`, e.g. `self.conv1(` `x` `)`, or, for an
    op whose parameter belongs to the block, `` `out` `.mul(self.gamma.reshape(1, -1, 1, 1))`."""

    call: str  # the module (`self.conv1`), or the op's `apply` with `{x}` for the input
    comment: str | None = None
    module: str | None = None  # the module path it applies first (None: a reuse, a container)
    tap: bool = False  # its output is a feature (the features-only forward appends it)
    stage: bool = False  # a stage or a container of stages (set_grad_checkpointing's blocks)
    checkpointed: list[str] = field(default_factory=list)  # a stage's lines, blocks checkpointed

    @property
    def before(self) -> str:
        return self.call.partition("{x}")[0] if "{x}" in self.call else self.call + "("

    @property
    def after(self) -> str:
        return self.call.partition("{x}")[2] if "{x}" in self.call else ")"


@dataclass
class ShortcutView:
    attr: str
    condition: str | None  # None: always built
    build: Code
    after: int | None = None  # `from LAYER`: index of the main step whose output it reads
    input: str = "x"  # the forward-local the shortcut is applied to
    first: bool = False  # registered before the main path's layers (written first in the block)


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
    merge_line: str | None  # `out += identity`: the merge op's statement
    identity_first: bool  # `identity = x` before the main path
    post_layers: list[LayerView]
    post: list[StepView]
    merge_condition: str | None = None  # `merge ... when`: stored as self.residual
    # A block body that forks and joins (`from`, `repeat`, `when`, split/concat): forward()'s
    # lines for main and post, written out (None: one `out = ...` line per step), and the
    # names forward() reads that __init__ stores (`self.scale = scale`).
    main_lines: list[str] | None = None
    post_lines: list[str] | None = None
    stored: list[str] = field(default_factory=list)


@dataclass
class ZeroInitView:
    block: str
    params: tuple[str, ...]  # `module.bn3.weight`: zeroed, they make the residual branch zero
    norm: bool = True  # the branch's last batch norm, torchvision's rule
    conditional: bool = False  # only instances with a residual (`merge ... when`)


@dataclass
class InitView:
    cls: str  # `nn.Conv2d`
    lines: tuple[str, ...]  # statements on `module`, from the op's declaration


@dataclass
class FeatureView:
    """One entry of feature_info: channels as Python (they may follow a parameter), timm's
    reduction and the module path."""

    num_chs: str
    reduction: str
    module: str
    name: str | None = None  # the `features` section's name, when it differs from the module


@dataclass
class InterfaceView:
    """timm's model interface (resgen.features holds the taps, README "Backbones" the rule
    that splits the head): forward_features runs `trunk`, forward_head runs `head` (the global
    pool and any pre-logits layers), then the classifier, after dropout at drop_rate."""

    trunk: list[StepView]  # stem, stages, head layers before the global pool
    head: list[StepView]
    classifier: str | None  # `self.fc`, `self.head.fc`
    new_classifier: Code | None  # reset_classifier's nn.Linear for `num_classes`
    num_features: str  # Python: the channels forward_features gives
    head_hidden_size: str | None  # the classifier's input width, when pre-logits change it
    features: list[FeatureView]
    drop_rate: bool  # the class takes drop_rate (timm's dropout before the classifier)
    tapped: list[StepView]  # the features-only forward: trunk, stages in containers each called
    first_conv: str = ""  # state_dict key of the first convolution's weight (load_pretrained)
    classifier_path: str = ""  # module path of the classifier ("" without one)
    classifier_module: str | None = None  # the same, as it is (pretrained_cfg's classifier)
    # timm's global_pool argument: the modules of the pool and of the one flattening layer
    pool: str | None = None  # `self.avgpool`; None: the head is not pool, flatten, classifier
    flat: str | None = None
    pool_type: str | None = None  # "avg": the default choice
    checkpointed: list[str] = field(default_factory=list)  # every stage's checkpointed lines
    stem: Code | None = None  # frozen_stages: a list of the stem's modules (`self.conv1`)
    stages: Code | None = None  # and of the stages' (`self.stages[0]`); None: no such option

    @property
    def trunk_parts(self) -> tuple[list[StepView], list[StepView], list[StepView]]:
        """forward_features' steps before the stages, the stages (checkpointed block by block
        under set_grad_checkpointing, as timm's), and after them."""
        stages = [i for i, step in enumerate(self.trunk) if step.stage]
        if not stages:
            return self.trunk, [], []
        first, last = stages[0], stages[-1] + 1
        return self.trunk[:first], self.trunk[first:last], self.trunk[last:]


@dataclass
class NetworkView:
    class_name: str
    factory: str
    params: list[ParamView]
    lets: list[tuple[str, str]]
    layers: list[LayerView]
    steps: list[StepView]
    zero_init: list[ZeroInitView]
    inits: list[InitView]
    zero_init_comment: list[str] = field(default_factory=list)
    interface: InterfaceView | None = None
    factory_params: list[ParamView] = field(default_factory=list)  # params, features_only, ...
    out_indices: str = "()"  # every feature: the features-only model's default
    num_stages: int = 0
    pretrained_cfg: list[tuple[str, str]] = field(default_factory=list)  # Python key, value


@dataclass
class FactoryView:
    """A module-level function that builds an op with bound arguments (`groupnorm(32)`), the
    default of a norm_layer-like parameter."""

    name: str
    signature: str  # `channels: int, **kwargs`
    call: Code
    spec: str  # the spec's text of the op value, for the docstring


@dataclass
class ModuleView:
    source: str
    doc: list[str]
    blocks: list[BlockView]
    network: NetworkView
    helpers: tuple[str, ...] = ()  # templates of helper modules (ops with `helper`), in use order
    imports: tuple[str, ...] = ()  # import lines of plugin ops
    factories: tuple[FactoryView, ...] = ()  # ops with bound arguments used as values
    functions: tuple[str, ...] = ()  # source of the design-space functions the code calls

    @property
    def import_lines(self) -> list[str]:
        """The standard library's imports, a blank line, then torch's and any plugin's, each
        group sorted as isort (ruff) lays them out: `import x` lines first, then `from`
        lines, each by module."""
        lines = set(_merged({"from torch import Tensor, nn", *self.imports}))
        stdlib = sorted((line for line in lines if _module(line) in _STDLIB), key=_import_order)
        others = sorted((line for line in lines if _module(line) not in _STDLIB), key=_import_order)
        return [*stdlib, *([""] if stdlib else []), *others]

    @property
    def header_noqa(self) -> str:
        """A spec whose file name alone overflows the header line."""
        return "  # noqa: E501" if len(self.source) > HEADER_PATH_ROOM else ""


# Modules generated code imports from the standard library (isort's first group).
_STDLIB = frozenset({"collections", "collections.abc", "math", "typing"})


def _merged(lines: Iterable[str]) -> list[str]:
    """`from m import a` and `from m import b` as one `from m import a, b` (isort's way)."""
    names: dict[str, set[str]] = {}
    merged = []
    for line in lines:
        if line.startswith("from ") and " as " not in line:
            module, _, imported = line[5:].partition(" import ")
            names.setdefault(module, set()).update(n.strip() for n in imported.split(","))
        else:
            merged.append(line)
    for module, imported in names.items():
        ordered = sorted(imported, key=lambda n: (not n[:1].isupper(), n))  # isort: Tensor, nn
        merged.append(f"from {module} import {', '.join(ordered)}")
    return merged


def _module(line: str) -> str:
    return line.split()[1]


def _import_order(line: str) -> tuple[bool, str]:
    return line.startswith("from "), _module(line)


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
            [Diagnostic(spec.span, codes.NO_NETWORK, f"{spec.path} defines no network to generate")]
        )
    if analysis is None:
        analysis = _analyse(spec)
    if not analysis.ok:
        raise SpecError(analysis.diagnostics)
    try:
        view = _ModuleBuilder(spec, analysis, _source_label(source or display_path(spec.path)))
        view = view.build()
        text = render(MODULE_TEMPLATE, view, templates)
    except CodeError as err:
        raise SpecError([Diagnostic(spec.network.span, codes.CODEGEN, str(err))]) from None
    except E.EvalError as err:
        raise SpecError([Diagnostic(err.span, err.code, err.message, hint=err.hint)]) from None
    try:
        check_source(text)
    except UnsafeCode as err:  # only a user's --templates can get here
        raise SpecError([Diagnostic(spec.network.span, codes.UNSAFE_CODE, str(err))]) from None
    return text


def _function_sources(names: Iterable[str]) -> list[tuple[str, str]]:
    """(name, source) of each function resgen.designspace defines for `names`, each once, a
    function after those it calls: generated code runs the very code resgen evaluated."""
    import inspect

    found: dict[str, str] = {}
    for name in sorted(names):
        for function in designspace.SOURCES[name]:
            found.setdefault(function.__name__, inspect.getsource(function).rstrip("\n"))
    return list(found.items())


def display_path(path: str) -> str:
    """The spec as the header names it: its file name alone, so the generated file is the same
    bytes wherever the spec lies and wherever the command runs (`# Generated by resgen from
    resnet50.arch`)."""
    return PurePath(path).name


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
    used so only the `let`s that matter become locals. `render_op` writes an op used as a value
    (`norm_layer = groupnorm(32)`): its class, or a factory the module defines."""

    def __init__(
        self,
        rename: Mapping[str, str] | None = None,
        render_op=None,
        floats=(),
        pairs: frozenset[str] = frozenset(),
        functions: set[str] | None = None,
    ):
        self.rename = dict(rename or {})
        # Design-space functions (resgen.designspace) the emitted code calls, which the module
        # then defines: one set shared by every scope of a generated module.
        self.functions = functions if functions is not None else set()
        self.used: set[str] = set()
        self.render_op = render_op
        self.floats = frozenset(floats)  # names holding a fraction: `/` stays `/` for them
        self.pairs = pairs  # names that may hold an (h, w) pair: compared as torch broadcasts
        self.features_used = False  # a layer after `flatten` read the block's `in_features`

    def name(self, n: str) -> str:
        self.used.add(n)
        return self.rename.get(n) or ident(n)

    def code(self, expr: S.Expr) -> str:
        self.functions.update(
            e.name for e in E.walk(expr) if isinstance(e, S.Func) and e.name in E.DEFINED
        )
        return E.to_python(
            expr, self.name, self.render_op, self.floats.__contains__, self.pairs.__contains__
        )

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
    params = tuple(params)
    views, seen_default = list(first), False
    for p in params:
        name = ident(p.name)
        value = _constant(p.default)
        if p.default is None:
            views.append(ParamView(name, "int", None, star_before=seen_default))
        elif value is None:  # refers to earlier parameters: resolved in the body
            views.append(ParamView(name, "int | None", "None", late_default=scope.code(p.default)))
            seen_default = True
        elif isinstance(value, E.OpValue):  # torchvision's norm_layer: a module constructor
            views.append(ParamView(name, OP_ANNOTATION, scope.code(p.default)))
            seen_default = True
        else:
            views.append(ParamView(name, _annotation(value), literal(value)))
            seen_default = True
    for p, view in zip(params, views[len(first) :], strict=True):
        if p.name in scope.pairs and view.annotation in ("int", "int | None"):  # (h, w) passed
            view.annotation = view.annotation.replace("int", "int | tuple[int, int]", 1)
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
        # The analysis's own plan: its nodes point at these steps (what a dynamic layer held).
        self.plan: NetworkPlan = analysis.plan or elaborate(spec)
        self.net: S.Network = spec.network
        self.helpers: dict[str, str] = {}  # helper class -> its template, for ops not in torch.nn
        self.imports: dict[str, None] = {}  # import lines plugin ops need, in use order
        self.factories: dict[E.OpValue, FactoryView] = {}
        # Blocks that use their position get block_index (the stage's first block's: the sum
        # of the repeats before it) and num_blocks (all stages' repeats).
        zero = E.literal(0, spec.network.span)
        self.block_offset: S.Expr = zero
        self.num_blocks: S.Expr = zero
        for stage in spec.network.stages:
            for run in stage.runs:
                self.num_blocks = _plus(self.num_blocks, run.repeats)
        # block type -> its parameters that some instance gives an (h, w) pair
        self.pairs: dict[str, set[str]] = {name: set() for name in self.plan.blocks}
        self.functions: set[str] = set()  # design-space functions the code calls (_Scope)
        self._writing: BlockPlan | None = None  # the block whose class is being written

    def build(self) -> ModuleView:
        network = self._network()
        self._spread_pairs()
        blocks = [self._block(plan) for plan in self.plan.blocks.values()]
        functions = _function_sources(self.functions)
        for name in sorted(self.functions):
            self.imports.update(dict.fromkeys(designspace.IMPORTS.get(name, ())))
        names = [b.name for b in blocks] + [network.class_name, network.factory, *self.helpers]
        if network.interface.features:
            names += [f"{network.class_name}Features", "prune_after"]
        names.append("adapt_input_conv")
        names += [f.name for f in self.factories.values()]
        names += [name for name, _ in functions]
        imported = {"nn", "Tensor", "torch", "checkpoint"}
        clash = sorted({n for n in names if names.count(n) > 1} | (imported & set(names)))
        if clash:
            raise CodeError(
                f"the generated module would define `{clash[0]}` twice; give the "
                "network a different `class` or name"
            )
        return ModuleView(
            self.source,
            self._doc(),
            blocks,
            network,
            tuple(self.helpers.values()),
            tuple(self.imports),
            tuple(self.factories.values()),
            tuple(source for _, source in functions),
        )

    # -- layers
    def _build(
        self, step: Step, channels: Channels, scope: _Scope, node: str | None = None
    ) -> Code:
        """The constructor call of one layer that receives `channels` channels. `node` is the
        layer's graph node at network level (None inside a block), where a flatten's size is
        known from the analysis."""
        if step.kind == "seq":
            return self._sequential(step.items, channels, scope, node)
        if channels is FLAT and node is None:  # after a flatten in a block: its in_features
            scope.features_used = True
            channels = S.Ref(span=step.span, name=FEATURES)
        if step.kind == "block":
            plan = self.plan.blocks[step.block]
            arguments = _block_arguments(plan.block, step.args, scope)
            if plan.positional and node is None:  # inside a block: its host's position
                arguments += [
                    Keyword(name, Atom(scope.name(name))) for name in (BLOCK_INDEX, NUM_BLOCKS)
                ]
            elif plan.positional:  # in the stem or head
                arguments += list(self._at(plan, E.literal(0, step.span), scope))
            if node is not None and _needs_features(plan, self.plan.blocks):
                features = self._flat_features(plan, channels, step.args, node)
                arguments.append(Keyword(FEATURES, scope.atom(features)))
            return Call(ident(plan.name), (scope.atom(channels), *arguments))
        if step.kind == "dynamic":
            return self._dynamic(step, channels, scope)
        if step.kind != "op":
            raise CodeError(f"layer `{step.attr}` of kind {step.kind} cannot be built")
        if step.op.emit.in_channels is not None and channels is FLAT:
            # the analysis reports what code cannot size (flatten-in-block)
            raise CodeError(f"cannot tell the input size of `{step.attr or step.op.name}`")
        if step.op.emit.owned is not None:  # a parameter of the block itself (layer scale)
            return self._owned(step.op, step.args, scope, scope.atom(channels))
        known = None if channels is FLAT else channels
        return self._op_call(step.op, step.args, scope, known, step.span)

    def _owned(self, op: ops.Op, given: Mapping[str, S.Expr], scope: _Scope, channels) -> Code:
        """`nn.Parameter(torch.full((planes,), 1e-06))`: the op's `owned` template with the
        incoming channels and its arguments (defaults filled in) written as Python."""
        values = {p.name: p.default for p in op.params if p.fixed_default}
        values.update({name: _constant(expr) for name, expr in given.items()})
        code = {
            name: scope.code(given[name]) if name in given else literal(value)
            for name, value in values.items()
        }
        self.imports.update(dict.fromkeys(op.emit.imports))
        return Atom(op.emit.owned.format(channels=channels, **code))

    def _op_call(
        self,
        op: ops.Op,
        given: Mapping[str, S.Expr],
        scope: _Scope,
        channels: S.Expr | None,
        span: S.Span,
        *extra,
    ) -> Call:
        """`nn.Conv2d(64, 128, kernel_size=3, ...)`: the op's class; the incoming channels and
        the op's positional arguments in the order it declares (nn.GroupNorm(32, 64)), with
        derived values (a group norm's groups from group_size) and defaults torch may lack
        written out; then keywords for what differs from its defaults (torchvision does not
        spell out defaults), the op's constant keywords, and `extra` (`**kwargs`)."""
        emit = op.emit
        given = dict(given)
        if channels is not None:
            for name, value in op.derived(given, channels).items():
                given.setdefault(
                    name, value if isinstance(value, S.Node) else E.literal(value, span)
                )
        args: list[Code] = []
        by_position: set[str] = set()
        for name in emit.order:
            if name == emit.in_channels:
                if channels is not None and _passes_channels(op, given):
                    args.append(scope.atom(channels))
                continue
            param = op.param(name)
            if name in given:
                args.append(scope.atom(given[name]))
            elif param is not None and param.fixed_default:  # torch may have no default here
                args.append(Atom(literal(param.default)))
            else:
                break  # the rest go by keyword
            by_position.add(name)
        for p in op.params:
            value = given.get(p.name)
            if value is None or p.name in by_position or p.torch is None:
                continue
            constant = _constant(value)
            if p.fixed_default and constant == p.default and type(constant) is type(p.default):
                continue
            args.append(Keyword(ident(p.torch), scope.atom(value)))
        args += [Keyword(ident(key), Atom(_constant_code(value))) for key, value in emit.keywords]
        if emit.helper is not None:  # a small module the generated file defines (PadChannels)
            self.helpers[ident(emit.cls)] = emit.helper
        self.imports.update(dict.fromkeys(emit.imports))
        return Call(dotted(emit.cls), (*args, *extra))

    def _dynamic(self, step: Step, channels: Channels, scope: _Scope) -> Code:
        """`norm_layer(width, eps=0.001)`: a layer made by the op a param holds, called the way
        every op it holds in this network is called (channels first for norms; named arguments
        by their torch keywords)."""
        held = {n.op for n in self.analysis.nodes.values() if n.step is step}
        if not held:  # in a branch no instance takes (a shortcut `when`): the param's default
            held = self._default_ops(step.via)
        takes_channels = {op.emit.in_channels is not None for op in held}
        if len(takes_channels) != 1:
            raise CodeError(
                f"`{step.via}` holds ops called in different ways here "
                f"({', '.join(sorted(op.name for op in held))}), so one line of code cannot "
                "build them all"
            )
        args: list[Code] = [scope.atom(channels)] if takes_channels.pop() else []
        for name, value in step.args.items():
            keywords = {op.param(name).torch for op in held}
            if len(keywords) != 1 or None in keywords:
                raise CodeError(f"`{name}` means different things to the ops `{step.via}` holds")
            args.append(Keyword(ident(keywords.pop()), scope.atom(value)))
        return Call(scope.name(step.via), tuple(args))

    def _default_ops(self, via: str | None) -> set:
        """The op the default of parameter `via` of the block being written holds (none when
        it has no op default): how a layer no instance of the block builds is called."""
        plan = self._writing
        param = plan.block.param(via) if plan is not None and via else None
        try:
            value = E.evaluate(param.default, {}) if param and param.default else None
        except E.EvalError:
            value = None
        return {value.op} if isinstance(value, E.OpValue) else set()

    def _op_value(self, expr: S.OpRef) -> str:
        """Python for an op used as a value: its class (`nn.BatchNorm2d`) when that is called
        as a layer made from it is (channels first, nothing bound), else a factory function
        the module defines (`groupnorm_32`): torchvision's norm_layer convention."""
        try:
            value = E.evaluate(expr, {})
        except E.EvalError as err:
            raise CodeError(
                f"`{E.source_text(expr)}`: an op used as a value has constant arguments in "
                f"generated code ({err.message})"
            ) from None
        op = value.op
        self.imports[CALLABLE] = None
        if (
            not value.args
            and not op.emit.positional
            and not op.emit.keywords
            and op.emit.in_channels_if is None
        ):
            if op.emit.helper is not None:  # FrozenBatchNorm2d: a class the module defines
                self.helpers[ident(op.emit.cls)] = op.emit.helper
            self.imports.update(dict.fromkeys(op.emit.imports))
            return dotted(op.emit.cls)
        factory = self.factories.get(value)
        if factory is None:
            name = _factory_name(value, {f.name for f in self.factories.values()})
            given = {k: E.literal(v, expr.span) for k, v in value.args}
            channels = (
                S.Ref(span=expr.span, name="channels") if op.emit.in_channels is not None else None
            )
            call = self._op_call(op, given, _Scope(), channels, expr.span, Atom("**kwargs"))
            signature = "channels: int, **kwargs" if channels is not None else "**kwargs"
            factory = self.factories[value] = FactoryView(name, signature, call, str(value))
        return factory.name

    def _sequential(self, steps, channels: Channels, scope: _Scope, node: str | None) -> Code:
        """`nn.Sequential(...)` of the layers of a `seq` or a shortcut, channels flowing; named
        layers go in an OrderedDict, as torchvision writes them (keys `downsample.conv`)."""
        items = []
        for item in steps:
            item_node = f"{node}.{item.key}" if node is not None else None
            items.append(self._build(item, channels, scope, item_node))
            channels = (
                self._after(item, channels, item_node)
                if item_node is not None
                else channels_after(item, channels, self.plan.blocks)
            )
        if steps and steps[0].attr is not None:
            self.imports[ORDERED_DICT] = None
            named = tuple(
                Keyword(ident(s.attr), code) for s, code in zip(steps, items, strict=True)
            )
            return Call("nn.Sequential", (Call("OrderedDict", named),))
        return Call("nn.Sequential", tuple(items))

    # -- blocks
    def _block(self, plan: BlockPlan) -> BlockView:
        self._writing = plan
        block = plan.block
        expansion_value = _constant(block.expansion)
        constant_expansion = block.expansion is not None and expansion_value is not None
        rename = {"expansion": "self.expansion"} if constant_expansion else {}
        scope = _Scope(
            rename,
            self._op_value,
            self.analysis.float_names.get(plan.name, ()),
            frozenset(self.pairs[plan.name]),
            self.functions,
        )
        params = _params(block.params, scope, [ParamView("in_channels", "int", None)])
        if plan.positional:
            params += [ParamView(BLOCK_INDEX, "int", "0"), ParamView(NUM_BLOCKS, "int", "1")]
        expansion_local = None
        if block.expansion is not None and not constant_expansion:
            expansion_local = scope.code(block.expansion)
        layers, main = [], []
        channels: Channels = S.Ref(span=block.span, name=IN_CHANNELS)
        sc = plan.shortcut
        source: tuple[int, Channels] | None = None  # `from LAYER`: its step and channels
        flow = _Flow(self, plan, scope) if _is_dataflow(plan) else None
        if flow is not None:
            if sc is not None and sc.source is not None:
                raise CodeError(
                    f"block `{block.name}`: a shortcut `from` a layer in a body that forks "
                    "and joins; name its input with the layer's `from` instead"
                )
            channels = flow.declare(plan.main, channels, layers)
        for index, step in enumerate(plan.main if flow is None else ()):
            channels = self._block_layer(step, channels, scope, layers, main)
            if sc is not None and sc.source is not None and index == plan.cut - 1:
                source = (len(main) - 1, channels)
        shortcut = None
        if sc is not None:
            start = S.Ref(span=sc.span, name=IN_CHANNELS) if source is None else source[1]
            build = self._sequential(sc.steps, start, scope, None)
            condition = scope.code(sc.condition) if sc.condition is not None else None
            shortcut = ShortcutView(ident(sc.attr), condition, build, first=block.shortcut_first)
            if source is not None:
                shortcut.after, shortcut.input = source[0], "shortcut_input"
        post_layers: list[LayerView] = []
        post: list[StepView] = []
        if flow is not None:
            channels = flow.declare(plan.post, channels, post_layers)
        for step in plan.post if flow is None else ():
            channels = self._block_layer(step, channels, scope, post_layers, post)
        if scope.features_used:  # a layer after flatten: its size per instance, from the caller
            params.append(ParamView(FEATURES, "int", None, star_before=True))
            starred = False  # only the first keyword-only parameter carries the `*`
            for view in params:
                view.star_before, starred = (
                    view.star_before and not starred,
                    starred or view.star_before,
                )
        lets = _lets(block.lets, scope)
        merge = plan.merge
        inline = merge is not None and merge.inline is not None and shortcut is None
        if merge is None:
            merge_line = None
        else:
            merge_line = merge.inline if inline else merge.statement
        return BlockView(
            name=ident(block.name),
            expansion=literal(expansion_value) if constant_expansion else None,
            expansion_local=expansion_local,
            params=params,
            lets=lets,
            layers=layers,
            main=main,
            shortcut=shortcut,
            merge_line=merge_line,
            merge_condition=(
                scope.code(block.merge_condition) if block.merge_condition is not None else None
            ),
            # `identity = x` up front: the merge sees x unless a shortcut always replaces it (or
            # the merge reads x itself, as squeeze-excite's `out = x * out` does).
            identity_first=merge is not None
            and not inline
            and (shortcut is None or shortcut.condition is not None),
            post_layers=post_layers,
            post=post,
            main_lines=flow.forward(plan.main, "x") if flow is not None else None,
            post_lines=flow.forward(plan.post, "out") if flow is not None else None,
            stored=flow.stored() if flow is not None else [],
        )

    def _block_layer(
        self,
        step: Step,
        channels: Channels,
        scope: _Scope,
        layers: list[LayerView],
        steps: list[StepView],
    ) -> Channels:
        if step.kind == "reuse":
            steps.append(StepView(f"self.{ident(step.target)}"))  # parameter-free: a module
            return channels
        attr = ident(step.attr)
        layers.append(LayerView(attr, self._build(step, channels, scope)))
        steps.append(StepView(_apply(step.op, f"self.{attr}")))
        return channels_after(step, channels, self.plan.blocks)

    # -- (h, w) pairs given to block parameters
    def _note_pairs(self, steps: Iterable[Step], is_pair) -> None:
        """Note the block parameters that `steps` (block layers, seq items) give a pair."""
        for step in steps:
            if step.kind == "block":
                self._note_args(step.block, step.args, is_pair)
            self._note_pairs(step.items, is_pair)

    def _note_args(self, block: str, args: Mapping[str, S.Expr], is_pair) -> None:
        self.pairs[block].update(name for name, value in args.items() if is_pair(value))

    def _spread_pairs(self) -> None:
        """From callers to the blocks they use (the plan lists a block after its callees): a
        parameter, let or default that may be a pair makes the arguments it flows into pairs."""
        for name in reversed(self.plan.blocks):
            plan, names = self.plan.blocks[name], self.pairs[name]
            names.update(p.name for p in plan.block.params if isinstance(p.default, S.Pair))
            for let in plan.block.lets:
                if any(r.name in names for r in E.free_refs(let.value)):
                    names.add(let.name)

            def is_pair(expr: S.Expr, names=names) -> bool:
                return isinstance(expr, S.Pair) or (isinstance(expr, S.Ref) and expr.name in names)

            self._note_pairs((*plan.main, *plan.post), is_pair)
            if plan.shortcut is not None:
                self._note_pairs(plan.shortcut.steps, is_pair)

    # -- network
    def _network(self) -> NetworkView:
        net = self.net
        scope = _Scope(
            render_op=self._op_value,
            floats=self.analysis.float_names.get("", ()),
            functions=self.functions,
        )
        params = _params(net.params, scope, [])
        env, _ = self.plan.scope.values({}, lambda expr, values, _: E.evaluate(expr, values))
        layers: list[LayerView] = []
        steps: list[StepView] = []
        channels = self._input_channels(env)
        applied: dict[str, int] = {}

        def is_pair(expr: S.Expr) -> bool:  # at the network's default arguments
            try:
                return isinstance(E.evaluate(expr, env), tuple)
            except E.EvalError:
                return False

        self._note_pairs((*self.plan.stem, *self.plan.head), is_pair)
        widths: dict[str, Channels] = {}  # module path -> channels of its output
        tapped: list[StepView] = []  # the features-only forward's steps
        tapped_inside = {tap.module for tap in self.analysis.features if "." in tap.module}
        for step in self.plan.stem:
            before = channels
            channels = self._network_layer(step, channels, scope, layers, steps, applied)
            widths[step.path] = channels
            if step.kind == "seq" and any(
                m.startswith(f"{step.path}.") for m in tapped_inside
            ):  # a feature inside it (timm's `stem.conv2`): the features-only forward
                # calls its items one by one
                for view, item in zip(self._seq_items(step), step.items, strict=True):
                    before = self._after(item, before, f"{step.path}.{item.key}")
                    widths[view.module] = before
                    tapped.append(view)
            else:
                tapped.append(steps[-1])
        stem = [view.call for view in steps if view.module is not None and "{x}" not in view.call]
        stage_modules: list[str] = []  # each stage's module, as frozen_stages freezes it
        dilation = 1
        checkpointed: list[str] = []  # set_grad_checkpointing's lines for the stages
        containers = _Containers(self.plan.stages)
        for index, stage_plan in enumerate(self.plan.stages):
            stage = stage_plan.stage
            blocks = {name: self.plan.blocks[name].block for name in stage.blocks}
            rules = stage_runs(stage, blocks, env, dilation)
            dilation = rules[-1].dilation_after
            for rule in rules:
                self._note_args(rule.run.block, {**rule.first, **rule.rest}, is_pair)
            build, channels = self._stage(stage_plan, rules, channels, scope)
            info = self._stage_info(stage.name)
            runs = runs_text([(_repeats_text(rule), rule.run.block) for rule in rules])
            shapes = f"{shape_text(info.in_shape)} -> {shape_text(info.out_shape)}"
            comment = f"{stage.name}: {runs}, {shapes}"
            if len(rules) > 1 and len(comment) > COMMENT_WIDTH:  # the block types, each once
                total = sum(rule.repeats for rule in rules)
                comment = f"{stage.name}: {total} blocks ({', '.join(stage.blocks)}), {shapes}"
            widths[stage.name] = channels
            out_text = shape_text(info.out_shape)
            if len(stage.path) == 1:  # an attribute of the network, as torchvision's layer1
                layers.append(LayerView(ident(stage.name), build, comment))
                call = f"self.{ident(stage.name)}"
                lines = _checkpointed(stage_plan, call)
                stage_modules.append(call)
                steps.append(StepView(call, out_text, stage.name, stage=True, checkpointed=lines))
                checkpointed += lines
                tapped.append(steps[-1])
                continue
            call = self._child(stage_plan)
            lines = _checkpointed(stage_plan, call)
            stage_modules.append(call)
            tapped.append(StepView(call, out_text, stage.name, stage=True, checkpointed=lines))
            checkpointed += lines
            # In a container (`stages.0`): built into a local, the container once complete.
            local = containers.local(index, {p.name for p in net.params} | scope.used)
            layers.append(LayerView(local, build, comment, local=True))
            top = containers.completed(index, local)
            if top is not None:
                attr, code = top
                layers.append(LayerView(ident(attr), code))
                steps.append(StepView(f"self.{ident(attr)}", out_text, stage.name, stage=True))
                if containers.uses_ordered_dict:
                    self.imports[ORDERED_DICT] = None
        head_start = len(steps)
        for step in self.plan.head:
            channels = self._network_layer(step, channels, scope, layers, steps, applied)
            widths[step.path] = channels
        interface = self._interface(steps, head_start, tapped, widths, scope)
        interface.checkpointed = checkpointed
        interface.stem = Call("", tuple(map(Atom, stem)), "[]") if stem else None
        if any(p.name == "drop_rate" for p in net.params):
            # the spec's own drop_rate already drives its head's dropout: no second dropout
            interface.drop_rate = False
        elif interface.drop_rate:
            params.append(ParamView("drop_rate", "float", "0.0"))
        if interface.pool_type is not None and all(p.name != "global_pool" for p in net.params):
            params.append(ParamView("global_pool", "str", f'"{interface.pool_type}"'))
            self.helpers["global_pool_layer"] = "global_pool_layer.py.jinja"
            for op in ops.registered():  # the choices' modules (timm's SelectAdaptivePool2d)
                if op.global_pool is not None and op.emit.helper is not None:
                    self.helpers.setdefault(ident(op.emit.cls), op.emit.helper)
                    self.imports.update(dict.fromkeys(op.emit.imports))
        else:
            interface.pool = interface.flat = interface.pool_type = None
        zero_init, left = [], []
        for plan in self.plan.blocks.values():
            found = _zero_init(plan, self.plan.blocks)
            if isinstance(found, ZeroInitView):
                zero_init.append(found)
            elif found is not None:
                left.append(f"`{plan.name}` is left as it is: {found}.")
        if stage_modules and not {"frozen_stages", "norm_eval"} & {p.name for p in net.params}:
            # mmdetection's detection-backbone options, in its order
            params.append(ParamView("frozen_stages", "int", "-1"))
            params.append(ParamView("norm_eval", "bool", "False"))
            interface.stages = Call("", tuple(map(Atom, stage_modules)), "[]")
        has_zero_param = any(p.name == "zero_init_residual" for p in net.params)
        if zero_init and not has_zero_param:
            params.append(ParamView("zero_init_residual", "bool", "False"))
        lets = _lets(net.lets, scope)
        class_name = ident(net.python_class)
        factory_params = list(params)
        out_indices = literal(tuple(range(len(interface.features))))
        self.helpers["load_fitting"] = "pretrained.py.jinja"
        if any(step.stage for step in interface.trunk):
            self.helpers["checkpoint_seq"] = "checkpoint_seq.py.jinja"
            self.imports.update(dict.fromkeys((TORCH, CHECKPOINT)))
        if interface.features:
            self.helpers["FeatureInfo"] = "feature_info.py.jinja"
            self.imports.update(dict.fromkeys((SEQUENCE, ANY)))
            factory_params += [
                ParamView("features_only", "bool", "False"),
                ParamView("out_indices", "Sequence[int] | int", out_indices),
            ]
        output = self.analysis.output
        cfg = metadata.pretrained_cfg(
            net,
            self.analysis.input,
            output[0] if interface.classifier is not None and len(output or ()) == 1 else None,
            self._first_conv().removesuffix(".weight") or None,
            interface.classifier_module,
        )
        return NetworkView(
            class_name,
            ident(net.name),
            params,
            lets,
            layers,
            steps,
            zero_init,
            self._inits(),
            _zero_init_comment(zero_init, left),
            interface,
            factory_params,
            out_indices,
            len(stage_modules),
            [(metadata.python(key), metadata.python(value)) for key, value in cfg.items()],
        )

    def _interface(
        self,
        steps: list[StepView],
        head_start: int,
        tapped: list[StepView],
        widths: Mapping[str, Channels],
        scope: _Scope,
    ) -> InterfaceView:
        """Split the forward pass for timm's interface. The head's roles: the classifier is
        its last layer when that is a linear layer; the global pool is its first layer of a
        fixed output size (adaptive pooling); layers before the pool belong to the features,
        layers between pool and classifier (flatten, dropout, a hidden layer) are pre-logits."""
        items = self._head_items(steps[head_start:])
        classifier = None
        if items and items[-1][1] is not None and items[-1][1].op is not None:
            if items[-1][1].op.family is LINEAR:
                classifier = items.pop()
        pool = next(
            (i for i, (_, node) in enumerate(items) if node is not None and _global(node)),
            len(items) if classifier is None else self._spatial_items(items),
        )
        trunk = steps[:head_start] + [view for view, _ in items[:pool]]
        last = trunk[-1].module if trunk else None
        if last is None and items[:pool]:  # a layer of a head nn.Sequential: as analysed
            before, after = items[pool - 1][1], items[pool][1] if items[pool:] else None
            shape = (self._shape_of(before.id, "out_shape") if before else None) or (
                self._shape_of(after.id, "in_shape") if after else None
            )
            if not shape:
                raise CodeError("cannot tell the channels forward_features gives")
            num_features = str(shape[0])
        else:
            num_features = self._width(widths, last, scope)
        new_classifier = head_hidden = None
        selectable = self._selectable_pool(items, pool) if classifier is not None else None
        if classifier is not None:
            view, node = classifier
            hidden = "self.num_features"
            before = self._shape_of(node.id, "in_shape")
            trunk_out = self._trunk_channels(items, pool)
            if before is not None and trunk_out is not None and before[0] != trunk_out:
                head_hidden = str(before[0])
                hidden = "self.head_hidden_size"
            elif selectable is not None:  # reset_classifier changes it with the pool
                head_hidden, hidden = "self.num_features", "self.head_hidden_size"
            args = {**node.step.args, "features": S.Ref(span=node.span, name="num_classes")}
            new_classifier = self._op_call(
                node.op, args, _Scope(rename={"num_classes": "num_classes"}), None, node.span
            )
            new_classifier = Call(new_classifier.func, (Atom(hidden), *new_classifier.args))
        taps = {tap.module: tap for tap in self.analysis.features}
        for view in (*tapped, *trunk):
            view.tap = view.module in taps
        features = [
            FeatureView(
                self._width(widths, tap.module, scope),
                literal(tap.reduction),
                str(_name_literal(tap.module)),
                str(_name_literal(tap.name)) if tap.name != tap.module else None,
            )
            for tap in self.analysis.features
        ]
        if any(f.name is not None for f in features):
            for f, tap in zip(features, self.analysis.features, strict=True):
                f.name = str(_name_literal(tap.name))
        return InterfaceView(
            trunk,
            [view for view, _ in items[pool:]],
            classifier[0].call if classifier is not None else None,
            new_classifier,
            num_features,
            head_hidden,
            features,
            classifier is not None,
            _through_last_tap(tapped + [view for view, _ in items[:pool]]),
            str(_name_literal(self._first_conv())),
            str(_name_literal(classifier[1].id if classifier is not None else "")),
            classifier[1].id if classifier is not None else None,
            *(selectable or (None, None, None)),
        )

    def _selectable_pool(self, items, pool: int) -> tuple[str, str, str] | None:
        """The pool's module, the flattening layer's and the pool's timm name, when the head is
        timm's ClassifierHead (a 1 x 1 global pool of an op with a `global_pool` name,
        parameter-free layers of which one flattens, the classifier), so that timm's `global_pool`
        choices can replace the pool and flatten; None otherwise."""
        if pool >= len(items) or items[pool][1] is None:
            return None
        view, node = items[pool]
        out_shape = self._shape_of(node.id, "out_shape")
        if node.op is None or node.op.global_pool is None or "{x}" in view.call:
            return None
        if not out_shape or tuple(out_shape[1:]) != (1, 1):
            return None
        flat = []
        for between, other in items[pool + 1 :]:  # the classifier is not among them
            if other is None or other.op is None or not other.op.stateless:
                return None
            shapes = self._shape_of(other.id, "in_shape"), self._shape_of(other.id, "out_shape")
            if None in shapes or "{x}" in between.call:
                return None
            if len(shapes[0]) == 3 and len(shapes[1]) == 1:
                flat.append(between.call)
        if len(flat) != 1:
            return None
        return view.call, flat[0], node.op.global_pool

    def _spatial_items(self, items) -> int:
        """How many head items lead with a feature map (C x H x W) out, where the classifier
        pools itself (CLIP's attention pool): those belong to the features, as timm's ByobNet
        runs `final_conv` in forward_features."""
        count = 0
        for view, _ in items:
            last = None
            if view.module is not None:
                inside = f"{view.module}."
                for node_id in self.analysis.nodes:
                    if node_id == view.module or node_id.startswith(inside):
                        last = node_id
            shape = self._shape_of(last, "out_shape") if last is not None else None
            if shape is None or len(shape) != 3:
                break
            count += 1
        return count

    def _params(self, node_id: str) -> int:
        return self.analysis.shapes[node_id].params

    def _first_conv(self) -> str:
        """The state_dict key of the network's first convolution weight (timm's first_conv)."""
        for node_id, node in self.analysis.nodes.items():
            if node.op is not None and node.op.family is CONV and self._params(node_id):
                return f"{node.module or node_id}.weight"
        return ""

    def _trunk_channels(self, items, pool: int) -> int | None:
        """The channels forward_features gives, as analysed."""
        after = items[pool][1] if items[pool:] else None
        if after is not None and self._shape_of(after.id, "in_shape"):
            return self._shape_of(after.id, "in_shape")[0]
        before = items[pool - 1][1] if pool else None
        if before is not None and self._shape_of(before.id, "out_shape"):
            return self._shape_of(before.id, "out_shape")[0]
        stages = [s for s in self.analysis.stages if s.name != "head" and s.out_shape]
        return stages[-1].out_shape[0] if stages and not pool else None

    def _head_items(self, views: list[StepView]) -> list[tuple[StepView, object]]:
        """The head's layers with their graph nodes, the items of an nn.Sequential each on its
        own (RegNet's `head = seq { global_pool flatten fc }`: self.head.fc)."""
        items = []
        for step, view in zip(self.plan.head, views, strict=True):
            if step.kind != "seq" or not step.items:
                node = self.analysis.nodes.get(step.path) if step.kind == "op" else None
                items.append((view, node))
                continue
            for item, item_view in zip(step.items, self._seq_items(step), strict=True):
                item_view.module = None  # a head item is never a step of its own elsewhere
                items.append((item_view, self.analysis.nodes.get(f"{step.path}.{item.key}")))
        return items

    def _seq_items(self, step: Step) -> list[StepView]:
        """forward()'s steps for the items of a network-level nn.Sequential called one by one:
        `self.head.fc(x)`, `self.stem[0](x)`; each view's module is the item's path."""
        views = []
        for position, item in enumerate(step.items):
            ref = f".{ident(item.key)}" if item.attr else f"[{position}]"
            shape = self._shape_of(f"{step.path}.{item.key}", "out_shape")
            op = item.op if item.kind == "op" else None
            call = _apply(op, f"self.{ident(step.path)}{ref}")
            views.append(
                StepView(call, shape_text(shape) if shape else None, f"{step.path}.{item.key}")
            )
        return views

    def _width(self, widths: Mapping[str, Channels], module: str | None, scope: _Scope) -> str:
        """Python for the channel count a network-level module gives (the input's without one)."""
        channels = widths.get(module) if module is not None else None
        if channels is None or channels is FLAT:
            channels = self._input_channels({})
        return scope.code(channels)

    def _child(self, stage_plan: StagePlan) -> str:
        """`self.stages[0]`, `self.trunk.block1`: a stage inside its container, as the
        features-only forward calls it on its own."""
        path = stage_plan.stage.path
        code = f"self.{ident(path[0])}"
        for depth in range(1, len(path)):
            siblings = []
            for other in self.plan.stages:
                if other.stage.path[:depth] == path[:depth] and len(other.stage.path) > depth:
                    key = other.stage.path[depth]
                    if key not in siblings:
                        siblings.append(key)
            key = path[depth]
            is_name = key.isidentifier() and not keyword.iskeyword(key)
            code += f".{key}" if is_name else f"[{siblings.index(key)}]"
        return code

    def _inits(self) -> list[InitView]:
        """The network's initialisation loop: one branch per op in use that declares one, in the
        registry's order (torchvision's: convolutions, then batch norms)."""
        used = {node.op for node in self.analysis.nodes.values()}
        return [
            InitView(op.emit.cls, op.emit.init)
            for op in ops.registered()
            if op in used and op.emit is not None and op.emit.init
        ]

    def _network_layer(
        self,
        step: Step,
        channels: Channels,
        scope: _Scope,
        layers: list[LayerView],
        steps: list[StepView],
        applied: dict[str, int],
    ) -> Channels:
        target = step.target if step.kind == "reuse" else step.path
        applied[target] = applied.get(target, 0) + 1
        node = application_id(target, applied[target])
        if step.kind == "seq" and step.items:  # an nn.Sequential: its last layer's output
            node = f"{target}.{step.items[-1].key}"
        out_shape = self._shape_of(node, "out_shape")
        op = step.op if step.kind == "op" else None  # layer scale: the network's own parameter
        steps.append(
            StepView(
                _apply(op, f"self.{ident(target)}"),
                shape_text(out_shape) if out_shape else None,
                None if step.kind == "reuse" else target,
            )
        )
        if step.kind == "reuse":
            return channels
        layers.append(LayerView(ident(step.attr), self._build(step, channels, scope, target)))
        return self._after(step, channels, target)

    def _after(self, step: Step, channels: Channels, node: str) -> Channels:
        """The channel count after a network-level layer: as in a block, except that a flatten
        gives C x H x W features, H and W from the shape engine."""
        if step.kind == "seq":
            for item in step.items:
                channels = self._after(item, channels, f"{node}.{item.key}")
            return channels
        after = channels_after(step, channels, self.plan.blocks)
        if after is not FLAT:
            return after
        if step.kind == "block":  # a block ending in flatten: its features at this instance
            return self._flat_features(self.plan.blocks[step.block], channels, step.args, node)
        in_shape = self._shape_of(node, "in_shape")
        if in_shape is None or len(in_shape) != 3:
            raise E.EvalError(
                step.span, "cannot tell the size of `flatten`'s input", codes.FLATTEN_SIZE
            )
        area = in_shape[1] * in_shape[2]
        return (
            channels
            if area == 1
            else E.fold(
                S.BinOp(span=step.span, op="*", left=channels, right=E.literal(area, step.span))
            )
        )

    def _input_channels(self, env) -> Channels:
        """The input's channel count as the generated class takes it: the spec's expression
        (`in_chans`, a parameter of the class) unless --input replaced it with a number."""
        analysed = self.analysis.input[0]
        spec_input = self.net.input
        if spec_input is not None and E.free_refs(spec_input.channels):
            try:
                if E.evaluate(spec_input.channels, env) == analysed:
                    return spec_input.channels
            except E.EvalError:
                pass
        return E.literal(analysed, self.net.span)

    def _stage(
        self, stage_plan: StagePlan, rules, channels: Channels, scope: _Scope
    ) -> tuple[Code, Channels]:
        """The stage's module: its blocks (below), inside `nn.Sequential(OrderedDict(...))`
        after the stage's own layers when it has any (`in blocks`)."""
        stage = stage_plan.stage
        own: list[Code] = []
        for step in stage_plan.layers:
            node = f"{stage.name}.{step.path}"
            own.append(Keyword(ident(step.attr), self._build(step, channels, scope, node)))
            channels = self._after(step, channels, node)
        if stage.pattern is not None:
            blocks, channels = self._named_blocks(stage, rules, channels, scope)
        else:
            items: list[Code] = []
            for rule in rules:
                plan = self.plan.blocks[rule.run.block]
                run_items, channels = self._run_blocks(stage, plan, rule, channels, scope)
                items += run_items
                self.block_offset = _plus(self.block_offset, rule.run.repeats)
            blocks = Call("nn.Sequential", tuple(items))
        if stage.container is None:
            return blocks, channels
        self.imports[ORDERED_DICT] = None
        children = (*own, Keyword(ident(stage.container), blocks))
        return Call("nn.Sequential", (Call("OrderedDict", children),)), channels

    def _run_blocks(
        self, stage: S.Stage, plan: BlockPlan, rule, channels: Channels, scope: _Scope
    ) -> tuple[list[Code], Channels]:
        """One run's items of its stage's `nn.Sequential(...)`: `first, *[rest for _ in
        range(n - 1)]`, or each block written out when the blocks after the first do not all
        look alike (their input grows, say). The runs of a stage follow each other in one
        nn.Sequential, so their blocks are numbered on (timm's `stages.2.0`, `stages.2.1`)."""
        run = rule.run
        name = ident(plan.name)
        offset = self.block_offset
        first_args = (
            *_block_arguments(plan.block, rule.first, scope),
            *self._at(plan, offset, scope),
        )
        first = Call(name, (scope.atom(channels), *first_args))
        out = block_out(plan, channels, rule.first)
        items: list[Code] = [first]
        repeats_free = bool(E.free_refs(run.repeats))
        count = scope.code(run.repeats) if repeats_free else str(rule.repeats)
        if rule.repeats > 1 or repeats_free:
            rest_args = _block_arguments(plan.block, rule.rest, scope)
            # Blocks that use their position are built in a loop over it: `index`.
            looped = self._at(plan, _plus(offset, STAGE_INDEX), scope)
            rest = Call(name, (scope.atom(out), *rest_args, *looped))
            after = block_out(plan, out, rule.rest)
            if E.to_python(after) == E.to_python(out):
                if looped and count == "2":  # one more block: written out
                    at = self._at(plan, _plus(offset, 1), scope)
                    items.append(Call(name, (scope.atom(out), *rest_args, *at)))
                elif looped:
                    items.append(Starred(Repeated(rest, count, STAGE_INDEX, "1")))
                elif repeats_free and str(rest) == str(first):
                    items = [Starred(Repeated(first, count))]
                elif repeats_free:
                    minus_one = S.BinOp(
                        span=run.span, op="-", left=run.repeats, right=E.literal(1, run.span)
                    )
                    items.append(Starred(Repeated(rest, scope.code(minus_one))))
                elif str(rest) == str(first):
                    items = [Starred(Repeated(first, count))]
                elif rule.repeats == 2:
                    items.append(rest)
                else:
                    items.append(Starred(Repeated(rest, str(rule.repeats - 1))))
            elif repeats_free:  # the analysis reports it (codegen), with repeats_alike
                raise CodeError(
                    f"stage `{stage.name}` changes its channel count from block to "
                    "block, so its repeat count must be a constant"
                )
            else:
                current = out
                for k in range(1, rule.repeats):
                    at = self._at(plan, _plus(offset, k), scope)
                    items.append(Call(name, (scope.atom(current), *rest_args, *at)))
                    current = block_out(plan, current, rule.rest)
                after = current
            out = after
        return items, out

    def _at(self, plan: BlockPlan, block_index, scope: _Scope | None = None) -> tuple[Code, ...]:
        """`block_index=..., num_blocks=...` for a block that uses its position (a drop-path
        schedule); nothing for one that does not."""
        if not plan.positional:
            return ()
        name = (scope or _Scope()).name
        index = E.to_python(block_index, name)
        total = E.to_python(self.num_blocks, name)
        return (Keyword(BLOCK_INDEX, Atom(index)), Keyword(NUM_BLOCKS, Atom(total)))

    def _named_blocks(
        self, stage: S.Stage, rules, channels: Channels, scope: _Scope
    ) -> tuple[Code, Channels]:
        """`nn.Sequential(OrderedDict([("b1", first), *[(f"b{index + 1}", rest) for index in
        range(1, n)]]))`: the keys the pattern gives (torch accepts any name without a dot). A
        stage of several runs writes each block out with its key (`index` counts on across
        the runs), so its repeat counts must be constants."""
        self.imports[ORDERED_DICT] = None
        if len(rules) > 1:
            return self._named_runs(stage, rules, channels, scope)
        (rule,) = rules
        plan = self.plan.blocks[rule.run.block]
        stage_repeats = rule.run.repeats
        name = ident(plan.name)
        offset = self.block_offset
        first_args = (
            *_block_arguments(plan.block, rule.first, scope),
            *self._at(plan, offset, scope),
        )
        first = Call(name, (scope.atom(channels), *first_args))
        out = block_out(plan, channels, rule.first)
        count = scope.code(stage_repeats) if E.free_refs(stage_repeats) else str(rule.repeats)
        first_key = _key(stage.pattern, scope, index=0)
        items: list[Code] = [Call("", (first_key, first))]
        if rule.repeats > 1 or E.free_refs(stage_repeats):
            rest_args = _block_arguments(plan.block, rule.rest, scope)
            looped = self._at(plan, _plus(offset, STAGE_INDEX), scope)
            rest = Call(name, (scope.atom(out), *rest_args, *looped))
            after = block_out(plan, out, rule.rest)
            if E.to_python(after) != E.to_python(out):
                raise CodeError(
                    f"stage `{stage.name}` names its blocks and changes its channel "
                    "count from block to block; write one stage per width"
                )
            key = _key(stage.pattern, scope)
            if str(rest) == str(first):
                items = [Repeated(Call("", (key, first)), count, STAGE_INDEX)]
            elif count == "2" and not looped:
                items.append(Call("", (_key(stage.pattern, scope, index=1), rest)))
            else:
                items.append(Starred(Repeated(Call("", (key, rest)), count, STAGE_INDEX, "1")))
            out = after
        pairs = (
            items[0]
            if len(items) == 1 and isinstance(items[0], Repeated)
            else Call("", tuple(items), "[]")
        )
        self.block_offset = _plus(self.block_offset, stage_repeats)
        return Call("nn.Sequential", (Call("OrderedDict", (pairs,)),)), out

    def _named_runs(
        self, stage: S.Stage, rules, channels: Channels, scope: _Scope
    ) -> tuple[Code, Channels]:
        items: list[Code] = []
        for rule in rules:
            if E.free_refs(rule.run.repeats):
                raise CodeError(
                    f"stage `{stage.name}` names its blocks and has several runs, so its repeat "
                    "counts must be constants (each block is written out with its name)"
                )
            plan = self.plan.blocks[rule.run.block]
            name = ident(plan.name)
            for k in range(rule.repeats):
                args = rule.first if k == 0 else rule.rest
                at = self._at(plan, _plus(self.block_offset, k), scope)
                block = Call(
                    name, (scope.atom(channels), *_block_arguments(plan.block, args, scope), *at)
                )
                key = _key(stage.pattern, scope, index=rule.start + k)
                items.append(Call("", (key, block)))
                channels = block_out(plan, channels, args)
            self.block_offset = _plus(self.block_offset, rule.run.repeats)
        pairs = Call("", tuple(items), "[]")
        return Call("nn.Sequential", (Call("OrderedDict", (pairs,)),)), channels

    def _flat_features(
        self, plan: BlockPlan, channels: Channels, args: Mapping[str, S.Expr], instance: str
    ) -> S.Expr:
        """The feature count the flatten of block instance `instance` gives: the channels
        entering it, in the caller's names, times H x W there (from the analysis)."""
        env = plan.scope.exprs({IN_CHANNELS: channels, **args})
        c: Channels = S.Ref(span=plan.span, name=IN_CHANNELS)
        for step, path in _flat_walk((*plan.main, *plan.post)):
            after = channels_after(step, c, self.plan.blocks)
            if after is FLAT:
                in_shape = self._shape_of(f"{instance}.{path}", "in_shape")
                if in_shape is None or len(in_shape) != 3:
                    break
                area = E.literal(in_shape[1] * in_shape[2], step.span)
                before = E.substitute(c, env.get)
                return E.fold(S.BinOp(span=step.span, op="*", left=before, right=area))
            c = after
        raise E.EvalError(
            plan.span, f"cannot tell the size of `{instance}`'s flatten", codes.FLATTEN_SIZE
        )

    # -- analysis lookups
    def _shape_of(self, node: str, which: str) -> tuple | None:
        result = self.analysis.shapes.get(node)
        shape = getattr(result, which) if result is not None else None
        return tuple(shape) if shape else None

    def _stage_info(self, name: str):
        return next(s for s in self.analysis.stages if s.name == name)

    def _doc(self) -> list[str]:
        net, a = self.net, self.analysis
        lines = [f"{net.name}: {net.python_class}, generated by resgen."]
        output = shape_text(a.output)
        lines += [
            "",
            f"Input {shape_text(a.input)} -> output {output}, at the default arguments:",
            f"{a.params:,} parameters, {a.macs:,} multiply-accumulates "
            f"({a.macs / 1e9:.2f} GMACs) per image.",
        ]
        if a.stages:
            rows = [("stage", "blocks", "output", "params", "MACs")]
            for s in a.stages:
                blocks = s.text() if s.block else "-"
                if len(s.runs) > 1 and len(blocks) > DOC_BLOCKS_WIDTH:  # the block types, once
                    blocks = (
                        f"{s.repeats} blocks ({', '.join(dict.fromkeys(b for _, b in s.runs))})"
                    )
                rows.append(
                    (s.name, blocks, shape_text(s.out_shape), f"{s.params:,}", f"{s.macs:,}")
                )
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


# ---------------------------------------------------------------------------------------------
# Blocks whose body forks and joins


def _is_dataflow(plan: BlockPlan) -> bool:
    """Whether a block's body needs forward() written out: a layer reads what `from` names,
    exists `when` a condition holds, repeats, or is a function (split, concat)."""
    stack = [*plan.main, *plan.post]
    while stack:
        step = stack.pop()
        if step.inputs or step.condition is not None or step.kind == "repeat":
            return True
        if step.kind == "op" and step.op.functional:
            return True
        if step.kind == "repeat":
            stack.extend(step.items)
    return False


@dataclass
class _Local:
    """A value in forward(): its Python, and for a bundle how it is held ("list": a repeat's
    outputs, appended turn by turn; "tuple": torch.chunk's)."""

    code: str
    bundle: str | None = None


class _Flow:
    """__init__ and forward() of a block body that forks and joins. Layers keep their names
    (and ModuleLists inside a repeat: `self.convs`, indexed as timm does by a loop over them);
    a value that a later `from` reads gets a local of its name, the rest flows through `out`
    (a repeat's turn through its own local). Names forward() reads (a split's chunks, a
    condition) are stored on the module in __init__, as timm stores `self.scale`."""

    def __init__(self, builder: _ModuleBuilder, plan: BlockPlan, scope: _Scope):
        self.builder, self.plan, self.scope = builder, plan, scope
        names = [p.name for p in plan.block.params] + [let.name for let in plan.block.lets]
        self.forward_scope = _Scope(
            {n: f"self.{ident(n)}" for n in names},
            builder._op_value,
            scope.floats,
            scope.pairs,
            scope.functions,
        )
        self.read = {s.name for step in _all_steps([*plan.main, *plan.post]) for s in step.inputs}
        # for channels_after's `from`: what each name holds, the block input `x` included
        self.channels: dict[str, Channels] = {BLOCK_INPUT: S.Ref(span=plan.span, name=IN_CHANNELS)}
        # Expressions the spec wrote: a channel count built up by splits and concats
        # (`(scale - 1) * width + width * scale // scale`) is written as one of them when equal.
        self.known = [
            value
            for step in _all_steps([*plan.main, *plan.post])
            for value in step.args.values()
            if isinstance(value, S.Node)
        ]
        self.loop_vars = {step.var for step in _all_steps(plan.main) if step.kind == "repeat"}

    # -- __init__
    def declare(self, steps, channels: Channels, layers: list[LayerView], repeat=None):
        """Add the modules of `steps` to `layers` (ModuleLists inside a repeat); the channels
        after them."""
        values = self.channels
        for step in steps:
            if step.kind == "repeat":
                ins = [values.get(s.name) for s in step.inputs] or [channels]
                inner = dict(values)
                inner[step.attr] = Items(step.count, None)
                self.channels = inner
                turn = self.declare(step.items, ins[0], layers, step)
                self.channels = values
                after = Items(step.count, turn)
            else:
                after = channels_after(step, channels, self.builder.plan.blocks, values)
                self._declare_one(step, channels, layers, repeat)
            if step.attr is not None:
                values[step.attr] = after
            channels = after
        return channels

    def _declare_one(self, step: Step, channels, layers: list[LayerView], repeat) -> None:
        if step.kind == "reuse" or (step.kind == "op" and step.op.functional):
            return
        if step.inputs:
            source = step.inputs[0]
            channels = self.channels.get(source.name, channels)
            if source.index is not None and isinstance(channels, Items):
                channels = channels.channels
        if isinstance(channels, Items):
            channels = channels.channels
        channels = simplify(channels, self.known)
        if isinstance(channels, int) and not isinstance(channels, bool):  # channel_mean's 1
            channels = E.literal(channels, step.span)
        build = self.builder._build(step, channels, self.scope)
        condition = self.scope.code(step.condition) if step.condition is not None else None
        if repeat is not None:
            if condition is not None:
                raise CodeError(
                    f"`{step.attr}` is a module inside repeat `{repeat.attr}` that exists `when` "
                    "a condition holds; a ModuleList holds one module per turn"
                )
            var = repeat.var if repeat.var in _free_names(step) else "_"
            build = Call("nn.ModuleList", (Repeated(build, self.scope.code(repeat.count), var),))
        layers.append(LayerView(ident(step.attr), build, condition=condition))

    def stored(self) -> list[str]:
        """`self.name = name` for the block's names forward() reads."""
        lines = []
        for name in sorted(self.forward_scope.used - self.loop_vars):
            self.scope.name(name)  # a let forward() reads is computed in __init__
            lines.append(f"self.{ident(name)} = {ident(name)}")
        return lines

    # -- forward()
    def forward(self, steps, start: str) -> list[str]:
        lines: list[str] = []
        self.values: dict[str, _Local] = {"x": _Local("x")}
        last = self._steps(steps, _Local(start), "out", lines, 0, {})
        if last.code != "out" and steps:
            lines.append(f"out = {last.code}")
        return lines

    def _steps(self, steps, cur: _Local, target: str, lines, depth, loop) -> _Local:
        pad = "    " * depth
        for step in steps:
            if step.kind == "repeat":
                cur = self._repeat(step, cur, lines, depth)
                self.values[step.attr] = cur
                continue
            ins = [self._source(s) for s in step.inputs] or [cur]
            local = ident(step.attr) if step.attr in self.read else target
            call = self._call(step, ins, loop)
            if step.condition is not None:
                if step.kind == "op" and step.op.functional:
                    condition = self.forward_scope.code(step.condition)
                else:
                    condition = f"self.{ident(step.attr)} is not None"
                if ins[0].code != local:
                    lines.append(f"{pad}{local} = {ins[0].code}")
                lines.append(f"{pad}if {condition}:")
                lines.append(f"{pad}    {local} = {call}")
                result = _Local(local, ins[0].bundle)
            else:
                bundle = self._bundle(step, ins)
                lines.append(f"{pad}{local} = {call}")
                result = _Local(local, bundle)
            cur = result
            if step.attr is not None:
                self.values[step.attr] = cur
        return cur

    @staticmethod
    def _bundle(step: Step, ins: list[_Local]) -> str | None:
        """How a step's result is held when it is a bundle: torch.chunk's tuple (split), a
        list comprehension's list (a join item by item); None for one tensor."""
        if step.kind != "op" or not step.op.functional:
            return None
        sizes = [1 if i.bundle else None for i in ins]
        if step.op.bundle(step.args, sizes) is None:
            return None
        return "list" if any(sizes) else "tuple"

    def _source(self, source) -> _Local:
        value = self.values[source.name]
        if source.index is None:
            return value
        return _Local(f"{value.code}[{self.forward_scope.code(source.index)}]")

    def _call(self, step: Step, ins: list[_Local], loop: dict) -> str:
        if step.kind == "op" and step.op.functional:
            args = {name: self.forward_scope.code(value) for name, value in step.args.items()}
            operands = [Operand(i.code, i.bundle) for i in ins]
            self.builder.imports.update(dict.fromkeys(step.op.emit.imports))
            return step.op.expression(operands, args)
        if len(ins) != 1:
            raise CodeError(f"`{step.attr}` reads one tensor, not {len(ins)}")
        if step.kind == "reuse":
            module = loop.get(step.target) or f"self.{ident(step.target)}"
        else:
            module = loop.get(step.attr) or f"self.{ident(step.attr)}"
        applied = _apply(step.op if step.kind == "op" else None, module)
        if "{x}" in applied:  # an op applying a parameter of the block (layer scale)
            return applied.replace("{x}", ins[0].code)
        return f"{applied}({ins[0].code})"

    def _repeat(self, step: Step, cur: _Local, lines, depth) -> _Local:
        """`spo = []`, a loop over the turns (zipped ModuleLists, enumerate when the body reads
        the turn), and each turn's output appended."""
        pad = "    " * depth
        name = ident(step.attr)
        modules = [
            s.attr
            for s in step.items
            if s.kind in ("op", "block", "seq", "dynamic")
            and not (s.kind == "op" and s.op.functional)
        ]
        loop = {attr: _singular(attr, modules) for attr in modules}
        uses_turn = step.var in set().union(*(_free_names(s) for s in step.items))
        var = ident(step.var)
        if modules:
            zipped = (
                f"self.{ident(modules[0])}"
                if len(modules) == 1
                else f"zip({', '.join(f'self.{ident(m)}' for m in modules)})"
            )
            targets = loop[modules[0]] if len(modules) == 1 else ", ".join(loop.values())
            if uses_turn:
                if len(modules) > 1:
                    targets = f"({targets})"
                head = f"for {var}, {targets} in enumerate({zipped}):"
            else:
                head = f"for {targets} in {zipped}:"
        else:
            head = f"for {var} in range({self.forward_scope.code(step.count)}):"
        lines.append(f"{pad}{name} = []")
        lines.append(pad + head)
        saved = dict(self.values)
        self.values[step.attr] = _Local(name, "list")
        first = step.items[0]
        target = ident(first.attr) if first.attr in self.read else f"{name}_turn"
        start = len(lines)
        out = self._steps(step.items, cur, target, lines, depth + 1, loop)
        last = f"{pad}    {target} = "
        if len(lines) == start + 1 and out.code == target and lines[-1].startswith(last):
            lines[-1] = f"{pad}    {name}.append({lines[-1][len(last) :]})"  # one layer a turn
        else:
            lines.append(f"{pad}    {name}.append({out.code})")
        self.values = saved
        return _Local(name, "list")


def _all_steps(steps) -> Iterable[Step]:
    stack = list(steps)
    while stack:
        step = stack.pop()
        yield step
        stack.extend(step.items)


def _free_names(step: Step) -> set[str]:
    names = set()
    for value in step.args.values():
        names.update(r.name for r in E.free_refs(value))
    for source in step.inputs:
        if source.index is not None:
            names.update(r.name for r in E.free_refs(source.index))
    if step.condition is not None:
        names.update(r.name for r in E.free_refs(step.condition))
    for item in step.items:
        names |= _free_names(item)
    return names


def _singular(attr: str, taken: Iterable[str]) -> str:
    """The loop variable for one ModuleList's modules: `convs` -> `conv`, else `attr_i`."""
    name = attr[:-1] if attr.endswith("s") and len(attr) > 1 else f"{attr}_i"
    return ident(name if name not in taken else f"{attr}_i")


def _name_literal(name: str) -> Atom:
    """A module name as a string literal; names are letters, digits, `_` and `-` (the parser
    and the lowering refuse anything else), so double quotes need no escaping."""
    return Atom(f'"{name}"')


def _key(pattern: tuple, scope: _Scope, index: int | None = None) -> Atom:
    """A block's name from its stage's pattern: a string literal when `index` is given and the
    pattern folds to text (`"b1"`), else an f-string of `index` and the network's names."""
    if index is not None:
        literal_index = E.literal(index, Span("<pattern>", 1, 1, 1, 1))
        pattern = tuple(
            p if isinstance(p, str) else E.substitute(p, {STAGE_INDEX: literal_index}.get)
            for p in pattern
        )
        values = [p if isinstance(p, str) else E.fold(p) for p in pattern]
        if all(isinstance(v, str) or (isinstance(v, S.Int)) for v in values):
            return _name_literal("".join(v if isinstance(v, str) else str(v.value) for v in values))
    parts = [p if isinstance(p, str) else "{" + scope.code(p) + "}" for p in pattern]
    return Atom('f"' + "".join(parts) + '"')


def _apply(op: ops.Op | None, module: str) -> str:
    """How forward() applies a layer: `self.conv1` (called), or the op's own `apply` with its
    attribute in place of `{self}` (an op whose parameter belongs to the block)."""
    if op is None or op.emit is None or op.emit.owned is None:
        return module
    return op.emit.apply.replace("{self}", module)


def _checkpointed(stage_plan: StagePlan, call: str) -> list[str]:
    """forward()'s lines for one stage under set_grad_checkpointing: its own layers as they
    are, then its blocks one by one under torch.utils.checkpoint (timm's ConvNeXt stage)."""
    lines = []
    for step in stage_plan.layers:
        op = step.op if step.kind == "op" else None
        view = StepView(_apply(op, f"{call}.{ident(step.attr)}"))
        lines.append(f"x = {view.before}x{view.after}")
    container = stage_plan.stage.container
    blocks = f"{call}.{ident(container)}" if container else call
    return [*lines, f"x = checkpoint_seq({blocks}, x)"]


def _through_last_tap(steps: list[StepView]) -> list[StepView]:
    """The features-only forward's steps: none after the last feature."""
    last = max((i for i, step in enumerate(steps) if step.tap), default=-1)
    return steps[: last + 1]


def _global(node) -> bool:
    """A layer whose output size is fixed whatever its input (adaptive pooling): the head's
    global pool."""
    return node.op is not None and node.known and isinstance(node.op.spatial(node.args), Fixed)


def _plus(left: S.Expr, right) -> S.Expr:
    """`left + right` folded (right: an expression, an int, or a local's name)."""
    if isinstance(right, str):
        right = S.Ref(span=left.span, name=right)
    elif isinstance(right, int):
        right = E.literal(right, left.span)
    if isinstance(left, S.Int) and left.value == 0:
        return right
    return E.fold(S.BinOp(span=left.span, op="+", left=left, right=right))


def _factory_name(value: E.OpValue, taken: set[str]) -> str:
    """`groupnorm_32` for groupnorm(32), `batchnorm_eps_0_001` for batchnorm(eps=0.001),
    `relu_inplace` for relu(inplace=true): the op's name and what is bound to it."""
    parts = [value.op.name]
    positional = value.op.emit.positional if value.op.emit else ()
    for name, bound in value.args:
        if isinstance(bound, bool):
            parts.append(name if bound else f"no_{name}")
            continue
        text = "".join(c if c.isalnum() else "_" for c in E.show(bound)).strip("_")
        parts.append(text if name in positional else f"{name}_{text}")
    base = "_".join(p for p in parts if p)
    name, suffix = base, 2
    while name in taken:
        name, suffix = f"{base}_{suffix}", suffix + 1
    return ident(name)


class _Containers:
    """Stages that live in containers (`stages.0`, `trunk_output.block1`): each is built into a
    local; a container is assembled once its last stage is built (containers are contiguous:
    resolve checks it)."""

    def __init__(self, stages):
        self.paths = [plan.stage.path for plan in stages]
        self.built: dict[tuple[str, ...], str] = {}
        self.uses_ordered_dict = False

    def local(self, index: int, taken: set[str]) -> str:
        """The local variable of a stage: its last name (`block1`) when that is a free Python
        name, else `stage<index>`."""
        last = self.paths[index][-1]
        name = f"stage{last}" if last.isdigit() else last
        if name.isidentifier() and not keyword.iskeyword(name) and name not in taken:
            if name not in self.built.values() and name not in RESERVED_LOCALS:
                return name
        return f"stage_{index}"

    def completed(self, index: int, local: str) -> tuple[str, Code] | None:
        """After stage `index` is built: (attribute, code) of its top container when this was
        the container's last stage, else None."""
        path = self.paths[index]
        self.built[path] = local
        following = self.paths[index + 1] if index + 1 < len(self.paths) else ()
        if following[:1] == path[:1]:
            return None
        return path[0], self._code(path[:1])

    def _code(self, prefix: tuple[str, ...]) -> Code:
        children: dict[str, Code] = {}
        for path, local in self.built.items():
            if path[: len(prefix)] != prefix:
                continue
            key = path[len(prefix)]
            if key not in children:
                deeper = path[: len(prefix) + 1]
                children[key] = Atom(local) if deeper == path else self._code(deeper)
        keys = list(children)
        if keys == [str(i) for i in range(len(keys))]:
            return Call("nn.Sequential", tuple(children.values()))
        self.uses_ordered_dict = True
        if all(k.isidentifier() and not keyword.iskeyword(k) for k in keys):
            named = tuple(Keyword(k, code) for k, code in children.items())
            return Call("nn.Sequential", (Call("OrderedDict", named),))
        pairs = tuple(Call("", (_name_literal(k), code)) for k, code in children.items())
        return Call("nn.Sequential", (Call("OrderedDict", (Call("", pairs, "[]"),)),))


# Locals the generated __init__ itself uses.
RESERVED_LOCALS = frozenset({"module", "self", STAGE_INDEX})


FEATURES = "in_features"  # the block parameter of the feature count entering its flat layers


def _flat_walk(steps: Iterable[Step]) -> Iterable[tuple[Step, str]]:
    """Each op and block of a path with its node path, seq items in place of their seq."""
    for step in steps:
        if step.kind == "seq":
            yield from _flat_walk(step.items)
        elif step.kind != "reuse":
            yield step, step.path


def _needs_features(plan: BlockPlan, plans: Mapping[str, BlockPlan]) -> bool:
    """Whether a layer after the block's flatten is sized by its input (a linear), so the block
    takes `in_features`."""
    flat = False
    for step, _ in _flat_walk((*plan.main, *plan.post)):
        sized = step.op is None or step.op.emit is None or step.op.emit.in_channels is not None
        if flat and sized:
            return True
        if channels_after(step, S.Ref(span=plan.span, name=IN_CHANNELS), plans) is FLAT:
            flat = True
    return False


def _constant_code(value: object) -> str:
    """A constant argument of an op's declaration as Python, strings in double quotes as ruff
    formats them (`approximate="tanh"`)."""
    if isinstance(value, str) and value.isprintable() and not set(value) & {'"', "\\"}:
        return f'"{value}"'
    return literal(value)


def _passes_channels(op: ops.Op, given: Mapping[str, S.Expr]) -> bool:
    """Whether the constructor receives the channel count: always, unless the op makes it
    depend on a bool argument (`Emit.in_channels_if`), which must then be a constant."""
    gate = op.emit.in_channels_if
    if gate is None:
        return True
    value = _constant(given[gate]) if gate in given else op.param(gate).default
    if not isinstance(value, bool):
        raise E.EvalError(
            given[gate].span,
            f"`{gate}` of {op.name} decides the arguments of its constructor, so it must be "
            "true or false in the spec, not an expression of parameters",
            codes.CODEGEN,
        )
    return value


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


def _zero_init(plan: BlockPlan, plans: Mapping[str, BlockPlan]) -> ZeroInitView | str | None:
    """What zero_init_residual zeroes in a residual block: the last layer of its main path with
    parameters whose zeros make its output zero, provided every layer after it maps zeros to
    zeros at initialisation (each op declares both: Op.zeroed, Op.maps_zero), so that the
    residual branch starts at zero. torchvision's blocks give their last batch norm; a branch
    ending in a convolution with a bias gives that convolution's weight and bias. A reason when
    no layer can do it, None for a block that is not residual."""
    if plan.merge is None or not plan.merge.residual:
        return None
    if _is_dataflow(plan):
        found = _zero_target_flow(plan.main, plan, plans, "module")
    else:
        found = _zero_target(plan.main, plan, plans, "module")
    if isinstance(found, ZeroInitView):
        found.block = ident(plan.name)
        found.conditional = plan.block.merge_condition is not None  # instances with a residual
        return found
    return found if found is not _KEEPS else "no layer of its residual branch can be zeroed"


_KEEPS = "every layer keeps zero"  # _zero_target's answer when nothing blocks or can be zeroed


def _zero_target(steps: Sequence[Step], owner: BlockPlan, plans, prefix: str):
    """The view for the last zeroable layer of `steps` after which every layer keeps zero, a
    reason when a layer that neither keeps zero nor can be zeroed comes after it, or _KEEPS."""
    for index in reversed(range(len(steps))):
        step = steps[index]
        path = f"{prefix}.{ident(step.attr)}" if step.attr is not None else f"{prefix}[{index}]"
        if step.kind in ("seq", "block"):
            inner = plans[step.block] if step.kind == "block" else None
            if inner is not None and (inner.merge is not None or _is_dataflow(inner)):
                if _block_keeps_zero(inner, plans):
                    continue  # a squeeze-excite gate: x * gate(x) is zero for a zero x
                if inner.merge is not None:
                    return f"`{step.attr}` ({inner.name}) does not give zeros for zeros"
            if inner is None:
                found = _zero_target(step.items, owner, plans, path)
            elif _is_dataflow(inner):
                found = _zero_target_flow(inner.main + inner.post, inner, plans, path)
            else:
                found = _zero_target(inner.main + inner.post, inner, plans, path)
            if found is _KEEPS:
                continue
            return found
        if step.kind == "dynamic":  # its op is a parameter's value, per instance
            return f"`{step.attr}` is made by the op in `{step.via}`, which may not keep zeros"
        op, values, name = _op_values(step, owner)
        zeroed = op.zeroed(values) if step.kind == "op" else ()
        if zeroed:
            return ZeroInitView("", tuple(f"{path}.{p}" for p in zeroed), op.family is NORM)
        if not op.maps_zero(values):
            return (
                f"its residual branch ends in `{name}` ({op.label(values, 'x')}) after its last "
                "layer that can be zeroed, and that does not map zeros to zeros"
            )
    return _KEEPS


def _zero_target_flow(steps: Sequence[Step], owner: BlockPlan, plans, prefix: str):
    """_zero_target for a body that forks and joins: the last layer (of the body or of one of
    its seqs) whose zeros reach the body's output through every path that leads there, by
    _zero_flow; a reason when no single layer does (paths that join by a sum or a concat all
    need zeros: Res2Net's zeroed bn3 sits after its concat)."""
    candidates = []
    for step in steps:
        path = f"{prefix}.{ident(step.attr)}"
        items = step.items if step.kind == "seq" else (step,) if step.kind == "op" else ()
        for index, item in enumerate(items):
            if item is not step:
                key = f"{path}.{ident(item.attr)}" if item.attr is not None else f"{path}[{index}]"
            else:
                key = path
            op, values, _ = _op_values(item, owner)
            zeroed = op.zeroed(values)
            if zeroed and item.condition is None:
                candidates.append((item, ZeroInitView("", tuple(f"{key}.{p}" for p in zeroed))))
    for item, view in reversed(candidates):
        if _zero_flow(steps, owner, plans, {BLOCK_INPUT: False}, False, item):
            view.norm = item.op.family is NORM
            return view
    if _zero_flow(steps, owner, plans, {BLOCK_INPUT: True}, True, None):
        return _KEEPS
    return "no single layer's zeros reach the end of its residual branch on every path"


def _zero_flow(steps, owner: BlockPlan, plans, values: dict, cur: bool, forced) -> bool:
    """Whether a body's output is zero at initialisation: `values` flags the names `from`
    reads (the block input `x`), `cur` the incoming value, `forced` a layer whose parameters
    are zeroed (its output zero). Each op says how zeros pass (Op.maps_zero, and for a join
    Op.maps_zeros: a product needs one zero factor, a sum or a concat all inputs zero); a layer
    that exists `when` a condition holds must keep zero both ways (absent, its input passes)."""
    for step in steps:
        flags = [values.get(source.name, False) for source in step.inputs] or [cur]
        if step is forced:
            out = True
        elif step.kind == "repeat":
            inner = {**values, step.attr: True}  # earlier turns: as this one
            out = _zero_flow(step.items, owner, plans, inner, flags[0], forced)
        elif step.kind == "seq":
            if forced is not None and forced in step.items:
                after = step.items[step.items.index(forced) + 1 :]
                out = _keeps_zero(after, owner, plans)
            else:
                out = flags[0] and _keeps_zero(step.items, owner, plans)
        elif step.kind == "block":
            out = flags[0] and _block_keeps_zero(plans[step.block], plans)
        elif step.kind == "dynamic":
            out = False  # its op is a parameter's value, per instance
        elif step.kind == "reuse":
            applied = step.applies if step.applies is not None else step
            out = flags[0] and _keeps_zero([applied], owner, plans)
        else:
            op, args, _ = _op_values(step, owner)
            out = (
                op.maps_zeros(args, flags)
                if op.arity == "many"
                else flags[0] and op.maps_zero(args)
            )
        if step.condition is not None:
            out = out and flags[0]
        cur = out
        if step.attr is not None:
            values[step.attr] = out
    return cur


def _op_values(step: Step, owner: BlockPlan) -> tuple[ops.Op, dict, str]:
    """A layer's op (a reuse's: the module it applies again), its constant arguments with the
    op's defaults, and its name."""
    target = step
    if step.kind == "reuse":
        target = next(s for s in (*owner.main, *owner.post) if s.attr == step.target)
    constants = {name: _constant(expr) for name, expr in target.args.items()}
    known = {name: value for name, value in constants.items() if value is not None}
    return target.op, target.op.with_defaults(known, set(target.args)), step.attr or target.op.name


def _keeps_zero(steps: Iterable[Step], owner: BlockPlan, plans) -> bool:
    """Whether every layer of `steps` maps zeros to zeros at initialisation."""
    for step in steps:
        if step.kind == "seq":
            keeps = _keeps_zero(step.items, owner, plans)
        elif step.kind == "block":
            keeps = _block_keeps_zero(plans[step.block], plans)
        elif step.kind == "dynamic":
            keeps = False  # its op is a parameter's value, per instance
        else:
            op, values, _ = _op_values(step, owner)
            keeps = op.maps_zero(values)
        if not keeps:
            return False
    return True


def _block_keeps_zero(plan: BlockPlan, plans) -> bool:
    """Whether a block gives zeros for zeros: its paths, joined as its merge joins them (a sum
    needs both zero, a product either), then `post`. A shortcut that is absent for some instance
    is the identity there, which keeps zero."""
    if _is_dataflow(plan):
        values = {BLOCK_INPUT: True}
        main = _zero_flow(plan.main, plan, plans, values, True, None)
        post = _zero_flow(plan.post, plan, plans, values, True, None)
    else:
        main = _keeps_zero(plan.main, plan, plans)
        post = _keeps_zero(plan.post, plan, plans)
    if plan.merge is None:
        return main and post
    shortcut = plan.shortcut is None or _keeps_zero(plan.shortcut.steps, plan, plans)
    return plan.merge.zero_when(main, shortcut) and plan.merge.zero_when(main, True) and post


def _zero_init_comment(zero_init: list[ZeroInitView], left: list[str]) -> list[str]:
    """The comment above the zero_init_residual loop: torchvision's when it zeroes last batch
    norms only; otherwise what it does; then the blocks it leaves as they are, and why."""
    if all(z.norm for z in zero_init):
        lines = [
            "Zero-initialise the last BN of each residual branch, so that every residual block",
            "starts as an identity (https://arxiv.org/abs/1706.02677).",
        ]
    else:
        lines = textwrap.wrap(
            "Zero-initialise the last layer of each residual branch whose zeros make the branch "
            "output zero (every layer after it keeps zeros), so that every residual block starts "
            "as its shortcut (https://arxiv.org/abs/1706.02677; timm zeroes the last convolution "
            "of pre-activation blocks the same way).",
            88,
            break_on_hyphens=False,
        )
    for note in left:
        lines += textwrap.wrap(note, 88, break_on_hyphens=False)
    return lines


# A stage's comment line, indented 8 and after `# `, within the 100 columns of the code.
COMMENT_WIDTH = 100 - 8 - 2
# The blocks column of the module docstring's stage table, for its rows to fit 100 columns.
DOC_BLOCKS_WIDTH = 44


def _repeats_text(rule) -> str:
    run = rule.run
    return E.source_text(run.repeats) if E.free_refs(run.repeats) else str(rule.repeats)


# Names callers may want without reaching into the builder.
__all__ = ["GENERATED_MARK", "check_source", "display_path", "generate"]
