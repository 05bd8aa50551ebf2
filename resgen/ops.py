"""The built-in layer ops: their .arch signatures and the torch.nn class each becomes.

This table is the single place that says what `conv(64, 3, stride=2)` means. Parameter names are
the .arch names (short, like the paper's tables); `torch` is the keyword of the torch.nn
constructor they map to. Shape rules live in resgen.shapes, code in resgen.codegen.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUIRED = object()  # sentinel default: the argument must be given
FROM_INPUT = object()  # sentinel default: inferred from the incoming tensor


@dataclass(frozen=True)
class OpParam:
    name: str
    type: str  # "int", "size" (int or (h, w) pair), "bool", "float"
    default: object = REQUIRED
    torch: str | None = None  # torch.nn keyword; None when the value is not passed to torch
    doc: str = ""


@dataclass(frozen=True)
class Op:
    name: str
    torch_class: str  # attribute of torch.nn
    params: tuple[OpParam, ...]
    doc: str
    input_channels: str | None = None  # torch keyword that receives the incoming channel count
    stateless: bool = False  # no parameters or buffers: a module that may be reused by name
    # Not a torch.nn class: `torch_class` is a small nn.Module the generated file defines itself,
    # from this template (templates/<helper>), emitted only in modules that use the op.
    helper: str | None = None
    out_channels: str | None = None  # parameter that sets the output channel count

    def param(self, name: str) -> OpParam | None:
        return next((p for p in self.params if p.name == name), None)


def _p(name, type_, default=REQUIRED, torch=None, doc=""):
    return OpParam(name, type_, default, torch, doc)


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op(
            "conv",
            "Conv2d",
            (
                _p("channels", "int", torch="out_channels", doc="output channels"),
                _p("kernel", "size", torch="kernel_size"),
                _p("stride", "size", 1, "stride"),
                _p("padding", "size", 0, "padding"),
                _p("dilation", "size", 1, "dilation"),
                _p("groups", "int", 1, "groups"),
                _p("bias", "bool", True, "bias"),
            ),
            "2-D convolution",
            input_channels="in_channels",
            out_channels="channels",
        ),
        Op(
            "batchnorm",
            "BatchNorm2d",
            (
                _p("channels", "int", FROM_INPUT, doc="checked against the input when given"),
                _p("eps", "float", 1e-5, "eps"),
                _p("momentum", "float", 0.1, "momentum"),
            ),
            "batch normalisation over channels",
            input_channels="num_features",
        ),
        Op("relu", "ReLU", (_p("inplace", "bool", False, "inplace"),), "ReLU", stateless=True),
        Op("sigmoid", "Sigmoid", (), "logistic sigmoid", stateless=True),
        Op(
            "maxpool",
            "MaxPool2d",
            (
                _p("kernel", "size", torch="kernel_size"),
                _p("stride", "size", FROM_INPUT, "stride", doc="defaults to the kernel"),
                _p("padding", "size", 0, "padding"),
                _p("dilation", "size", 1, "dilation"),
                _p("ceil_mode", "bool", False, "ceil_mode"),
            ),
            "max pooling",
            stateless=True,
        ),
        Op(
            "avgpool",
            "AvgPool2d",
            (
                _p("kernel", "size", torch="kernel_size"),
                _p("stride", "size", FROM_INPUT, "stride", doc="defaults to the kernel"),
                _p("padding", "size", 0, "padding"),
                _p("ceil_mode", "bool", False, "ceil_mode"),
                _p("count_include_pad", "bool", True, "count_include_pad"),
            ),
            "average pooling",
            stateless=True,
        ),
        Op(
            "adaptive_avgpool",
            "AdaptiveAvgPool2d",
            (_p("size", "size", torch="output_size"),),
            "adaptive average pooling to a fixed output size",
            stateless=True,
        ),
        Op("flatten", "Flatten", (), "flatten C x H x W to one axis (start_dim=1)", stateless=True),
        Op(
            "linear",
            "Linear",
            (
                _p("features", "int", torch="out_features", doc="output features"),
                _p("bias", "bool", True, "bias"),
                _p("in_features", "int", FROM_INPUT, doc="checked against the input when given"),
            ),
            "fully connected layer",
            input_channels="in_features",
            out_channels="features",
        ),
        Op("dropout", "Dropout", (_p("p", "float", 0.5, "p"),), "dropout", stateless=True),
        Op(
            "identity",
            "Identity",
            (),
            "does nothing; keeps a name in the module tree",
            stateless=True,
        ),
        # The parameter-free "option A" shortcut of He et al. 2015 (section 4.2): zero channels
        # appended, (channels - C) // 2 before and the rest after, as the widely used
        # F.pad(x, (0, 0, 0, 0, planes // 4, planes // 4)) of akamaster/pytorch_resnet_cifar10.
        Op(
            "pad_channels",
            "PadChannels",
            (
                _p(
                    "channels",
                    "int",
                    torch="channels",
                    doc="output channels (at least the input's)",
                ),
            ),
            "zero-pad the channel axis up to `channels`",
            stateless=True,
            helper="pad_channels.py.jinja",
            out_channels="channels",
        ),
    )
}
