"""resgen's built-in layer ops, one class each (see resgen.ops.base for what the attributes mean).

Parameter names are the .arch names (short, like the papers' tables); `torch` is the keyword of
the torch.nn constructor each maps to. Counts follow torch (`numel` of parameters and buffers)
and torchvision's MAC convention (convolutions and linear layers only).
"""

from __future__ import annotations

from resgen import codes
from resgen.ops.base import (
    ACT,
    CONV,
    FROM_INPUT,
    LINEAR,
    NORM,
    POOL,
    SIZE_HINT,
    Args,
    Buffer,
    Check,
    Counts,
    Emit,
    Fixed,
    Op,
    Param,
    SameAs,
    Saved,
    Shape,
    Window,
    arithmetic,
    at,
    dropped_rows,
    is_default,
)
from resgen.text import axis_text, shape_text, size_text


class _Flat:
    """The channel count after `flatten`: not a count, the tensor is no longer C x H x W."""

    def __repr__(self) -> str:
        return "<flattened features>"


FLAT = _Flat()


def _windows(args: Args) -> tuple[Window, Window]:
    """kernel, stride, padding, dilation and ceil_mode per axis of a conv or pool."""
    k, s = args["kernel"], args.get("stride", 1)
    p, d, ceil = args.get("padding", 0), args.get("dilation", 1), bool(args.get("ceil_mode"))
    return (
        Window(at(k, 0), at(s, 0), at(p, 0), at(d, 0), ceil),
        Window(at(k, 1), at(s, 1), at(p, 1), at(d, 1), ceil),
    )


def _sliding(op: str, channels: int, x: Shape, windows, check: Check) -> Shape | None:
    """The C x H x W after sliding `windows` over `x`: too-small errors, dropped-rows warnings."""
    sizes, dropped = [], []
    for axis, (n, window) in enumerate(zip(x[1:], windows, strict=True)):
        k, s, p, d, ceil = window
        label = "height" if axis == 0 else "width"
        out = window.out(n)
        if out < 1:
            check.error(
                codes.TOO_SMALL,
                f"output {label} {arithmetic(n, *window)} is below 1: the {op} input "
                f"{shape_text(x)} is too small for kernel {k}"
                + (f", dilation {d}" if d > 1 else "")
                + (f", stride {s}" if s > 1 else ""),
                hint=SIZE_HINT,
            )
            return None
        lost = 0 if ceil else dropped_rows(n, k, s, p, d)
        if lost:
            rows = "row" if axis == 0 else "column"
            dropped.append(
                f"{label}: {arithmetic(n, *window)}: the last {lost} input "
                f"{rows}{'s' * (lost > 1)} of {n} {'is' if lost == 1 else 'are'} never read"
            )
        sizes.append(out)
    if dropped:
        check.warning(codes.DROPPED_ROWS, "; ".join(dropped), hint=SIZE_HINT)
    return (channels, *sizes)


def _weight_and_bias(args: Args) -> tuple[str, ...]:
    """What zeroes a conv's or linear's output: its weight, and its bias when it has one (None
    when `bias` is not a constant: the code could not say which)."""
    bias = args.get("bias")
    return ("weight", "bias") if bias is True else ("weight",) if bias is False else ()


def _window_label(name: str, args: Args, times: str, extras) -> str:
    """`conv 3×3 s2 p1`: the kernel, then each (argument, key, default) that is not default."""
    shown = [
        f"{key}{axis_text(args[arg], times)}"
        for arg, key, default in extras
        if arg in args and not is_default(args[arg], default)
    ]
    if args.get("ceil_mode"):
        shown.append("ceil")
    return " ".join([f"{name} {size_text(args.get('kernel'), times)}", *shown])


_KERNEL = Param("kernel", "size", torch="kernel_size", limit="max_kernel")
_PADDING = Param("padding", "size", 0, "padding", minimum=0, limit="max_kernel")
_DILATION = Param("dilation", "size", 1, "dilation", limit="max_kernel")
_POOL_STRIDE = Param(
    "stride", "size", SameAs("kernel"), "stride", "defaults to the kernel", limit="max_kernel"
)
_CEIL_MODE = Param("ceil_mode", "bool", False, "ceil_mode")


class Conv(Op):
    name = "conv"
    doc = "2-D convolution"
    params = (
        Param("channels", "int", torch="out_channels", doc="output channels", limit="max_channels"),
        _KERNEL,
        Param("stride", "size", 1, "stride", limit="max_kernel"),
        _PADDING,
        _DILATION,
        Param("groups", "int", 1, "groups", limit="max_channels"),
        Param("bias", "bool", True, "bias"),
    )
    accepts = "spatial"
    family = CONV
    autocast = "lower"
    emit = Emit(
        "nn.Conv2d",
        in_channels="in_channels",
        positional=("channels",),
        # torchvision's ResNet initialisation (He et al. 2015, fan_out for ReLU networks)
        init=('nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")',),
        uses=("nn.init.kaiming_normal_",),
    )

    def channels(self, args, c):
        return args["channels"]

    def spatial(self, args):
        return _windows(args)

    def infer(self, x, args, check):
        out, groups = args["channels"], args["groups"]
        for label, value in (("input", x[0]), ("output", out)):
            if value % groups:
                check.error(
                    codes.GROUPS,
                    f"{label} channels {value} are not divisible by groups={groups} "
                    f"({value} / {groups} leaves {value % groups})",
                    arg="groups",
                    hint="groups must divide both the input and the output channels",
                )
                break
        return _sliding(self.name, out, x, self.spatial(args), check)

    def zeroed(self, args):
        return _weight_and_bias(args)

    def maps_zero(self, args):
        return args.get("bias") is False

    def counts(self, args, x, y):
        # The weights follow the channels, whatever the sizes do: counted even when y is None.
        out, kernel = args["channels"], args["kernel"]
        per_output = x[0] // args["groups"] * at(kernel, 0) * at(kernel, 1)
        params = out * per_output + (out if args["bias"] else 0)
        return Counts(params, 0, out * y[1] * y[2] * per_output if y else 0)

    def label(self, args, times="×"):
        extras = (("stride", "s", 1), ("padding", "p", 0), ("dilation", "d", 1), ("groups", "g", 1))
        return _window_label(self.name, args, times, extras)

    def _weight(self, args, x) -> Shape:
        kernel = args["kernel"]
        return (args["channels"], x[0] // args["groups"], at(kernel, 0), at(kernel, 1))

    def parameters(self, args, x):
        bias = ((args["channels"],),) if args["bias"] else ()
        return (self._weight(args, x), *bias)

    def saves(self, args, x, y, device):
        # derivatives.yaml, convolution: one formula for input, weight and bias gradients that
        # reads `input` and `weight`, so both are saved whatever requires grad.
        return (Saved("input"), Saved("param", self._weight(args, x), name="weight"))


class BatchNorm(Op):
    name = "batchnorm"
    doc = "batch normalisation over channels"
    params = (
        Param(
            "channels",
            "int",
            FROM_INPUT,
            doc="checked against the input when given",
            limit="max_channels",
        ),
        Param(
            "eps",
            "float",
            1e-5,
            "eps",
            above=0,
            rule="torch: 'batch_norm eps must be positive during training' (eval: non-negative)",
        ),
        Param("momentum", "float", 0.1, "momentum", rule="torch accepts any momentum"),
    )
    accepts = "spatial"
    family = NORM
    zero_init = "weight"  # its bias starts at 0
    keeps_zero = True  # bias 0, running mean 0; a batch of zeros has mean 0
    emit = Emit(
        "nn.BatchNorm2d",
        in_channels="num_features",
        init=("nn.init.constant_(module.weight, 1)", "nn.init.constant_(module.bias, 0)"),
        uses=("nn.init.constant_",),
    )

    def infer(self, x, args, check):
        given = args.get("channels")
        if given is not None and given != x[0]:
            check.error(
                codes.CHANNELS,
                f"batchnorm is declared for {given} channels but its input {shape_text(x)} "
                f"has {x[0]}",
                arg="channels",
                hint=f"write `batchnorm` (channels follow the input) or `batchnorm({x[0]})`",
            )
        return x

    def counts(self, args, x, y):
        # weight and bias; running mean, running variance and num_batches_tracked
        return Counts(2 * x[0], 2 * x[0] + 1, 0)

    def parameters(self, args, x):
        return ((x[0],), (x[0],))

    def buffers(self, args, x):
        return (Buffer((x[0],)), Buffer((x[0],)), Buffer((), "int64"))

    def saves(self, args, x, y, device):
        # Training mode: _batch_norm_with_update saves input, weight, the running statistics
        # (buffers) and its own per-channel batch mean and inverse standard deviation, in the
        # parameters' dtype (float32 for a low-precision input under autocast).
        c = (x[0],)
        return (
            Saved("input"),
            Saved("param", c, name="weight"),
            Saved("param", c, name="running_mean"),
            Saved("param", c, name="running_var"),
            Saved("new", c, "param", name="save_mean"),
            Saved("new", c, "param", name="save_invstd"),
        )


class ReLU(Op):
    name = "relu"
    doc = "ReLU"
    params = (Param("inplace", "bool", False, "inplace"),)
    family = ACT
    stateless = True
    keeps_zero = True
    emit = Emit("nn.ReLU")

    def storage(self, args, training):
        return "in-place" if args.get("inplace") else "new"

    def saves(self, args, x, y, device):
        return (Saved("output", name="result"),)  # threshold_backward(grad, result, 0)


class Sigmoid(Op):
    name = "sigmoid"
    doc = "logistic sigmoid"
    family = ACT
    stateless = True
    emit = Emit("nn.Sigmoid")

    def saves(self, args, x, y, device):
        return (Saved("output", name="result"),)  # sigmoid_backward(grad, result)


class _Pool(Op):
    accepts = "spatial"
    family = POOL
    stateless = True
    keeps_zero = True

    def spatial(self, args):
        return _windows(args)

    def infer(self, x, args, check):
        windows = _windows(args)
        for window in windows:
            # torch (aten/src/ATen/native/Pool.h, pool2d_shape_check): "pad should be smaller
            # than or equal to half of kernel size": half the kernel itself, not the dilated
            # one, for max and average pooling alike (maxpool(3, padding=2, dilation=2) fails).
            k, _, p, _, _ = window
            limit = k // 2
            if p > limit:
                check.error(
                    codes.PADDING_TOO_LARGE,
                    f"padding {p} is more than half the kernel {k} (at most {limit}); PyTorch "
                    "refuses it",
                    arg="padding",
                    hint=f"use padding <= {limit}",
                )
                break
        return _sliding(self.name, x[0], x, windows, check)

    def label(self, args, times="×"):
        extras = (("stride", "s", 1), ("padding", "p", 0), ("dilation", "d", 1))
        return _window_label(self.name, args, times, extras)


class MaxPool(_Pool):
    name = "maxpool"
    doc = "max pooling"
    params = (_KERNEL, _POOL_STRIDE, _PADDING, _DILATION, _CEIL_MODE)
    emit = Emit("nn.MaxPool2d")

    def saves(self, args, x, y, device):
        # max_pool2d_with_indices: the input and the int64 position of each maximum
        return (Saved("input"), Saved("new", y, "int64", batched=True, name="indices"))

    def temporaries(self, args, x, y, device):
        # ATen's max_pool2d is max_pool2d_with_indices(...)[0], with or without grad
        return (Saved("new", y, "int64", batched=True, name="indices"),)


class AvgPool(_Pool):
    name = "avgpool"
    doc = "average pooling"
    params = (
        _KERNEL,
        _POOL_STRIDE,
        _PADDING,
        _CEIL_MODE,
        Param("count_include_pad", "bool", True, "count_include_pad"),
    )
    emit = Emit("nn.AvgPool2d")

    def saves(self, args, x, y, device):
        return (Saved("input"),)  # avg_pool2d_backward(grad, self, ...)


class AdaptiveAvgPool(Op):
    name = "adaptive_avgpool"
    doc = "adaptive average pooling to a fixed output size"
    params = (Param("size", "size", torch="output_size"),)
    accepts = "spatial"
    family = POOL
    stateless = True
    keeps_zero = True
    emit = Emit("nn.AdaptiveAvgPool2d", positional=("size",))
    global_pool = "avg"

    def spatial(self, args):
        return Fixed(at(args["size"], 0), at(args["size"], 1))

    def infer(self, x, args, check):
        size = self.spatial(args)
        return (x[0], size.height, size.width)

    def label(self, args, times="×"):
        return f"adaptive avgpool to {size_text(args.get('size'), times)}"

    def saves(self, args, x, y, device):
        # ATen computes a 1x1 output as input.mean((-1, -2), keepdim=True), whose backward
        # needs only sizes; any other size saves the input (_adaptive_avg_pool2d_backward).
        return () if is_default(args["size"], 1) else (Saved("input"),)


class Flatten(Op):
    name = "flatten"
    doc = "flatten C x H x W to one axis (start_dim=1)"
    stateless = True
    keeps_zero = True
    emit = Emit("nn.Flatten")

    def channels(self, args, c):
        return FLAT

    def infer(self, x, args, check):
        size = 1
        for v in x:
            size *= v
        return (size,)

    def storage(self, args, training):
        return "input"  # a view of the (contiguous) input

    def saves(self, args, x, y, device):
        return ()


class Linear(Op):
    name = "linear"
    doc = "fully connected layer"
    params = (
        Param("features", "int", torch="out_features", doc="output features", limit="max_channels"),
        Param("bias", "bool", True, "bias"),
        Param(
            "in_features",
            "int",
            FROM_INPUT,
            doc="checked against the input when given",
            limit="max_channels",
        ),
    )
    accepts = "flat"
    family = LINEAR
    autocast = "lower"
    emit = Emit("nn.Linear", in_channels="in_features", positional=("features",))

    def channels(self, args, c):
        return args["features"]

    def infer(self, x, args, check):
        given = args.get("in_features")
        if given is not None and given != x[0]:
            worked = "" if check.flattened is None else f" = {shape_text(check.flattened, ' x ')}"
            check.error(
                codes.IN_FEATURES,
                f"linear is declared with in_features={given} but its input has "
                f"{x[0]}{worked} features",
                arg="in_features",
                hint="drop `in_features` (it follows the input) or make the input "
                f"{given} wide, e.g. with adaptive_avgpool before flatten",
            )
        return (args["features"],)

    def zeroed(self, args):
        return _weight_and_bias(args)

    def maps_zero(self, args):
        return args.get("bias") is False

    def counts(self, args, x, y):
        out = args["features"]
        return Counts(x[0] * out + (out if args["bias"] else 0), 0, x[0] * out)

    def label(self, args, times="×"):
        return f"linear {args.get('features', '?')}"

    def parameters(self, args, x):
        bias = ((args["features"],),) if args["bias"] else ()
        return ((args["features"], x[0]), *bias)

    def saves(self, args, x, y, device):
        # addmm (mm without bias): mat1 (the input) for the weight's gradient, mat2 (the weight,
        # transposed: a view) for the input's, each only when that gradient is needed.
        return (
            Saved("input", needed_by="weight"),
            Saved("param", (args["features"], x[0]), needed_by="input", name="weight"),
        )


class Dropout(Op):
    name = "dropout"
    doc = "dropout"
    params = (Param("p", "float", 0.5, "p", minimum=0, maximum=1),)
    stateless = True
    keeps_zero = True
    emit = Emit("nn.Dropout")

    def label(self, args, times="×"):
        return f"dropout p={args.get('p')}"

    def storage(self, args, training):
        # the identity in eval mode, and for p = 0 (ATen returns the input itself)
        return "new" if training and args["p"] > 0 else "input"

    def saves(self, args, x, y, device):
        p = args["p"]
        if p == 0:
            return ()
        if p == 1:  # input * zeros({}): the scalar zero
            return (Saved("new", (), needed_by="input", name="zero"),)
        if device == "cuda":  # native_dropout: the boolean mask (result1)
            return (Saved("new", x, "bool", batched=True, needed_by="input", name="mask"),)
        # CPU: input * noise, the noise (bernoulli / (1 - p)) in the input's dtype
        return (Saved("new", x, batched=True, needed_by="input", name="noise"),)


class Identity(Op):
    name = "identity"
    doc = "does nothing; keeps a name in the module tree"
    stateless = True
    keeps_zero = True
    emit = Emit("nn.Identity")

    def storage(self, args, training):
        return "input"  # nn.Identity returns its input

    def saves(self, args, x, y, device):
        return ()


class PadChannels(Op):
    """The parameter-free "option A" shortcut of He et al. 2015 (section 4.2): zero channels
    appended, (channels - C) // 2 before and the rest after, as the widely used
    F.pad(x, (0, 0, 0, 0, planes // 4, planes // 4)) of akamaster/pytorch_resnet_cifar10."""

    name = "pad_channels"
    doc = "zero-pad the channel axis up to `channels`"
    params = (
        Param(
            "channels",
            "int",
            torch="channels",
            doc="output channels (at least the input's)",
            limit="max_channels",
        ),
    )
    accepts = "spatial"
    stateless = True
    keeps_zero = True
    emit = Emit(
        "PadChannels",
        positional=("channels",),
        helper="pad_channels.py.jinja",
        uses=("nn.functional.pad",),
    )

    def channels(self, args, c):
        return args["channels"]

    def infer(self, x, args, check):
        wanted = args["channels"]
        if wanted < x[0]:
            check.error(
                codes.CHANNELS,
                f"pad_channels({wanted}) would shrink its input {shape_text(x)} from {x[0]} "
                f"channels to {wanted}; padding only adds channels",
                arg="channels",
                hint=f"pad to at least {x[0]} channels, or project with `conv({wanted}, 1)`",
            )
            return None
        return (wanted, x[1], x[2])

    def saves(self, args, x, y, device):
        return ()  # constant_pad_nd's backward slices the gradient: it needs only the padding


BUILTIN: tuple[Op, ...] = (
    Conv(),
    BatchNorm(),
    ReLU(),
    Sigmoid(),
    MaxPool(),
    AvgPool(),
    AdaptiveAvgPool(),
    Flatten(),
    Linear(),
    Dropout(),
    Identity(),
    PadChannels(),
)
