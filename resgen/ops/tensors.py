"""Tensor ops: how a block body forks and joins (Res2Net, ResNeSt, SKNet, CBAM).

`split` cuts the channels into a bundle of equal chunks; `concat`, `add` and `mul` join what
`from` names, a bundle's items included; `radix_softmax` normalises attention logits across
branches; `channel_mean` and `channel_max` pool the channel axis (CBAM's spatial gate). All but
radix_softmax are functions in generated code (torch.chunk, torch.cat, `+`, `*`), not modules:
they hold no state, and timm writes them inline too.
"""

from __future__ import annotations

from resgen import codes
from resgen.algebra import divide, plus
from resgen.ops.base import (
    ACT,
    MERGE,
    OTHER,
    Bundle,
    Emit,
    Items,
    Op,
    Operand,
    Param,
    Saved,
    tensors,
)
from resgen.text import shape_text

TORCH = ("import torch",)


def _flat(inputs) -> list:
    """Every tensor's shape, a bundle's items in order."""
    return [s for x in inputs for s in (x if isinstance(x, Bundle) else (x,))]


def _listed(shapes) -> str:
    return (
        " and ".join(shape_text(s) for s in shapes)
        if len(shapes) < 4
        else (", ".join(shape_text(s) for s in shapes))
    )


class Split(Op):
    name = "split"
    doc = "cut the channels into `chunks` equal parts: a bundle (torch.chunk along dim 1)"
    params = (Param("chunks", "int", doc="how many parts", limit="max_channels"),)
    accepts = "spatial"
    stateless = True
    functional = True
    emit = Emit("", imports=TORCH, uses=("torch.chunk",))

    keeps_zero = True  # the parts of zeros are zeros

    def storage(self, args, training):
        return "input"  # torch.chunk's parts are views of the input

    def saves(self, args, x, y, device):
        return ()  # split's backward concatenates the gradients: sizes only

    def bundle(self, args, sizes):
        return args["chunks"]

    def channels(self, args, c):
        return Items(args["chunks"], divide(c, args["chunks"]))

    def infer(self, x, args, check):
        n = args["chunks"]
        if x[0] % n:
            check.error(
                codes.CHANNELS,
                f"split({n}) of {shape_text(x)}: {x[0]} channels do not divide into {n} equal "
                f"chunks ({x[0]} = {n} * {x[0] // n} + {x[0] % n})",
                arg="chunks",
                hint=f"make the channels a multiple of {n}",
            )
            return None
        return Bundle(((x[0] // n, x[1], x[2]),) * n)

    def expression(self, inputs, args):
        return f"torch.chunk({inputs[0].code}, {args['chunks']}, 1)"

    def label(self, args, times="×"):
        return f"split {args.get('chunks', '?')}"


class Concat(Op):
    name = "concat"
    doc = "join tensors along the channels (torch.cat along dim 1); all H x W equal"
    accepts = "spatial"
    arity = "many"
    stateless = True
    functional = True
    family = MERGE
    emit = Emit("", imports=TORCH, uses=("torch.cat",))
    keeps_zero = True  # zeros where every input is zero (maps_zeros: all of them)

    def saves(self, args, x, y, device):
        return ()  # cat's backward slices the gradient: sizes only

    def channels(self, args, c):
        total = 0
        for one in c:
            total = plus(total, one.total if isinstance(one, Items) else one)
        return total

    def infer(self, x, args, check):
        shapes = _flat(x)
        if any(len(s) != 3 for s in shapes):
            check.error(codes.NOT_SPATIAL, f"concat needs C x H x W inputs, not {_listed(shapes)}")
            return None
        sizes = {s[1:] for s in shapes}
        if len(sizes) > 1:
            check.error(
                codes.JOIN_MISMATCH,
                f"concat of {_listed(shapes)}: the inputs' H x W differ, and tensors join along "
                "the channels only where every position lines up",
                hint="give every branch the same stride (or pool the others to match)",
            )
            return None
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def expression(self, inputs, args):
        return f"torch.cat({tensors(inputs)}, 1)"


class _Elementwise(Op):
    """add and mul: element-wise over their inputs with torch's broadcasting (a C x 1 x 1 gate
    scales a C x H x W tensor). A bundle pairs up item by item with another bundle, and each of
    its items meets a plain tensor; `add` of one bundle alone sums its items."""

    arity = "many"
    stateless = True
    functional = True
    family = MERGE
    symbol = ""
    emit = Emit("", imports=TORCH, uses=("torch.stack",))
    keeps_zero = True  # a sum of zeros; a product of zeros (Mul needs only one, maps_zeros)

    def channels(self, args, c):
        items = [one for one in c if isinstance(one, Items)]
        if len(c) == 1 and items:  # the sum of one bundle's items
            return items[0].channels
        counts = [one.channels if isinstance(one, Items) else one for one in c]
        # Broadcasting: a 1-channel gate takes the other's count.
        widest = next((n for n in counts if not (isinstance(n, int) and n == 1)), counts[0])
        return Items(items[0].count, widest) if items else widest

    def bundle(self, args, sizes):
        bundles = [n for n in sizes if n is not None]
        if not bundles or len(sizes) == 1:  # tensors; or one bundle's items, summed
            return None
        return bundles[0]

    def infer(self, x, args, check):
        bundles = [b for b in x if isinstance(b, Bundle)]
        if len(x) == 1 and bundles:
            return self._combine(list(bundles[0]), check)
        if len(x) < 2:
            check.error(
                codes.JOIN_MISMATCH,
                f"{self.name} of one tensor: name two or more inputs with `from`, or one bundle",
            )
            return None
        lengths = {len(b) for b in bundles}
        if len(lengths) > 1:
            check.error(
                codes.JOIN_MISMATCH,
                f"{self.name} of bundles of {' and '.join(str(len(b)) for b in bundles)} "
                "tensors: bundles pair up item by item, so they hold the same number",
            )
            return None
        if not bundles:
            return self._combine(list(x), check)
        out = []
        for index in range(lengths.pop()):
            row = [b[index] if isinstance(b, Bundle) else b for b in x]
            shape = self._combine(row, check)
            if shape is None:
                return None
            out.append(shape)
        return Bundle(out)

    def _combine(self, shapes, check):
        if len({len(s) for s in shapes}) > 1:
            check.error(codes.JOIN_MISMATCH, f"{self.name} of {_listed(shapes)}: ranks differ")
            return None
        out = []
        for axis, sizes in enumerate(zip(*shapes, strict=True)):
            wide = {n for n in sizes if n != 1}
            if len(wide) > 1:
                what = ("channels", "heights", "widths")[axis] if len(shapes[0]) == 3 else "sizes"
                check.error(
                    codes.JOIN_MISMATCH,
                    f"{self.name} of {_listed(shapes)}: {what} "
                    f"{' and '.join(str(n) for n in sizes)} neither match nor broadcast (torch "
                    "stretches a size of 1 only)",
                )
                return None
            out.append(wide.pop() if wide else 1)
        return tuple(out)

    def saves(self, args, x, y, device):
        return ()  # a sum's gradient passes to every input unchanged (Mul saves its inputs)

    def temporaries(self, args, x, y, device):
        """`a + b + c` makes a partial result per `+` but the last; one bundle's sum stacks its
        items first (torch.stack, then .sum(1))."""
        if len(x) == 1 and isinstance(x[0], Bundle):
            return (Saved("new", (len(x[0]), *y), batched=True, name="stack"),)
        if any(isinstance(one, Bundle) for one in x):
            return ()  # item by item: one result per item, no partial ones
        return tuple(Saved("new", y, batched=True, name="partial") for _ in x[2:])

    def expression(self, inputs, args):
        joined = f" {self.symbol} "
        if len(inputs) == 1 and inputs[0].bundle:  # the items of one bundle
            return f"torch.stack({inputs[0].code}, 1).sum(1)"
        if not any(i.bundle for i in inputs):
            return joined.join(i.code for i in inputs)
        names = [f"x{k}" for k in range(len(inputs))]
        zipped = [i.code for i in inputs if i.bundle]
        loop = [n for n, i in zip(names, inputs, strict=True) if i.bundle]
        terms = [n if i.bundle else i.code for n, i in zip(names, inputs, strict=True)]
        source = zipped[0] if len(zipped) == 1 else f"zip({', '.join(zipped)})"
        target = loop[0] if len(loop) == 1 else ", ".join(loop)
        return f"[{joined.join(terms)} for {target} in {source}]"


class Add(_Elementwise):
    name = "add"
    doc = "element-wise sum of its inputs (broadcasting); of one bundle, its items' sum"
    symbol = "+"


class Mul(_Elementwise):
    name = "mul"
    doc = "element-wise product of its inputs, broadcasting a size of 1 (a gate)"
    symbol = "*"

    def maps_zeros(self, args, zeros):
        return any(zeros)  # x * gate is zero for a zero x whatever the gate (CBAM, SK)

    def saves(self, args, x, y, device):
        # each factor for the others' gradients (derivatives.yaml: mul saves self and other)
        return (Saved("input", needed_by="other"), Saved("other", needed_by="input"))

    def infer(self, x, args, check):
        bundles = [b for b in x if isinstance(b, Bundle)]
        if len(x) == 1 and bundles:
            check.error(
                codes.JOIN_MISMATCH,
                "mul of one bundle: name what it multiplies with `from` (`mul from a, b`)",
            )
            return None
        return super().infer(x, args, check)


class RadixSoftmax(Op):
    """timm's RadixSoftmax (timm/layers/split_attn.py), used by ResNeSt's split attention and,
    with groups 1, by SKNet's selection: the channels are `groups` x `radix` x rest; a softmax
    across the radix branches, with the result laid out branch-major (`split(radix)` then gives
    each branch's weights). With one branch, a sigmoid."""

    name = "radix_softmax"
    keeps_zero = False  # a softmax of zeros is 1 / radix, a sigmoid 0.5
    doc = "softmax across `radix` branches of the channels (ResNeSt, SKNet); sigmoid for 1"
    params = (
        Param("radix", "int", torch="radix", doc="branches", limit="max_channels"),
        Param("groups", "int", 1, torch="groups", doc="cardinality", limit="max_channels"),
    )
    accepts = "spatial"
    stateless = True
    family = ACT
    emit = Emit(
        "RadixSoftmax",
        positional=("radix", "groups"),
        helper="radix_softmax.py.jinja",
        uses=("torch.sigmoid",),
        imports=TORCH,
    )

    def infer(self, x, args, check):
        radix, groups = args["radix"], args["groups"]
        if x[0] % (radix * groups):
            check.error(
                codes.CHANNELS,
                f"radix_softmax({radix}, groups={groups}) of {shape_text(x)}: {x[0]} channels "
                f"are not {groups} groups of {radix} branches ({x[0]} % {radix * groups} = "
                f"{x[0] % (radix * groups)})",
                arg="radix",
            )
            return None
        return x

    def _copies(self, args) -> bool:
        """Whether softmax copies its input: with groups > 1 the transpose makes it
        non-contiguous and softmax works on a contiguous copy (its result, branch-major and
        contiguous, is then the output: reshape is a view); with one group the transpose swaps
        a size-1 axis and nothing is copied."""
        return args["radix"] > 1 and args["groups"] > 1

    def saves(self, args, x, y, device):
        return (Saved("output"),)  # softmax and sigmoid keep their result for backward

    def temporaries(self, args, x, y, device):
        if self._copies(args):
            return (Saved("new", x, batched=True, name="contiguous input"),)
        return ()

    def label(self, args, times="×"):
        radix = args.get("radix", "?")
        return "sigmoid" if radix == 1 else f"softmax over {radix}"


class _ChannelPool(Op):
    accepts = "spatial"
    keeps_zero = True  # the mean and the maximum of zeros
    stateless = True
    functional = True
    family = OTHER
    function = ""

    def channels(self, args, c):
        return 1

    def infer(self, x, args, check):
        return (1, x[1], x[2])

    def expression(self, inputs, args):
        return f"{self.function}({inputs[0].code}, 1, keepdim=True)"

    def saves(self, args, x, y, device):
        return ()  # mean's backward spreads the gradient: sizes only


class ChannelMean(_ChannelPool):
    name = "channel_mean"
    doc = "the mean over the channels: 1 x H x W (CBAM's spatial gate)"
    function = "torch.mean"
    emit = Emit("", imports=TORCH, uses=(function,))


class ChannelMax(_ChannelPool):
    name = "channel_max"
    doc = "the maximum over the channels: 1 x H x W (CBAM's spatial gate)"
    function = "torch.amax"
    emit = Emit("", imports=TORCH, uses=(function,))

    def saves(self, args, x, y, device):
        # derivatives.yaml amax: the gradient goes where `result == self`
        return (Saved("input"), Saved("output"))


BUILTIN: tuple[Op, ...] = (
    Split(),
    Concat(),
    Add(),
    Mul(),
    RadixSoftmax(),
    ChannelMean(),
    ChannelMax(),
)

__all__ = ["BUILTIN", "Operand"]
