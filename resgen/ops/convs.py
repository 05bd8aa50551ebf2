"""Convolutions with standardised weights (BiT, NF-Nets) and a linear layer over the channel
axis (ConvNeXt's MLP), one class each. Shapes, checks and MACs are nn.Conv2d's and
nn.Linear's: the standardisation is a normalisation of the weights (0 MACs), and the channel
linear is a 1x1 convolution in all but its weight's shape."""

from __future__ import annotations

from dataclasses import replace
from math import prod

from resgen import codes
from resgen.ops.base import LINEAR, Counts, Emit, Op, Param, Saved, Window, at
from resgen.ops.layers import Conv


def _with(params: tuple[Param, ...], *replacements: Param) -> tuple[Param, ...]:
    """`params` with those of the same name replaced, and the new ones appended."""
    new = {p.name: p for p in replacements}
    kept = tuple(new.pop(p.name, p) for p in params)
    return kept + tuple(new.values())


_EPS = Param("eps", "float", 1e-6, "eps", "added to the weights' variance", minimum=0)


class _Standardised(Conv):
    """A convolution whose weights F.batch_norm standardises per output channel in training
    mode, over the fan-in C/g x k_h x k_w: torch refuses to do that over a single value."""

    def infer(self, x, args, check):
        kernel, groups = args["kernel"], args["groups"]
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        fan_in = x[0] // groups * kh * kw
        if fan_in < 2 and x[0] % groups == 0:
            check.error(
                codes.CHANNELS,
                f"{self.name} standardises each output channel's {x[0]}/{groups}*{kh}*{kw} = "
                f"{fan_in} weight, but the variance of one value is undefined (F.batch_norm: "
                '"Expected more than 1 value per channel when training")',
                arg="kernel",
                hint="give each output channel at least 2 weights: a larger kernel or fewer groups",
            )
        return super().infer(x, args, check)

    def _statistics(self, args) -> tuple[Saved, ...]:
        """F.batch_norm (training) over the weights: mean and invstd per output channel, in
        the parameters' dtype."""
        c = (args["channels"],)
        return (
            Saved("new", c, "param", name="save_mean"),
            Saved("new", c, "param", name="save_invstd"),
        )

    def saves(self, args, x, y, device):
        # batch_norm keeps the weight (a view of the parameter) and its statistics; conv2d the
        # input and the standardised weight: new, and under autocast the low-precision copy of
        # it that conv2d reads (the float32 one is then not saved)
        return (
            Saved("input"),
            *self._statistics(args),
            Saved("new", self._weight(args, x), name="standardised weight"),
        )

    def temporaries(self, args, x, y, device):
        # the standardised weight, in the parameters' dtype, alive while conv2d runs (under
        # autocast conv2d's low-precision copy of it too, which the weight's copy stands for)
        return (Saved("new", self._weight(args, x), "param", name="standardised weight"),)


class StdConv(_Standardised):
    """timm's StdConv2d (BiT's ResNetV2): nn.Conv2d whose weights are standardised per output
    channel in every forward pass, by F.batch_norm over the flattened weights as timm does it.
    No bias by default, as timm's."""

    name = "std_conv"
    doc = "2-D convolution with weight standardisation (BiT)"
    params = _with(Conv.params, Param("bias", "bool", False, "bias"), _EPS)
    emit = Emit(
        "StdConv2d",
        in_channels="in_channels",
        positional=("channels",),
        helper="std_conv_2d.py.jinja",
        uses=("nn.Conv2d", "nn.functional.batch_norm", "nn.functional.conv2d"),
    )


class ScaledStdConv(_Standardised):
    """timm's ScaledStdConv2d (NF-ResNets, NF-RegNets, NFNets): weights standardised, then
    scaled by a learnable per-output-channel gain (out x 1 x 1 x 1) times gamma / sqrt(fan_in).
    Parameters in torch's order: weight, bias, gain."""

    name = "scaled_std_conv"
    doc = "2-D convolution with scaled weight standardisation and a learnable gain (NF-Nets)"
    params = _with(
        Conv.params,
        Param("gamma", "float", 1.0, "gamma", "the activation's gain the scale includes"),
        _EPS,
        Param("gain_init", "float", 1.0, "gain_init", "the gain's initial value"),
    )
    emit = Emit(
        "ScaledStdConv2d",
        in_channels="in_channels",
        positional=("channels",),
        helper="scaled_std_conv_2d.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.Conv2d",
            "nn.Parameter",
            "nn.functional.batch_norm",
            "nn.functional.conv2d",
            "torch.full",
        ),
    )

    def counts(self, args, x, y):
        conv = super().counts(args, x, y)
        return conv._replace(params=conv.params + args["channels"])

    def parameters(self, args, x):
        return (*super().parameters(args, x), (args["channels"], 1, 1, 1))  # weight, bias, gain

    def saves(self, args, x, y, device):
        # and batch_norm's weight, gain.view(-1) * scale: a new vector
        gain = Saved("new", (args["channels"],), "param", name="gain * scale")
        return (gain, *super().saves(args, x, y, device))


class SameWindow(Window):
    """One axis of a convolution with TensorFlow's "SAME" padding (timm's pad_same): the output
    is ceil(n / stride) for every n >= 1, the input padded by max((ceil(n / s) - 1) * s +
    (k - 1) * d + 1 - n, 0), half of it (rounded down) before. `padding` holds the padding
    before for a size the stride divides, (k - 1) * d // 2 rounded as that rule does: what the
    receptive-field and unread-row rules read; no row is ever dropped (`ceil`)."""

    __slots__ = ()

    def out(self, n: int) -> int:
        return -(-n // self.stride)

    def takes(self, n: int) -> bool:
        return n >= 1

    def keeps_size(self) -> bool:
        return self.stride == 1


def same_padding(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """The padding (before, after) of one axis of size n under TensorFlow's "SAME" rule, as
    timm.layers.padding.get_same_padding and pad_same compute it."""
    pad = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return pad // 2, pad - pad // 2


def is_static_same(args) -> bool:
    """Whether "SAME" is a fixed symmetric padding for every input size (timm's is_static_pad:
    stride 1 and an even dilated kernel span on both axes); otherwise forward() pads."""
    return all(
        at(args["stride"], axis) == 1
        and at(args["dilation"], axis) * (at(args["kernel"], axis) - 1) % 2 == 0
        for axis in (0, 1)
    )


class ScaledStdConvSame(ScaledStdConv):
    """timm's ScaledStdConv2dSame (DeepMind's NFNets, dm_nfnet_*): ScaledStdConv2d with
    TensorFlow's "SAME" padding, so the output is ceil(H / stride) x ceil(W / stride) for any
    input. A stride-2 3x3 pads (0, 1) on an even size and (1, 1) on an odd one, in forward();
    where a fixed padding gives the same for every size (stride 1, odd kernels) the convolution
    pads (k - 1) * d / 2 itself, as timm does. No `padding` argument."""

    name = "scaled_std_conv_same"
    doc = 'ScaledStdConv2d with TensorFlow "SAME" padding (DeepMind\'s NFNets)'
    params = tuple(p for p in ScaledStdConv.params if p.name != "padding")
    emit = replace(
        ScaledStdConv.emit,
        cls="ScaledStdConv2dSame",
        helper="scaled_std_conv_2d_same.py.jinja",
        uses=(*ScaledStdConv.emit.uses, "nn.functional.pad"),
    )

    def spatial(self, args):
        return tuple(
            SameWindow(
                at(args["kernel"], axis),
                at(args["stride"], axis),
                at(args["dilation"], axis) * (at(args["kernel"], axis) - 1) // 2,
                at(args["dilation"], axis),
                True,
            )
            for axis in (0, 1)
        )

    def label(self, args, times="×"):
        return f"{super().label(args, times)} same"

    def _padded(self, args, x):
        """The padded input forward() makes (C x H' x W'), or None where the conv pads itself."""
        if is_static_same(args):
            return None
        sizes = []
        for axis in (0, 1):
            k, s, d = (at(args[name], axis) for name in ("kernel", "stride", "dilation"))
            sizes.append(x[axis + 1] + sum(same_padding(x[axis + 1], k, s, d)))
        return (x[0], *sizes)

    def saves(self, args, x, y, device):
        # conv2d keeps the padded input (F.pad makes a new tensor even when it adds nothing)
        saved = super().saves(args, x, y, device)
        padded = self._padded(args, x)
        if padded is None:
            return saved
        new = Saved("new", padded, batched=True, name="padded input")
        return tuple(new if s.tensor == "input" else s for s in saved)

    def temporaries(self, args, x, y, device):
        padded = self._padded(args, x)
        extra = (Saved("new", padded, batched=True, name="padded input"),) if padded else ()
        return (*extra, *super().temporaries(args, x, y, device))


class ChannelLinear(Op):
    """nn.Linear over the channels of C x H x W, at every position: timm's ConvNeXt MLP
    (`mlp.fc1`, `mlp.fc2`) on channels-last tensors, with nn.Linear's [out, in] weight. MACs
    as a linear layer at every position: C_in x C_out x H x W."""

    name = "channel_linear"

    def zeroed(self, args):
        return ("weight", "bias") if args.get("bias") else ("weight",)

    def maps_zero(self, args):
        return args.get("bias") is False

    doc = "linear layer over the channel axis at every position (ConvNeXt's MLP)"
    params = (
        Param("features", "int", torch="out_features", doc="output channels", limit="max_channels"),
        Param("bias", "bool", True, "bias"),
    )
    accepts = "spatial"
    family = LINEAR
    autocast = "lower"
    emit = Emit(
        "ChannelLinear",
        in_channels="in_features",
        positional=("features",),
        helper="channel_linear.py.jinja",
        uses=("nn.Linear", "nn.functional.linear"),
    )

    def channels(self, args, c):
        return args["features"]

    def infer(self, x, args, check):
        return (args["features"], x[1], x[2])

    def counts(self, args, x, y):
        out = args["features"]
        weights = x[0] * out
        return Counts(weights + (out if args["bias"] else 0), 0, weights * x[1] * x[2])

    def label(self, args, times="×"):
        return f"channel_linear {args.get('features', '?')}"

    def parameters(self, args, x):
        out = args["features"]
        return ((out, x[0]), *(((out,),) if args["bias"] else ()))

    @staticmethod
    def _copied(x) -> bool:
        """Whether F.linear's reshape of the permuted (channels-last) input to (N H W) x C
        copies it: it is a view when C or H x W is 1 (and, which the per-sample shapes cannot
        say, for a batch of one)."""
        return x[0] > 1 and x[1] * x[2] > 1

    def saves(self, args, x, y, device):
        # the input as (N H W) x C, a contiguous copy (or a view of the input), for the
        # weight's gradient; the weight for the input's
        weight = Saved("param", (args["features"], x[0]), needed_by="input", name="weight")
        if not self._copied(x):
            return (Saved("input", needed_by="weight"), weight)
        return (
            Saved("new", x, batched=True, needed_by="weight", name="input, channels last"),
            weight,
        )

    def temporaries(self, args, x, y, device):
        # A contiguous channels-last input (C or H x W of 1) is one addmm (or mm) on a view.
        # Otherwise matmul's copy of the input lives with mm's result; with a bias, that is
        # then added to it (a new output), the copy already freed: the larger of the two.
        if not self._copied(x):
            return ()
        if args["bias"] and prod(y) > prod(x):
            return (Saved("new", y, batched=True, name="mm"),)
        return (Saved("new", x, batched=True, name="input, channels last"),)


BUILTIN: tuple[Op, ...] = (StdConv(), ScaledStdConv(), ScaledStdConvSame(), ChannelLinear())
