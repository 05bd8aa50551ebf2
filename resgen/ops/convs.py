"""Convolutions with standardised weights (BiT, NF-Nets) and a linear layer over the channel
axis (ConvNeXt's MLP), one class each. Shapes, checks and MACs are nn.Conv2d's and
nn.Linear's: the standardisation is a normalisation of the weights (0 MACs), and the channel
linear is a 1x1 convolution in all but its weight's shape."""

from __future__ import annotations

from resgen import codes
from resgen.ops.base import LINEAR, Counts, Emit, Op, Param
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


BUILTIN: tuple[Op, ...] = (StdConv(), ScaledStdConv(), ChannelLinear())
