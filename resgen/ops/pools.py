"""Pooling and resampling beyond max/avg pooling (resgen.ops.layers): global pool variants,
anti-aliased downsampling, constant padding and space-to-depth. One class each.

MACs follow torchvision's convention (convolutions and linear layers): pools and reshuffles
count 0, and BlurPool's depthwise convolution with its fixed filter counts as the convolution
it is (C x H_out x W_out x k x k), as torch's own FLOP counter (torch.utils.flop_counter) does.
"""

from __future__ import annotations

from resgen import codes
from resgen.ops.base import (
    OTHER,
    POOL,
    SIZE_HINT,
    Buffer,
    Counts,
    Emit,
    Fixed,
    Op,
    Param,
    Saved,
    Window,
    arithmetic,
    at,
    product,
)
from resgen.text import shape_text, size_text

_SIZE = Param("size", "size", torch="output_size", doc="output H x W")


class _AdaptivePool(Op):
    """Pools any H x W to `size` (PyTorch's adaptive windows)."""

    keeps_zero = True

    params = (_SIZE,)
    accepts = "spatial"
    family = POOL
    stateless = True
    kind = ""

    def spatial(self, args):
        return Fixed(at(args["size"], 0), at(args["size"], 1))

    def infer(self, x, args, check):
        size = self.spatial(args)
        return (self.channels(args, x[0]), size.height, size.width)

    def label(self, args, times="×"):
        return f"adaptive {self.kind} to {size_text(args.get('size'), times)}"


def _indices(x, y) -> Saved:
    """adaptive_max_pool2d's int64 position of each maximum, one per output of the C input
    channels (computed with or without grad)."""
    return Saved("new", (x[0], y[1], y[2]), "int64", batched=True, name="indices")


class AdaptiveMaxPool(_AdaptivePool):
    name = "adaptive_maxpool"
    doc = "adaptive max pooling to a fixed output size"
    emit = Emit("nn.AdaptiveMaxPool2d", positional=("size",))
    kind = "maxpool"
    global_pool = "max"

    def saves(self, args, x, y, device):
        # adaptive_max_pool2d_backward(grad, self, indices)
        return (Saved("input"), _indices(x, y))

    def temporaries(self, args, x, y, device):
        return (_indices(x, y),)


class AdaptiveAvgMaxPool(_AdaptivePool):
    name = "adaptive_avgmaxpool"
    doc = "the mean of adaptive average and max pooling (timm's avgmax global pool)"
    emit = Emit(
        "AdaptiveAvgMaxPool2d",
        positional=("size",),
        helper="adaptive_avg_max_pool_2d.py.jinja",
        uses=("nn.functional.adaptive_avg_pool2d", "nn.functional.adaptive_max_pool2d"),
    )
    kind = "avgmaxpool"
    global_pool = "avgmax"

    def saves(self, args, x, y, device):
        # the max pool keeps the input and its indices (the average pool the input too, or,
        # at 1 x 1, nothing: a mean); the sum and the product by 0.5 keep nothing
        return (Saved("input"), _indices(x, y))

    def temporaries(self, args, x, y, device):
        # The most is live as the max pool returns: the average (the output's size, which
        # stands for it), the maximum and its indices. Later the average, the maximum, their
        # sum and the output are: no more, as the int64 indices are at least the sum's size.
        pooled = (x[0], y[1], y[2])
        return (Saved("new", pooled, batched=True, name="maximum"), _indices(x, y))


class AdaptiveCatAvgMaxPool(_AdaptivePool):
    name = "adaptive_catavgmaxpool"
    doc = "adaptive average and max pooling concatenated: 2 C channels (timm's catavgmax)"
    emit = Emit(
        "AdaptiveCatAvgMaxPool2d",
        positional=("size",),
        helper="adaptive_cat_avg_max_pool_2d.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.functional.adaptive_avg_pool2d",
            "nn.functional.adaptive_max_pool2d",
            "torch.cat",
        ),
    )
    kind = "catavgmaxpool"
    global_pool = "catavgmax"

    def channels(self, args, c):
        return product(c, 2)

    def saves(self, args, x, y, device):
        return (Saved("input"), _indices(x, y))  # cat keeps nothing

    def temporaries(self, args, x, y, device):
        # The most is live as the max pool returns: the average and the maximum (together the
        # output's size, which stands for them) and the indices; torch.cat's output, allocated
        # later while both still live, is no larger than the indices.
        return (_indices(x, y),)


class ReflectWindow(Window):
    """A window after reflect padding, which torch allows only for a padding below the input
    size (F.pad: "Padding size should be less than the corresponding input dimension")."""

    __slots__ = ()

    def takes(self, n: int) -> bool:
        return n > self.padding and self.out(n) >= 1

    def keeps_size(self) -> bool:
        return False  # even at stride 1, the input must be larger than the padding


class BlurPool(Op):
    """timm's BlurPool2d (Zhang 2019): a binomial filter of `kernel` taps per axis applied to
    each channel after reflect padding of ((stride - 1) + (kernel - 1)) // 2, at `stride`. The
    filter is a non-persistent buffer of C x 1 x k x k: counted as a buffer, not saved."""

    name = "blurpool"
    keeps_zero = True  # a fixed filter on reflect-padded zeros
    doc = "anti-aliased downsampling: binomial blur, then stride (timm's BlurPool2d)"
    params = (
        Param(
            "kernel", "int", 3, "filt_size", "binomial filter taps", minimum=2, limit="max_kernel"
        ),
        Param("stride", "int", 2, "stride", limit="max_kernel"),
    )
    accepts = "spatial"
    family = POOL
    emit = Emit(
        "BlurPool2d",
        in_channels="channels",
        helper="blur_pool_2d.py.jinja",
        imports=("import math", "import torch"),
        uses=(
            "math.comb",
            "torch.tensor",
            "torch.float32",
            "torch.outer",
            "nn.functional.pad",
            "nn.functional.conv2d",
        ),
    )

    def spatial(self, args):
        k, s = args["kernel"], args["stride"]
        window = ReflectWindow(k, s, ((s - 1) + (k - 1)) // 2, 1, False)
        return window, window

    def infer(self, x, args, check):
        window = self.spatial(args)[0]
        sizes = []
        for axis, n in enumerate(x[1:]):
            label = "height" if axis == 0 else "width"
            if n <= window.padding:
                check.error(
                    codes.TOO_SMALL,
                    f"blurpool pads its {label} {n} by {window.padding} on each side by "
                    f"reflection, which needs an input of at least {window.padding + 1} (torch's "
                    f"reflect padding must be less than the input size)",
                    hint=SIZE_HINT,
                )
                return None
            out = window.out(n)
            if out < 1:
                check.error(
                    codes.TOO_SMALL,
                    f"output {label} {arithmetic(n, *window)} is below 1: the blurpool input "
                    f"{shape_text(x)} is too small for kernel {window.kernel}",
                    hint=SIZE_HINT,
                )
                return None
            sizes.append(out)
        return (x[0], *sizes)

    def counts(self, args, x, y):
        k = args["kernel"]
        return Counts(0, x[0] * k * k, x[0] * y[1] * y[2] * k * k if y else 0)

    def buffers(self, args, x):
        k = args["kernel"]
        return (Buffer((x[0], 1, k, k)),)  # `filt`, non-persistent, in the model's dtype

    def _padded(self, args, x) -> Saved:
        p = self.spatial(args)[0].padding
        return Saved("new", (x[0], x[1] + 2 * p, x[2] + 2 * p), batched=True, name="padded")

    def saves(self, args, x, y, device):
        # reflection_pad2d_backward(grad, self, padding) keeps the input; the depthwise conv2d
        # keeps the padded input (and the filter, a buffer)
        return (Saved("input"), self._padded(args, x))

    def temporaries(self, args, x, y, device):
        return (self._padded(args, x),)  # alive while the convolution runs

    def label(self, args, times="×"):
        k, s = args.get("kernel", "?"), args.get("stride", "?")
        return f"blurpool {k}{times}{k} s{s}"


class ConstantPad(Op):
    """nn.ConstantPad2d(padding, value): `padding` rows and columns of `value` on every side
    (BiT's stem pads 1 before an unpadded max pool)."""

    name = "constant_pad"

    def maps_zero(self, args):
        return args.get("value") == 0  # zeros padded with zeros

    doc = "pad H and W on every side with a constant"
    params = (
        Param("padding", "int", torch="padding", doc="on each side", minimum=0, limit="max_kernel"),
        Param("value", "float", 0.0, "value", "the fill value"),
    )
    accepts = "spatial"
    family = OTHER
    stateless = True
    emit = Emit("nn.ConstantPad2d", positional=("padding", "value"))

    def spatial(self, args):
        window = Window(1, 1, args["padding"], 1, False)
        return window, window

    def infer(self, x, args, check):
        p = args["padding"]
        return (x[0], x[1] + 2 * p, x[2] + 2 * p)

    def explain(self, args, x, y, spatial):
        if spatial and x[1:] != y[1:]:
            return f"padding {args['padding']} on each side makes {shape_text(y)}"
        return None

    def saves(self, args, x, y, device):
        return ()  # constant_pad_nd's backward slices the gradient: it needs only the padding

    def label(self, args, times="×"):
        value = args.get("value", 0.0)
        return f"pad {args.get('padding', '?')}" + (f" with {value:g}" if value else "")


class BlockWindow(Window):
    """Non-overlapping blocks that must tile the input exactly (space-to-depth)."""

    __slots__ = ()

    def takes(self, n: int) -> bool:
        return n % self.stride == 0 and n >= self.kernel


class SpaceToDepth(Op):
    """timm's SpaceToDepth (TResNet's stem): C x H x W to C*b*b x H/b x W/b, each b x b patch
    moved into the channels in timm's order (b, b, C), which is not pixel_unshuffle's."""

    name = "space_to_depth"
    keeps_zero = True
    doc = "move block_size x block_size patches into the channels (timm's SpaceToDepth)"
    params = (Param("block_size", "int", 4, "block_size", limit="max_kernel"),)
    accepts = "spatial"
    family = OTHER
    stateless = True
    emit = Emit("SpaceToDepth", helper="space_to_depth.py.jinja")

    def channels(self, args, c):
        b = self.with_defaults(args)["block_size"]  # the code generator gives only those written
        return product(c, product(b, b))

    def spatial(self, args):
        b = args["block_size"]
        window = BlockWindow(b, b, 0, 1, False)
        return window, window

    def infer(self, x, args, check):
        b = args["block_size"]
        bad = [(label, n) for label, n in (("height", x[1]), ("width", x[2])) if n % b]
        if bad:
            worked = "; ".join(f"{label} {n} = {b}*{n // b} + {n % b}" for label, n in bad)
            check.error(
                codes.INDIVISIBLE_SIZE,
                f"space_to_depth({b}) needs a height and width divisible by {b}, but its "
                f"input is {shape_text(x)}: {worked}",
                hint=f"make the input size a multiple of {b}",
            )
            return None
        return (x[0] * b * b, x[1] // b, x[2] // b)

    def saves(self, args, x, y, device):
        return ()  # views, a permute and its contiguous copy (the output): nothing saved

    def explain(self, args, x, y, spatial):
        b = args["block_size"]
        if spatial:
            return f"blocks of {b}x{b} make {y[1]}x{y[2]} from {x[1]}x{x[2]}"
        return f"makes {y[0]} = {x[0]}*{b}*{b} channels from {x[0]}"

    def label(self, args, times="×"):
        b = args.get("block_size", "?")
        return f"space_to_depth {b}{times}{b}"


BUILTIN: tuple[Op, ...] = (
    AdaptiveMaxPool(),
    AdaptiveAvgMaxPool(),
    AdaptiveCatAvgMaxPool(),
    BlurPool(),
    ConstantPad(),
    SpaceToDepth(),
)
