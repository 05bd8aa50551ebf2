"""What an op is: the one declaration that holds everything resgen knows about a layer type.

An op is a subclass of `Op` (or of `Merge`, for the ways a block joins its paths). Its class
attributes and methods answer every question a later stage asks, so no stage compares op names:

    name, doc, params       the .arch signature (resolve binds arguments against it)
    accepts                 the input rank it takes: C x H x W, flat, or either (shapes)
    channels(args, c)       the output channel count (shapes numerically, codegen symbolically)
    infer(x, args, check)   the output shape, with argument checks reported through `check`
    spatial(args)           how it moves H and W: per-axis windows, a fixed size, or not at all
                            (output stride, receptive field and the input-size search)
    arity, bundle(args)     whether it reads several inputs (concat, add), and whether it makes
                            several tensors (split): see Bundle
    expression(inputs, args)  for an op with no module (torch.cat), forward()'s expression
    counts(args, x, y)      parameters, buffers and MACs, as torch and torchvision count them
    emit                    the nn.Module it becomes, its initialisation, helper code, imports
    label(args)             how summaries and diagrams name it; `family` gives its colour
    stateless               no parameters or buffers: one module may be applied again by name
    zero_init, zeroed(args) the parameters whose zeros make the output zero (zero_init_residual)
    keeps_zero, maps_zero   whether a zero input gives a zero output at initialisation
    maps_zeros(args, zeros) the same for a join, given which of its inputs are zero
    parameters(args, x)     the shapes of its parameter tensors; buffers(args, x) its buffers'
    storage(args, training) where its output lives: a new tensor, the input's storage (a view, or
                            the input itself), or the input overwritten in place
    saves(args, x, y, dev)  the tensors autograd keeps for its backward pass (resgen.memory)
    temporaries(...)        what else it allocates in an inference pass (max pooling's indices)
    autocast                how torch.autocast runs it: in lower precision, in float32, or as is
    promotes                its result takes its float32 parameters' dtype under autocast
    derived(args, c)        constructor arguments the op works out from others (codegen)
    global_pool             timm's SelectAdaptivePool2d name of the op as a 1 x 1 global pool
                            ("avg", "max", ...): the default of the `global_pool` argument

Built-in ops live in resgen.ops.layers and resgen.ops.merges; a plugin declares its own the same
way and registers it (resgen.ops.register, or the `resgen.ops` entry-point group).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

from resgen import codes
from resgen import spec as S
from resgen.codes import Code
from resgen.limits import LIMITS

Shape = tuple  # (C, H, W), or (F,) after flatten


class Bundle(tuple):
    """Several tensors that travel together: a split's chunks, a repeat's outputs. Its items
    are their shapes, in order. Ops whose `arity` is "many" (concat, add, mul) read a bundle's
    items as inputs; any other op reads one tensor."""

    def __repr__(self) -> str:
        return f"Bundle({', '.join(map(repr, self))})"


@dataclass(frozen=True)
class Items:
    """The channels of a bundle: `count` items of `channels` each. Numbers for the shape
    engine, .arch expressions for the code generator (`scale - 1` items of `width`)."""

    count: Any
    channels: Any

    @property
    def total(self):
        """The channels of the bundle's items side by side (what concat makes)."""
        from resgen.algebra import times

        return times(self.count, self.channels)


Args = Mapping[str, Any]  # argument name -> value (or .arch expression, for codegen)


class _Sentinel:
    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


REQUIRED = _Sentinel("<required>")  # the argument must be given
FROM_INPUT = _Sentinel("<from the input>")  # follows the incoming tensor; checked when given
# Worked out by the op from its other arguments and its input when not given (a group norm's
# groups from group_size, an ECA kernel from the channel count): see Op.derived.
DERIVED = _Sentinel("<derived>")


@dataclass(frozen=True)
class SameAs:
    """A default that is the value of another argument: a pool's stride is its kernel (torch)."""

    name: str


ArgType = Literal["int", "size", "bool", "float"]


@dataclass(frozen=True)
class Param:
    """One parameter of an op: its .arch name, type and default, and its torch keyword.

    type: "int", "size" (an int or an (h, w) pair of ints), "bool" or "float".
    minimum: the smallest allowed value (ints and sizes default to 1, floats to no bound).
    above: a value the argument must be strictly greater than (a float's exclusive bound, e.g.
        batchnorm's eps > 0, which torch checks in training).
    maximum: the largest allowed value of a float. limit: a resgen.limits field that bounds ints.
    rule: where the bound comes from (torch's source or error message), for docs and tests.
    Every float must be finite (an inf or NaN never reaches torch or generated code).
    """

    name: str
    type: ArgType
    default: object = REQUIRED
    torch: str | None = None  # constructor keyword; None: the value is not passed to torch
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    limit: str | None = None
    above: float | None = None
    rule: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def fixed_default(self) -> bool:
        """A literal default (not REQUIRED, FROM_INPUT, DERIVED or another argument's value)."""
        return not isinstance(self.default, _Sentinel | SameAs)

    def problem(self, value: object) -> str | None:
        """Why `value` cannot be this argument ("is an integer", "must be at least 1"), or None."""
        if self.type == "bool":
            return None if isinstance(value, bool) else "is true or false"
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return "is a number"
            if not math.isfinite(value):
                return "is a finite number"
            if self.above is not None and not value > self.above:
                return f"must be above {self.above:g}"
            low, high = self.minimum, self.maximum
            if low is not None and high is not None and not low <= value <= high:
                return f"is between {low:g} and {high:g}"
            if low is not None and value < low:
                return f"must be at least {low:g}"
            return None
        parts = value if (self.type == "size" and isinstance(value, tuple)) else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in parts):
            return "is an integer or an (h, w) pair" if self.type == "size" else "is an integer"
        lowest = 1 if self.minimum is None else self.minimum
        if any(v < lowest for v in parts):
            return f"must be at least {lowest:g}"
        limit = getattr(LIMITS, self.limit) if self.limit else None
        if limit is not None and any(v > limit for v in parts):
            return f"is over the limit of {limit}"
        return None


# ---------------------------------------------------------------------------------------------
# Windows: the per-axis arithmetic of convolutions and pools (PyTorch's formula)

# The hint for a size problem: the two rules of thumb of every ResNet paper.
SIZE_HINT = "S=1 and K=2P+1 keep the size; K=3, P=1, S=2 halves it"


def window_out(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's output size, floor((n + 2p - d(k-1) - 1) / s) + 1, including ceil_mode's rule
    that the last window must start inside the input or the left padding (torch.nn.MaxPool2d)."""
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


class Window(NamedTuple):
    """One axis of a convolution or pooling window."""

    kernel: int
    stride: int
    padding: int
    dilation: int
    ceil: bool

    def out(self, n: int) -> int:
        return window_out(n, *self)

    def takes(self, n: int) -> bool:
        """Whether an input of size n is accepted: the output is at least 1. Subclasses add
        the conditions of their op (reflect padding needs n > padding, space-to-depth n
        divisible by its block), so the input-size search (resgen.sizes) knows them."""
        return self.out(n) >= 1

    def multiple(self) -> int:
        """The number every accepted input size is a multiple of (1: none), so that the
        input-size search covers whole periods of it (a layer cutting its input into blocks)."""
        return 1

    def refusal(self, n: int) -> str:
        """Why size n gives no output, worked out, for the input-size warning. Subclasses that
        refuse sizes for a reason of their own (`takes`) say it."""
        return arithmetic(n, *self)

    def keeps_size(self) -> bool:
        """Whether every input size comes out unchanged ('same' padding at stride 1)."""
        k, s, p, d, _ = self
        return s == 1 and 2 * p == d * (k - 1)


@dataclass(frozen=True)
class Fixed:
    """An output of a fixed H x W whatever the input (adaptive pooling). Not a tuple, so it is
    never mistaken for a pair of windows."""

    height: int
    width: int

    def __getitem__(self, axis: int) -> int:
        return (self.height, self.width)[axis]


def at(value, axis: int):
    """One axis of a size: an int applies to both, a pair gives (h, w)."""
    return value[axis] if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------
# What an op tells the rest of resgen


class Counts(NamedTuple):
    params: int = 0  # learnable parameters, as sum(p.numel() for p in module.parameters())
    buffers: int = 0  # as sum(b.numel() for b in module.buffers())
    macs: int = 0  # multiply-accumulates per image (torchvision: conv and linear only)


NO_COUNTS = Counts()


# ---------------------------------------------------------------------------------------------
# Memory: where an op's output lives and what autograd keeps for its backward pass

SavedTensor = Literal["input", "other", "output", "param", "new"]
SavedDtype = Literal["activation", "param", "float32", "int64", "bool"]
Storage = Literal["new", "input", "in-place"]
Autocast = Literal["lower", "float32"]
Device = Literal["cuda", "cpu"]
NeededBy = Literal["input", "other", "weight"]


@dataclass(frozen=True)
class Saved:
    """One tensor an op saves for its backward pass: what `torch.autograd.graph.
    saved_tensors_hooks` sees during a training forward pass (torch's autograd formulas,
    tools/autograd/derivatives.yaml, say which tensors each backward needs).

    tensor     which tensor: "input" (the op's input; a merge's main-path input), "other" (a
               merge's second input), "output" (its result), "param" (one of its parameters or
               buffers, of `shape`: no activation memory, except the low-precision copy of a
               weight that autocast makes for an op it runs in lower precision), or "new" (a
               tensor the op allocates for backward, of `shape` and `dtype`: batch norm's mean
               and inverse standard deviation, max pooling's indices, dropout's mask)
    shape      for "param" and "new": the shape, without the batch axis when `batched`
    dtype      for "new": "activation" (the dtype the op computes in), "param" (its parameters'
               dtype: float32 under autocast, the model's dtype otherwise), or a fixed "float32",
               "int64" or "bool"
    batched    for "new": the tensor has a leading batch axis (one `shape` per sample)
    needed_by  saved only when this gradient is needed: torch saves `other` for a product's
               input gradient only when the input requires grad ("input", "other", or "weight":
               the op's own parameters, which always do). None: whenever the op records a
               backward at all (it has parameters or an input that requires grad)
    name       torch's name for it (`save_mean`, `indices`), for reports
    """

    tensor: SavedTensor
    shape: Shape = ()
    dtype: SavedDtype = "activation"
    batched: bool = False
    needed_by: NeededBy | None = None
    name: str = ""


SAVES_INPUT = (Saved("input"),)


@dataclass(frozen=True)
class Buffer:
    """One buffer of a module: its shape and whether its dtype follows the model's floating dtype
    ("param": batch norm's running statistics) or stays fixed ("int64": num_batches_tracked)."""

    shape: Shape
    dtype: Literal["param", "int64"] = "param"


class Check(Protocol):
    """How an op reports a problem while it infers a shape; the shape engine places it."""

    # The C x H x W shape that a `flatten` right before this op turned into its flat input.
    flattened: Shape | None

    def error(
        self, code: Code, message: str, *, arg: str | None = None, hint: str | None = None
    ) -> None: ...

    def warning(self, code: Code, message: str, *, hint: str | None = None) -> None: ...


@dataclass(frozen=True)
class Family:
    """A kind of op, for diagrams: its fill and border colour and its legend line."""

    name: str
    fill: str
    border: str
    legend: str


CONV = Family("conv", "#dbe8f6", "#4b77a9", "convolution (s, p, d, g unless 1, 0, 1, 1)")
NORM = Family("norm", "#ddefdb", "#4f8f4a", "normalisation")
ACT = Family("act", "#fbf0c4", "#a8891e", "activation")
POOL = Family("pool", "#e8def4", "#7657a3", "pooling")
LINEAR = Family("linear", "#fbe3d0", "#b46a32", "linear")
OTHER = Family("other", "#f0f0f0", "#8a8a8a", "flatten, dropout, identity")
MERGE = Family("merge", "#d9d9d9", "#666666", "merge of main path and shortcut")
FAMILIES = (CONV, NORM, ACT, POOL, LINEAR, OTHER, MERGE)


@dataclass(frozen=True)
class Emit:
    """The nn.Module an op becomes in generated code, and what that code needs.

    cls          `nn.Conv2d`; for a helper or plugin op, the class name the module defines or
                 imports (`PadChannels`)
    in_channels  the constructor keyword that receives the incoming channel count; it is passed
                 by position, first unless `positional` places it, as torchvision writes
                 nn.Conv2d(64, 128, kernel_size=3) and nn.GroupNorm(32, 64)
    in_channels_if  a bool parameter that decides whether the channel count is passed at all
                 (nn.PReLU(64) learns a slope per channel, nn.PReLU() one); it must be constant
    positional   .arch parameters passed by position after it (nn.Linear(2048, num_classes)),
                 and `in_channels` where it goes elsewhere; a default is written out, since a
                 positional argument of torch's may have none (nn.ConstantPad2d(1, 0.0))
    keywords     constant keyword arguments, (torch keyword, value) pairs that are always
                 passed (nn.GELU(approximate="tanh"))
    helper       a template of resgen.templates that defines `cls` in the generated file, once
    imports      import lines the generated module needs (a plugin's `from pkg import Cls`, or
                 `import torch` for a helper that calls torch.cat)
    init         the network's initialisation of each module of this class (`module` is it)
    uses         other torch paths the helper or init code touches (the AST guard allows them,
                 and only them, on the modules `imports` brings in)
    owned, apply an op whose state is the enclosing module's own (see below)
    """

    cls: str
    in_channels: str | None = None
    in_channels_if: str | None = None
    positional: tuple[str, ...] = ()
    keywords: tuple[tuple[str, object], ...] = ()
    helper: str | None = None
    imports: tuple[str, ...] = ()
    init: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    # An op whose state belongs to the enclosing module under the layer's name, not to a
    # submodule of its own (ConvNeXt's layer-scale `gamma`): `owned` is the Python that builds
    # it, with `{channels}` and `{param}` placeholders; `apply` is forward()'s expression for
    # it, `{x}` the input and `{self}` the attribute.
    owned: str | None = None
    apply: str = "{self}({x})"

    @property
    def order(self) -> tuple[str, ...]:
        """Everything passed by position, the channel count included, in order."""
        if self.in_channels is None or self.in_channels in self.positional:
            return self.positional
        return (self.in_channels, *self.positional)


Accepts = Literal["any", "spatial", "flat"]


class Op:
    """A layer type. Subclass it, set the class attributes, override what the defaults (a
    parameter-free op that keeps its input's shape) do not fit, and register an instance."""

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    accepts: ClassVar[Accepts] = "any"
    family: ClassVar[Family] = OTHER
    stateless: ClassVar[bool] = False
    emit: ClassVar[Emit | None] = None
    # zero_init_residual (Goyal et al. 2017) zeroes a residual branch at its last layer that has
    # parameters whose zeros make its output zero (`zeroed`), provided every layer after it maps
    # a zero input to a zero output at initialisation (`maps_zero`).
    zero_init: ClassVar[str | tuple[str, ...] | None] = None
    keeps_zero: ClassVar[bool] = False
    # How torch.autocast (mixed precision) runs the op: "lower" casts its input and weights to
    # the low-precision dtype (torch's lower-precision list: convolutions, linear layers),
    # "float32" casts them up, None runs it in its input's dtype.
    autocast: ClassVar[Autocast | None] = None
    # The result is its input combined with the op's own float parameters or buffers (x *
    # weight), so torch's type promotion gives it the wider of the two dtypes: float32 for a
    # low-precision input under autocast, whose parameters stay float32. The op's other
    # tensors ("activation" in `saves`) are in its input's dtype.
    promotes: ClassVar[bool] = False
    # timm's pool_type for this op at output size 1 ("avg", "max", "avgmax", "catavgmax"): a
    # head whose global pool it is takes timm's `global_pool` argument (README "Backbones").
    global_pool: ClassVar[str | None] = None
    # "many": reads every input `from` names, a bundle's items included (concat, add, mul).
    # Then channels() gets a list of counts (an Items for a bundle), infer() and counts() a
    # list of shapes (a Bundle for a bundle).
    arity: ClassVar[Literal["one", "many"]] = "one"
    # An op with no module of its own (torch.cat): forward() writes `expression` instead.
    functional: ClassVar[bool] = False
    # The distribution that registered this op (None for resgen's own): named in its errors.
    plugin: str | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def with_defaults(self, args: Args, given: frozenset[str] | set[str] = frozenset()) -> dict:
        """The arguments with every default filled in: literal ones, and those that follow
        another argument (a pool's stride is its kernel). Required and FROM_INPUT ones that
        were not given stay absent, and so do the `given` ones missing from `args` (written,
        but their value could not be evaluated)."""
        full = dict(args)
        for p in self.params:
            if p.name not in full and p.name not in given and p.fixed_default:
                full[p.name] = p.default
        for p in self.params:
            follows = isinstance(p.default, SameAs) and p.default.name in full
            if p.name not in full and p.name not in given and follows:
                full[p.name] = full[p.default.name]
        return {p.name: full[p.name] for p in self.params if p.name in full}

    def channels(self, args: Args, c):
        """Output channels from the arguments and the input's `c`. Called with ints (defaults
        filled in) by the shape engine, and with .arch expressions of the arguments the spec
        writes (no defaults: see with_defaults) by the code generator; `product` and
        `quotient` compute with either."""
        return c

    def infer(self, x: Shape, args: Args, check: Check) -> Shape | None:
        """The output shape for input `x` (of the rank `accepts` says); None after reporting."""
        return x

    def bundle(self, args: Args, sizes: list[int | None]) -> int | None:
        """How many tensors the op makes when it makes a bundle (split, or add of bundles item
        by item), given how many each input holds (None: one tensor); None for one tensor."""
        return None

    def expression(self, inputs: list[Operand], args: Mapping[str, str]) -> str:
        """A functional op's Python expression in forward(): `inputs` are the Python of what it
        reads (with which are bundles), `args` its arguments' Python."""
        raise NotImplementedError(f"{self.name} is not functional")

    def spatial(self, args: Args) -> tuple[Window, Window] | Fixed | None:
        """How H and W change: a window per axis, a fixed output size, or None (unchanged)."""
        return None

    def counts(self, args: Args, x: Shape, y: Shape | None) -> Counts:
        """Parameters, buffers and MACs for input `x`; `y` is None when inference failed."""
        return NO_COUNTS

    def zeroed(self, args: Args) -> tuple[str, ...]:
        """The parameters whose zeros make the output zero whatever the input, the others at
        their initial values (a batch norm's weight: its bias starts at 0); () when none do.
        `args` may lack an argument that is not a constant. Default: `zero_init`."""
        if self.zero_init is None:
            return ()
        return (self.zero_init,) if isinstance(self.zero_init, str) else tuple(self.zero_init)

    def maps_zero(self, args: Args) -> bool:
        """Whether a zero input gives a zero output at the op's initial parameters (ReLU and
        pools do; a sigmoid gives 0.5, a convolution its bias). Default: `keeps_zero`."""
        return self.keeps_zero

    def maps_zeros(self, args: Args, zeros: list[bool]) -> bool:
        """For an op of several inputs (arity "many": a join), whether its output is zero when
        the inputs flagged in `zeros` are (a bundle: one flag for all its items). Default: all
        of them, and `maps_zero` (a sum, a concatenation); a product needs one."""
        return all(zeros) and self.maps_zero(args)

    def label(self, args: Args, times: str = "×") -> str:
        """A short description, e.g. `conv 3×3 s2 p1`; `times` joins the two axes of a size."""
        return self.name

    def parameters(self, args: Args, x: Shape) -> tuple[Shape, ...]:
        """The shapes of the module's parameters, in `module.parameters()` order (their sizes
        add up to `counts().params`). The optimizer keeps state per tensor (Adam's `step`)."""
        return ()

    def buffers(self, args: Args, x: Shape) -> tuple[Buffer, ...]:
        """The module's buffers (their sizes add up to `counts().buffers`) and their dtypes."""
        return ()

    def storage(self, args: Args, training: bool) -> Storage:
        """Where the output lives: "new" (a tensor of its own), "input" (the input's storage,
        unchanged: a view such as flatten, or the input itself as nn.Identity returns it), or
        "in-place" (the input's storage, overwritten: relu(inplace=True)). `training`: in a
        training forward pass (dropout is the identity in eval mode). The default reads torch's
        `inplace` keyword. resgen.storage (memory, saved tensors) and resgen.aliasing (what an
        in-place write changes) both ask this."""
        return "in-place" if args.get("inplace") else "new"

    def saves(self, args: Args, x: Shape, y: Shape, device: Device) -> tuple[Saved, ...]:
        """The tensors autograd keeps for this op's backward pass, in a training forward pass
        on `device` ("cuda" or "cpu": dropout keeps a bool mask on CUDA and the scaled noise on
        the CPU), for input `x` and output `y` (per sample). Each op states torch's behaviour;
        the default, the input, is what most layers keep (convolution, normalisation, pooling,
        the element-wise product), so a plugin that leaves it out is counted like them.
        A "new" tensor is allocated in every training forward pass, saved or not."""
        return SAVES_INPUT

    def temporaries(self, args: Args, x: Shape, y: Shape, device: Device) -> tuple[Saved, ...]:
        """The "new" tensors the op allocates besides its output in an eval-mode, no-grad
        forward pass, freed when it returns: max pooling computes its indices all the same."""
        return ()

    def derived(self, args: Args, c) -> dict[str, Any]:
        """Values for DERIVED parameters the code generator must pass although the spec left
        them out (a group norm given `group_size` passes num_groups = C // group_size), by
        parameter name. Called with the spec's argument expressions and the channel count as
        an .arch expression: build values with `product` and `quotient`, or give plain ints."""
        return {}

    def explain(self, args: Args, x: Shape, y: Shape, spatial: bool) -> str | None:
        """Why this layer changed the shape, for a merge mismatch: the worked arithmetic of a
        size change, or the channel change. None when it did not change what differs."""
        if spatial:
            windows = self.spatial(args)
            if isinstance(windows, tuple) and x[1:] != y[1:] and len(x) == 3:
                h, w = (arithmetic(x[1 + axis], *windows[axis]) for axis in (0, 1))
                same = x[1] == x[2] and windows[0] == windows[1]
                return h if same else f"{h}, width {w}"
            return None
        return f"makes {y[0]} channels from {x[0]}" if x[0] != y[0] else None

    def __repr__(self) -> str:
        return f"<op {self.name}>"


class Operand(NamedTuple):
    """One input of a functional op in generated code: its Python, and for a bundle what holds
    it: "list" (a repeat's outputs) or "tuple" (torch.chunk's)."""

    code: str
    bundle: Literal["list", "tuple"] | None = None


def tensors(inputs: list[Operand]) -> str:
    """The Python list of every tensor of `inputs`: `[a, b]`, `spo`, or `spo + [pool]`."""
    if len(inputs) == 1 and inputs[0].bundle:
        return inputs[0].code
    parts, loose = [], []
    for operand in inputs:
        if operand.bundle:
            if loose:
                parts.append(f"[{', '.join(loose)}]")
                loose = []
            parts.append(operand.code if operand.bundle == "list" else f"list({operand.code})")
        else:
            loose.append(operand.code)
    if loose:
        parts.append(f"[{', '.join(loose)}]")
    return " + ".join(parts)


class _Unknown(Op):
    """Stands in for a layer whose op could not be determined (its name holds no op here: an
    error already reported). Never registered; the shape engine skips it (not `known`)."""

    name = "?"
    doc = "an op that could not be determined"
    stateless = True


UNKNOWN = _Unknown()


class Merge(Op):
    """How a block joins its main path with the shortcut (or with its input, when there is no
    projection): `merge NAME`. The generated forward() runs `statement`, where `out` is the main
    path's output and `identity` the shortcut's (or the block input, torchvision's names); with
    no shortcut at all, `inline` (when given) reads the block input `x` directly instead."""

    family: ClassVar[Family] = MERGE
    stateless: ClassVar[bool] = True
    glyph: ClassVar[str] = ""
    statement: ClassVar[str] = ""  # e.g. "out += identity"
    inline: ClassVar[str | None] = None  # e.g. "out = x * out" (squeeze-excite's gate)
    # The main path is added to the shortcut, so zeroing the main path's last scale makes the
    # block an identity at initialisation (zero_init_residual, Goyal et al. 2017).
    residual: ClassVar[bool] = False

    def combine(self, main: Shape, other: Shape) -> Shape | None:
        """The joined shape, or None when the two do not fit together."""
        return main if main == other else None

    def apply(self, main, other):
        """The merge on two tensors, out of place: what `statement` computes (resgen.reference
        runs the graph's own forward with it)."""
        raise NotImplementedError

    def zero_when(self, main: bool, other: bool) -> bool:
        """Whether the merge gives zeros when its main input is zeros (`main`) and when its
        other input is (`other`): a sum needs both, a product either."""
        return main and other


def product(a, b):
    """a * b for ints, or the .arch expression of it (folded) when either is an expression."""
    return _arithmetic("*", a, b)


def quotient(a, b):
    """a // b for ints, or the .arch expression of it (folded) when either is an expression."""
    return _arithmetic("//", a, b)


def _arithmetic(op: str, a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a * b if op == "*" else a // b
    span = next(v.span for v in (a, b) if isinstance(v, S.Node))
    left, right = (v if isinstance(v, S.Node) else S.Int(span=span, value=v) for v in (a, b))
    if isinstance(left, S.Int) and isinstance(right, S.Int):  # folded, as the spec's literals
        return S.Int(span=span, value=_arithmetic(op, left.value, right.value))
    return S.BinOp(span=span, op=op, left=left, right=right)


def is_default(value, default) -> bool:
    """Whether an argument (an int or a per-axis pair) equals a scalar default on every axis."""
    return value == default or (
        isinstance(value, tuple | list) and all(v == default for v in value)
    )


__all__ = [
    "ACT",
    "CONV",
    "DERIVED",
    "FAMILIES",
    "FROM_INPUT",
    "LINEAR",
    "MERGE",
    "NORM",
    "NO_COUNTS",
    "OTHER",
    "POOL",
    "REQUIRED",
    "SAVES_INPUT",
    "SIZE_HINT",
    "Args",
    "Autocast",
    "Buffer",
    "Bundle",
    "Items",
    "Operand",
    "Check",
    "Counts",
    "Device",
    "Emit",
    "Family",
    "Fixed",
    "Merge",
    "Op",
    "Param",
    "SameAs",
    "Saved",
    "Shape",
    "Storage",
    "UNKNOWN",
    "Window",
    "arithmetic",
    "at",
    "codes",
    "dropped_rows",
    "is_default",
    "product",
    "quotient",
    "tensors",
    "window_out",
]
