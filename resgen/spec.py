"""The typed spec: frozen records that every stage after the parser reads.

The parser builds these from the parse tree; `resolve` checks names and binds arguments, returning
a `Spec`. Nothing after `resolve` sees a parse tree or an unbound argument. Every node carries the
`Span` of the source text that produced it, so any later stage can point at it in an error.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from resgen.diagnostics import Span


@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
    """A node of the spec: each subclass is a frozen, keyword-only dataclass of the fields it
    declares (made so when the class is defined). Sequences are tuples: a list given for one
    is stored as a tuple, so nodes hash and compare by value.

    Plain dataclasses rather than pydantic models: every resgen command pays for the import and
    the schema building of pydantic (about a third of `resgen check`'s time as a whole
    process), and the parser already builds each field with its type."""

    span: Span

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    def model_copy(self, update: dict | None = None):
        """A copy with some fields replaced (pydantic's name, kept for callers)."""
        return dataclasses.replace(self, **(update or {}))


def Field(*, default_factory):  # noqa: N802 (pydantic's spelling, for field declarations)
    return dataclasses.field(default_factory=default_factory)


# ---------------------------------------------------------------------------------------------
# Expressions


class Int(Node):
    kind: Literal["int"] = "int"
    value: int


class Float(Node):
    kind: Literal["float"] = "float"
    value: float


class Bool(Node):
    kind: Literal["bool"] = "bool"
    value: bool


class Ref(Node):
    kind: Literal["ref"] = "ref"
    name: str


class Pair(Node):
    """`(h, w)`: a per-axis value for kernel, stride, padding, dilation and sizes."""

    kind: Literal["pair"] = "pair"
    h: Expr
    w: Expr


BinaryOperator = Literal["+", "-", "*", "/", "//", "==", "!=", "<", "<=", ">", ">=", "and", "or"]


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: BinaryOperator
    left: Expr
    right: Expr


class UnaryOp(Node):
    kind: Literal["unary"] = "unary"
    op: Literal["-", "not"]
    operand: Expr


class Cond(Node):
    """`then if test else other`, Python's conditional expression: only the chosen side is
    evaluated."""

    kind: Literal["cond"] = "cond"
    test: Expr
    then: Expr
    other: Expr

    def map(self, fn) -> Cond:
        """A copy with `fn` applied to each of the three expressions."""
        return self.model_copy(
            update={"test": fn(self.test), "then": fn(self.then), "other": fn(self.other)}
        )


class Func(Node):
    """`int(x)`, `round(x)`, `min(a, b)`, `max(a, b)`: see resgen.expr.FUNCTIONS. As parsed, a
    call may also name an op with arguments (`groupnorm(32, eps=1e-6)`); resolve turns those
    into `OpRef`s (`keywords` holds the named arguments until then)."""

    kind: Literal["func"] = "func"
    name: str
    args: tuple[Expr, ...]
    keywords: tuple[Arg, ...] = ()


class OpRef(Node):
    """An op as a value, `batchnorm` or `groupnorm(32)`: what a `norm_layer` or `act_layer`
    parameter holds. Its arguments are bound by name; a layer made from it adds its own."""

    kind: Literal["op"] = "op"
    name: str
    args: tuple[Arg, ...] = ()


Expr = Int | Float | Bool | Ref | Pair | BinOp | UnaryOp | Cond | Func | OpRef


# ---------------------------------------------------------------------------------------------
# Layers


class Arg(Node):
    """One argument of a call. `name` is None for a positional argument until `resolve` binds it."""

    name: str | None
    value: Expr


class Input(Node):
    """One input a layer names with `from`: the block input `x`, an earlier layer, or item
    `index` of a bundle (`spx[i]`: a split's chunks, a repeat's outputs)."""

    name: str
    index: Expr | None = None


class Layer(Node):
    """One step of a layer sequence.

    kind:
      call   `conv1 = conv(64, 7)` as parsed; `resolve` turns it into `op` or `block`
      op     a built-in layer (resgen.ops); args bound by parameter name
      block  an instance of a block type defined in .arch (`se = SqueezeExcite(...)`)
      seq    `conv1 = seq { ... }`: an nn.Sequential of unnamed layers (keys conv1.0, conv1.1, ...)
      reuse  a bare name: apply an already-declared parameter-free module again (torchvision's
             single `relu` used three times in Bottleneck)
      dynamic  a layer made by the op a parameter holds (`bn1 = norm_layer`, callee the param)
      repeat a loop (`spo = repeat i < n { ... }`): `items` run `count` times with `var` bound
             to 0, 1, ...; their named layers become nn.ModuleLists, and the loop's value is the
             bundle of each turn's last output
    `inputs` (`from a, b`) replace the default input, the previous layer's output; a layer with
    `condition` (`when`) is present only in the instances where it holds (else its input passes).
    `name` is None for the unnamed layers inside a `seq` or `shortcut` (the items of one are
    either all named, `downsample.conv`, or all unnamed, `downsample.0`).
    """

    kind: Literal["call", "op", "block", "seq", "reuse", "dynamic", "repeat"]
    name: str | None
    callee: str = ""  # op or block name for call/op/block; the reused layer for reuse
    callee_span: Span | None = None
    args: tuple[Arg, ...] = ()
    items: tuple[Layer, ...] = ()  # for seq and repeat
    inputs: tuple[Input, ...] = ()
    condition: Expr | None = None
    var: str | None = None  # repeat
    count: Expr | None = None  # repeat

    def arg(self, name: str) -> Expr | None:
        for a in self.args:
            if a.name == name:
                return a.value
        return None


# ---------------------------------------------------------------------------------------------
# Definitions


class Param(Node):
    name: str
    default: Expr | None = None


class Let(Node):
    name: str
    value: Expr


class Shortcut(Node):
    """The projection path of a block; present when `condition` holds, identity otherwise."""

    name: str
    condition: Expr | None = None  # None: always present
    layers: tuple[Layer, ...] = ()
    # `shortcut downsample from relu1 when ...`: the projection reads the output of this earlier
    # main-path layer (pre-activation ResNets); None: the block input. The identity (no
    # projection) always takes the block input.
    source: str | None = None
    source_span: Span | None = None


class Block(Node):
    """A block type written in .arch: BasicBlock, Bottleneck, or anything a user defines.

    Forward: out = post(merge(main(x), shortcut(x) if present else x)); with no merge the block
    is plain (out = post(main(x))), which is how the paper's plain baselines are written.
    `in_channels` is an implicit parameter: the channel count of the tensor entering the block.
    """

    name: str
    params: tuple[Param, ...] = ()
    expansion: Expr | None = None
    lets: tuple[Let, ...] = ()
    main: tuple[Layer, ...] = ()
    shortcut: Shortcut | None = None
    shortcut_first: bool = False  # `shortcut` written before `main`: its modules come first
    merge: str | None = None  # a registered merge (resgen.ops.merge): add, mul, ...
    merge_span: Span | None = None
    merge_name_span: Span | None = None
    # `merge add when COND`: instances where COND is false have no residual at all (timm's
    # RegNetZ: out = post(main(x)) when the shape changes), not an identity.
    merge_condition: Expr | None = None
    post: tuple[Layer, ...] = ()
    source_file: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


class Run(Node):
    """One run of a stage's blocks: `2 x Bottleneck(256, stride=2)`, `repeats` blocks of one type
    with the same arguments. `span` covers the run's text."""

    repeats: Expr
    block: str
    block_span: Span
    args: tuple[Arg, ...] = ()

    def arg(self, name: str) -> Expr | None:
        return next((a.value for a in self.args if a.name == name), None)


class Stage(Node):
    """`stage layer2 = 4 x Bottleneck(planes=128, stride=2)`: one `nn.Sequential` of blocks, made
    of one or more runs (`runs`), each `repeats` blocks of one type:
    `stage stages.2 = 1 x ByobBottleneck(1024, stride=2) + 1 x SelfAttnBlock(1024)` (timm's
    byobnet stages of several block types, `interleave_blocks`).

    The stage rule (resgen.stages) treats the runs as one sequence of blocks, numbered from 0
    across the runs: `stride` goes to the stage's first block only (the first block of the first
    run, which is the only run that may write `stride` or `dilate`) and `dilate=true` swaps it
    for dilation, following torchvision's `_make_layer`; every later block, of any run, gets
    stride 1 and the stage's new dilation.

    `name` is the stage's module path, dotted when it sits in containers (`stages.0`:
    container `stages`, child `0`). `container` (`in blocks`) is the child of the stage that
    holds its blocks, when the stage also has `layers` of its own (run before the blocks).
    `pattern` names the blocks (`named "b{index + 1}"`): literal text and expressions of
    `index` (the block's position in the stage, from 0) and the network's names; None names
    them 0, 1, 2, ...
    """

    name: str
    runs: tuple[Run, ...]
    path_span: Span | None = None
    container: str | None = None
    container_span: Span | None = None
    pattern: tuple[str | Expr, ...] | None = None
    pattern_span: Span | None = None
    layers: tuple[Layer, ...] = ()

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))

    @property
    def blocks(self) -> tuple[str, ...]:
        """The block types of its runs, in order, each once."""
        return tuple(dict.fromkeys(run.block for run in self.runs))


class InputShape(Node):
    """`input C x H x W`: each an expression of the network's params and lets (`in_chans`)."""

    channels: Expr
    height: Expr
    width: Expr

    def dims(self) -> tuple[Expr, Expr, Expr]:
        return (self.channels, self.height, self.width)


class Feature(Node):
    """`c3 = layer2` in a network's `features` section: the output of a network-level layer
    (stem or head) or of a stage, returned by a features-only model under `name`."""

    name: str
    path: str  # the module path: a stem or head layer, or a stage (`layer2`, `stages.1`)
    path_span: Span


class MetaEntry(Node):
    """`crop_pct = 0.875` in a network's `metadata` section (timm's pretrained_cfg): a constant
    string, number, boolean or tuple of them, checked by resgen.metadata."""

    key: str
    key_span: Span
    value: object


class Network(Node):
    name: str
    class_name: str | None = None
    input: InputShape | None = None
    params: tuple[Param, ...] = ()
    lets: tuple[Let, ...] = ()
    stem: tuple[Layer, ...] = ()
    stages: tuple[Stage, ...] = ()
    head: tuple[Layer, ...] = ()
    # The `features` section; None without one (resgen.features' default rule chooses them).
    features: tuple[Feature, ...] | None = None
    # The `metadata` section (a derived network's own, else its base's).
    metadata: tuple[MetaEntry, ...] | None = None
    # `network resnext50_32x4d = resnet50(groups=32)`: set by the parser, expanded by resolve.
    base: Layer | None = None
    source_file: str = ""

    @property
    def python_class(self) -> str:
        if self.class_name:
            return self.class_name
        return "".join(part[:1].upper() + part[1:] for part in self.name.split("_")) or "Network"


class Import(Node):
    path: str | None = None  # `import "blocks.arch"`: relative to the importing file
    std: str | None = None  # `import std.resnet`: resgen's standard library


class SpecFile(Node):
    """One parsed .arch file, before name resolution."""

    path: str
    imports: tuple[Import, ...] = ()
    lets: tuple[Let, ...] = ()
    blocks: tuple[Block, ...] = ()
    networks: tuple[Network, ...] = ()


class Spec(Node):
    """A resolved program: the network of one file plus every block type in its scope."""

    path: str
    lets: tuple[Let, ...] = ()
    blocks: dict[str, Block] = Field(default_factory=dict)
    network: Network | None = None
