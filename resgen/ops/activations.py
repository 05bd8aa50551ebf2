"""Activations beyond ReLU and the sigmoid (resgen.ops.layers): one class each, all torch.nn.

Each is element-wise: the shape stays, and MACs count 0 (torchvision's convention counts
convolutions and linear layers only). Only `prelu` has parameters. `inplace` is offered exactly
where the torch module takes it (nn.Tanh and nn.GELU do not).
"""

from __future__ import annotations

from resgen import codes
from resgen.ops.base import ACT, SAVES_INPUT, Counts, Emit, Op, Param, Saved

_INPLACE = Param("inplace", "bool", False, "inplace", "overwrite the input (torch's inplace)")


class _Activation(Op):
    keeps_zero = True  # f(0) = 0 (hardsigmoid, 0.5, says otherwise)
    family = ACT
    stateless = True

    def saves(self, args, x, y, device):
        # derivatives.yaml: silu, gelu, hardswish, hardsigmoid and mish backward from `self`.
        # Their in-place forms (silu_, ...) have no formula of their own: autograd saves a
        # clone of the input before overwriting it (`original_self`), a new tensor.
        if args.get("inplace"):
            return (Saved("new", x, batched=True, name="original_self"),)
        return SAVES_INPUT


class SiLU(_Activation):
    name = "silu"
    doc = "SiLU (swish), x * sigmoid(x)"
    params = (_INPLACE,)
    emit = Emit("nn.SiLU")


class GELU(_Activation):
    name = "gelu"
    doc = "GELU, exact: x * Phi(x) (Hendrycks and Gimpel 2016)"
    emit = Emit("nn.GELU")


class GELUTanh(_Activation):
    """timm's `gelu_tanh` (GELUTanh): torch's GELU with approximate="tanh"."""

    name = "gelu_tanh"
    doc = "GELU, tanh approximation"
    emit = Emit("nn.GELU", keywords=(("approximate", "tanh"),))


class _NegativeSide(_Activation):
    """An activation whose negative side is scaled by an argument (`slope`, `alpha`). torch
    computes it in place only for a non-negative factor: backward refuses a negative one."""

    factor = ""

    def infer(self, x, args, check):
        value = args.get(self.factor)
        if args.get("inplace") and value is not None and value < 0:
            check.error(
                codes.BAD_ARGUMENT,
                f"{self.name} with inplace=true and {self.factor}={value:g}: torch cannot "
                f"compute its gradient in place for a negative {self.factor}",
                arg="inplace",
                hint=f"write inplace=false, or use a {self.factor} of at least 0",
            )
        return x

    def saves(self, args, x, y, device):
        # leaky_relu_ and elu_ have their own formulas from `result` (hence the non-negative
        # factor); out of place, leaky_relu_backward and elu_backward read `self`.
        return (Saved("output", name="result"),) if args.get("inplace") else SAVES_INPUT


class LeakyReLU(_NegativeSide):
    name = "leaky_relu"
    doc = "leaky ReLU: x for x >= 0, slope * x below"
    params = (Param("slope", "float", 0.01, "negative_slope", "the slope for x < 0"), _INPLACE)
    emit = Emit("nn.LeakyReLU")
    factor = "slope"

    def label(self, args, times="×"):
        return f"leaky_relu {args.get('slope', '?'):g}"


class ELU(_NegativeSide):
    name = "elu"
    doc = "ELU: x for x > 0, alpha * (exp(x) - 1) below"
    params = (Param("alpha", "float", 1.0, "alpha", "the saturation value for x -> -inf"), _INPLACE)
    emit = Emit("nn.ELU")
    factor = "alpha"


class Hardswish(_Activation):
    name = "hardswish"
    doc = "hard swish, x * relu6(x + 3) / 6 (MobileNetV3)"
    params = (_INPLACE,)
    emit = Emit("nn.Hardswish")


class Hardsigmoid(_Activation):
    name = "hardsigmoid"
    keeps_zero = False  # relu6(x + 3) / 6 is 0.5 at 0
    doc = "hard sigmoid, relu6(x + 3) / 6 (MobileNetV3)"
    params = (_INPLACE,)
    emit = Emit("nn.Hardsigmoid")


class Mish(_Activation):
    name = "mish"
    doc = "Mish, x * tanh(softplus(x)) (Misra 2019)"
    params = (_INPLACE,)
    emit = Emit("nn.Mish")


class Tanh(_Activation):
    name = "tanh"
    doc = "hyperbolic tangent"
    emit = Emit("nn.Tanh")

    def saves(self, args, x, y, device):
        return (Saved("output", name="result"),)  # tanh_backward(grad, result)


class PReLU(Op):
    """nn.PReLU: a learnable slope for x < 0, one shared (nn.PReLU()) or one per channel
    (nn.PReLU(C), the face-recognition ResNets' choice). Parameters: 1 or C."""

    name = "prelu"
    keeps_zero = True  # max(0, x) + a * min(0, x)
    doc = "parametric ReLU: a learnable slope for x < 0"
    params = (
        Param("per_channel", "bool", False, doc="one slope per channel instead of one shared"),
        Param("init", "float", 0.25, "init", "the slopes' initial value"),
    )
    family = ACT
    autocast = "lower"  # prelu is on torch.autocast's lower-precision list (CPU and CUDA)
    emit = Emit("nn.PReLU", in_channels="num_parameters", in_channels_if="per_channel")

    def counts(self, args, x, y):
        return Counts(x[0] if args["per_channel"] else 1, 0, 0)

    def parameters(self, args, x):
        return ((x[0] if args["per_channel"] else 1,),)

    def saves(self, args, x, y, device):
        # _prelu_kernel_backward(grad, self, weight): the input and the (reshaped) weight
        return (Saved("input"), Saved("param", self.parameters(args, x)[0], name="weight"))

    def label(self, args, times="×"):
        return "prelu per channel" if args.get("per_channel") else "prelu"


BUILTIN: tuple[Op, ...] = (
    SiLU(),
    GELU(),
    GELUTanh(),
    LeakyReLU(),
    ELU(),
    Hardswish(),
    Hardsigmoid(),
    Mish(),
    Tanh(),
    PReLU(),
)
