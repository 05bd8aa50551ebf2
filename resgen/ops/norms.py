"""Normalisation layers beyond batchnorm (resgen.ops.layers): one class each.

All keep their input's shape and count 0 MACs (torchvision's convention counts convolutions and
linear layers only). Parameters and buffers are counted as torch does (`numel`). Where torch has
the module the generated code uses it (nn.GroupNorm, nn.BatchNorm1d); timm's and torchvision's
others become small helper classes in the generated file (templates/*.py.jinja), with the same
state_dict keys, so their checkpoints load.
"""

from __future__ import annotations

from resgen import codes
from resgen.ops.base import (
    DERIVED,
    FROM_INPUT,
    NORM,
    Buffer,
    Counts,
    Emit,
    Op,
    Param,
    Saved,
    quotient,
)
from resgen.ops.layers import BatchNorm
from resgen.text import shape_text

_EPS_6 = Param("eps", "float", 1e-6, "eps", "added to the variance", minimum=0)


class GroupNorm(Op):
    """nn.GroupNorm(num_groups, num_channels): statistics over each group of C / groups
    channels and H x W. Give the number of groups or the channels per group (timm's
    group_size); with neither, 32 groups (Wu and He 2018; torchvision's GroupNorm(32, C))."""

    name = "groupnorm"
    zero_init = "weight"  # its bias starts at 0 (timm zeroes it as a BN weight)
    keeps_zero = True  # (0 - 0) / sqrt(0 + eps) * weight + 0
    doc = "group normalisation"
    params = (
        Param(
            "groups", "int", DERIVED, "num_groups", "32, or C / group_size", limit="max_channels"
        ),
        Param("group_size", "int", DERIVED, doc="channels per group", limit="max_channels"),
        Param("eps", "float", 1e-5, "eps", "added to the variance", minimum=0),
    )
    accepts = "spatial"
    family = NORM
    zero_init = "weight"
    emit = Emit("nn.GroupNorm", in_channels="num_channels", positional=("groups", "num_channels"))
    default_groups = 32

    def groups(self, args, c):
        if "groups" in args:
            return args["groups"]
        if "group_size" in args:
            return quotient(c, args["group_size"])
        return self.default_groups

    def derived(self, args, c):
        return {"groups": self.groups(args, c)}

    def infer(self, x, args, check):
        c = x[0]
        if "groups" in args and "group_size" in args:
            check.error(
                codes.BAD_ARGUMENT,
                f"groupnorm takes `groups` or `group_size`, not both (groups={args['groups']}, "
                f"group_size={args['group_size']})",
                arg="group_size",
                hint="keep one: the other follows from the channel count",
            )
            return x
        if "group_size" in args:
            size = args["group_size"]
            if c % size:
                check.error(
                    codes.GROUPS,
                    f"input channels {c} are not divisible by group_size={size} ({c} / {size} "
                    f"leaves {c % size})",
                    arg="group_size",
                    hint="group_size must divide the channel count",
                )
            return x
        groups = self.groups(args, c)
        if c % groups:
            check.error(
                codes.GROUPS,
                f"input channels {c} are not divisible by groups={groups} ({c} / {groups} "
                f"leaves {c % groups})",
                arg="groups" if "groups" in args else None,
                hint="groups must divide the channel count"
                + ("" if "groups" in args else f" ({self.name} uses {groups} groups by default)"),
            )
        return x

    def counts(self, args, x, y):
        return Counts(2 * x[0], 0, 0)  # weight and bias

    def parameters(self, args, x):
        return ((x[0],), (x[0],))

    def saves(self, args, x, y, device):
        # native_group_norm_backward(grad, input, mean, rstd, weight, ...): mean and rstd per
        # sample and group, in the parameters' dtype (float32 under autocast).
        groups = (self.groups(args, x[0]),)
        return (
            Saved("input"),
            Saved("param", (x[0],), name="weight"),
            Saved("new", groups, "param", batched=True, name="mean"),
            Saved("new", groups, "param", batched=True, name="rstd"),
        )

    def temporaries(self, args, x, y, device):
        groups = (self.groups(args, x[0]),)  # native_group_norm returns them without grad too
        return (
            Saved("new", groups, "param", batched=True, name="mean"),
            Saved("new", groups, "param", batched=True, name="rstd"),
        )

    def label(self, args, times="×"):
        if "group_size" in args and "groups" not in args:
            return f"groupnorm {args['group_size']}/group"
        return f"groupnorm g{args.get('groups', self.default_groups)}"


class EvoNormS0(GroupNorm):
    """EvoNorm-S0 (Liu et al. 2020, "Evolving Normalization-Activation Layers"), as timm's
    EvoNorm2dS0: a normalisation and activation in one layer, without batch statistics:
    x * sigmoid(v * x) / std(x), then weight and bias, where std is over each sample's group of
    channels and H x W (group norm's statistic, the mean not subtracted). Groups as groupnorm's
    (32, or C / group_size). With apply_act=false timm's layer has no `v` and is the affine
    alone, no normalisation (S0a normalises; see EvoNormS0a)."""

    name = "evonorms0"  # timm's name for it (timm.layers.create_norm_act)
    doc = "EvoNorm-S0: normalisation and swish-like activation in one (timm's EvoNorm2dS0)"
    promotes = True  # x * v and x * weight: float32 under autocast
    params = (
        Param("groups", "int", DERIVED, "groups", "32, or C / group_size", limit="max_channels"),
        Param("group_size", "int", DERIVED, doc="channels per group", limit="max_channels"),
        Param("apply_act", "bool", True, "apply_act", "the activation (and its parameter v)"),
        Param("eps", "float", 1e-5, "eps", "added to the variance", minimum=0),
    )
    emit = Emit(
        "EvoNorm2dS0",
        in_channels="num_features",
        helper="evo_norm_2d_s0.py.jinja",
        imports=("import torch",),
        uses=("nn.Parameter", "torch.ones", "torch.zeros", "torch.sigmoid", "torch.addcmul"),
    )
    normalises_without_act = False  # S0a divides by the std even without the activation

    def infer(self, x, args, check):
        if args["apply_act"] or self.normalises_without_act:
            return super().infer(x, args, check)  # the channels must split into the groups
        return x  # the affine alone: timm's module never forms the groups

    def derived(self, args, c):
        # the module's default is 32 groups: pass a count only when group_size decides it
        return {"groups": quotient(c, args["group_size"])} if "group_size" in args else {}

    def counts(self, args, x, y):
        return Counts((3 if args["apply_act"] else 2) * x[0], 0, 0)

    def parameters(self, args, x):
        return ((x[0],),) * (3 if args["apply_act"] else 2)  # weight, bias (, v)

    def _std(self, args, x, needed_by=None) -> Saved:
        """sqrt's result: one standard deviation per sample and group, in the input's dtype."""
        groups = (self.groups(args, x[0]), 1)
        return Saved("new", groups, batched=True, needed_by=needed_by, name="std")

    def saves(self, args, x, y, device):
        # The last step, torch.addcmul(bias, normalised, weight), keeps both factors.
        weight = Saved("param", (x[0],), name="weight")
        if args["apply_act"]:
            # var keeps its input (a view of x) and sqrt its result, std; x * v keeps x and v,
            # sigmoid its result (the gate); x * gate keeps x and the gate; the division keeps
            # std, and the numerator when std needs a gradient (x requires grad). Under
            # autocast the product with v is float32, and so is all that follows.
            return (
                Saved("input"),
                self._std(args, x),
                Saved("param", (x[0],), name="v"),
                Saved("new", x, "param", batched=True, name="gate"),
                Saved("new", x, "param", batched=True, needed_by="input", name="x * gate"),
                Saved("new", x, "param", batched=True, name="normalised"),
                weight,
            )
        if self.normalises_without_act:  # x / std: all of it only for x's gradient
            return (
                Saved("input", needed_by="input"),
                self._std(args, x, needed_by="input"),
                Saved("new", x, batched=True, name="normalised"),
                weight,
            )
        return (Saved("input"), weight)  # the affine alone: x for the weight's gradient

    def temporaries(self, args, x, y, device):
        # std lives to the end; with the activation two full-size tensors are alive at once
        # before the output exists (x * v and its sigmoid, ..., the quotient and the output)
        if args["apply_act"]:
            return (self._std(args, x), Saved("new", x, "param", batched=True, name="quotient"))
        if self.normalises_without_act:
            return (self._std(args, x), Saved("new", x, batched=True, name="quotient"))
        return ()

    def label(self, args, times="×"):
        groups = (
            f"{args['group_size']}/group"
            if "group_size" in args and "groups" not in args
            else f"g{args.get('groups', self.default_groups)}"
        )
        return f"{self.name} {groups}" + ("" if args.get("apply_act", True) else " no act")


class EvoNormS0a(EvoNormS0):
    """timm's EvoNorm2dS0a (the RegNetZ "_evos" models): EvoNorm-S0 with eps 1e-3 whose std is
    taken before the activation, and which still divides by it with apply_act=false."""

    name = "evonorms0a"
    doc = "EvoNorm-S0a: EvoNorm-S0 that normalises with or without its activation"
    params = (
        *EvoNormS0.params[:3],
        Param("eps", "float", 1e-3, "eps", "added to the variance", minimum=0),
    )
    emit = Emit(
        "EvoNorm2dS0a",
        in_channels="num_features",
        helper="evo_norm_2d_s0a.py.jinja",
        imports=("import torch",),
        uses=("nn.Parameter", "torch.ones", "torch.zeros", "torch.sigmoid", "torch.addcmul"),
    )
    normalises_without_act = True


class FilterResponseNormTlu(Op):
    """Filter response normalisation with a thresholded linear unit (Singh and Krishnan 2020),
    as timm's FilterResponseNormTlu2d: each channel of each sample divided by its root mean
    square over H x W (no mean subtracted, no batch statistics), then weight and bias, then
    max(x, tau) with a learnable threshold tau per channel (none with apply_act=false)."""

    name = "frntlu"  # timm's name for it (timm.layers.create_norm_act)
    doc = "filter response normalisation and TLU (timm's FilterResponseNormTlu2d)"
    promotes = True  # x * weight, max(x, tau): float32 under autocast
    keeps_zero = True  # 0 * rsqrt(0 + eps) * weight + 0, max(0, tau = 0)
    params = (
        Param("apply_act", "bool", True, "apply_act", "the TLU (and its parameter tau)"),
        Param("eps", "float", 1e-5, "eps", "added to the mean square", minimum=0),
    )
    accepts = "spatial"
    family = NORM
    zero_init = "weight"  # the bias and tau start at 0: max(0, 0)
    emit = Emit(
        "FilterResponseNormTlu2d",
        in_channels="num_features",
        helper="filter_response_norm_tlu_2d.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.Parameter",
            "torch.ones",
            "torch.zeros",
            "torch.rsqrt",
            "torch.addcmul",
            "torch.maximum",
        ),
    )

    def counts(self, args, x, y):
        return Counts((3 if args["apply_act"] else 2) * x[0], 0, 0)

    def parameters(self, args, x):
        return ((x[0],),) * (3 if args["apply_act"] else 2)  # weight, bias (, tau)

    def saves(self, args, x, y, device):
        # x.square() keeps x, rsqrt its result (per sample and channel), x * rsqrt both: for
        # x's gradient only. addcmul(bias, normalised, weight) keeps both factors; maximum
        # keeps both of its operands (float32 under autocast, after the float32 weight).
        saved = (
            Saved("input", needed_by="input"),
            Saved("new", (x[0], 1, 1), batched=True, needed_by="input", name="rsqrt"),
            Saved("new", x, batched=True, name="normalised"),
            Saved("param", (x[0],), needed_by="input", name="weight"),
        )
        if not args["apply_act"]:
            return saved
        return (
            *saved,
            Saved("new", x, "param", batched=True, name="affine"),
            Saved("param", (x[0],), name="tau"),
        )

    def temporaries(self, args, x, y, device):
        # alive with the output: the affine result (maximum's input), else the normalised x
        if args["apply_act"]:
            return (Saved("new", x, "param", batched=True, name="affine"),)
        return (Saved("new", x, batched=True, name="normalised"),)

    def label(self, args, times="×"):
        return self.name + ("" if args.get("apply_act", True) else " no act")


class _ChannelNorm(Op):
    """A norm over the channels of C x H x W with one learnable vector per parameter name."""

    zero_init = "weight"  # the output is normalised x * weight (+ a bias that starts at 0)
    keeps_zero = True

    params = (_EPS_6,)
    accepts = "spatial"
    family = NORM
    zero_init = "weight"
    vectors = 1  # learnable C-vectors: weight (and bias)

    def counts(self, args, x, y):
        return Counts(self.vectors * x[0], 0, 0)

    def parameters(self, args, x):
        return ((x[0],),) * self.vectors


class LayerNorm2d(_ChannelNorm):
    """timm's LayerNorm2d: nn.LayerNorm over C at each position of N x C x H x W. ConvNeXt's
    channels-last `norm` (LayerNorm on N x H x W x C) is the same function with the same keys
    (weight, bias), so it is written with this op too."""

    name = "layernorm2d"
    doc = "layer normalisation over the channels at each position"
    emit = Emit(
        "LayerNorm2d",
        in_channels="num_channels",
        helper="layer_norm_2d.py.jinja",
        uses=("nn.LayerNorm", "nn.functional.layer_norm"),
    )
    vectors = 2

    def saves(self, args, x, y, device):
        # native_layer_norm_backward(grad, input, mean, rstd, weight, bias): the input (a
        # permuted view of it), and mean and rstd per position in the parameters' dtype.
        c, positions = (x[0],), (x[1], x[2])
        return (
            Saved("input"),
            Saved("param", c, name="weight"),
            Saved("param", c, name="bias"),
            Saved("new", positions, "param", batched=True, name="mean"),
            Saved("new", positions, "param", batched=True, name="rstd"),
        )

    def temporaries(self, args, x, y, device):
        positions = (x[1], x[2])  # native_layer_norm returns them with or without grad
        return (
            Saved("new", positions, "param", batched=True, name="mean"),
            Saved("new", positions, "param", batched=True, name="rstd"),
        )


def _scaled_saves(x) -> tuple[Saved, ...]:
    """RmsNorm2d's and SimpleNorm2d's x * rsqrt(stat(x) + eps) * weight: the statistic saves
    the input (pow, var), rsqrt and the product keep the per-position factor and the input,
    and the product with the weight keeps the normalised x (for the weight's gradient)."""
    return (
        Saved("input"),
        Saved("new", (1, x[1], x[2]), batched=True, name="rsqrt"),
        Saved("param", (x[0],), name="weight"),
        Saved("new", x, batched=True, needed_by="weight", name="normalised"),
    )


class RmsNorm2d(_ChannelNorm):
    """timm's RmsNorm2d: x / sqrt(mean_C(x^2) + eps) * weight, at each position."""

    name = "rmsnorm2d"
    promotes = True  # x * weight: float32 under autocast
    doc = "RMS normalisation over the channels at each position"
    emit = Emit(
        "RmsNorm2d",
        in_channels="channels",
        helper="rms_norm_2d.py.jinja",
        imports=("import torch",),
        uses=("nn.Parameter", "torch.ones", "torch.rsqrt", "torch.mean"),
    )

    def saves(self, args, x, y, device):
        return _scaled_saves(x)

    def temporaries(self, args, x, y, device):
        return (Saved("new", x, batched=True, name="normalised"),)  # alive with the output


class SimpleNorm2d(_ChannelNorm):
    """timm's SimpleNorm2d: x / sqrt(var_C(x) + eps) * weight, at each position, with the
    unbiased variance (divided by C - 1, torch.var's default), so it needs 2 channels."""

    name = "simplenorm2d"
    promotes = True  # x * weight: float32 under autocast
    doc = "scale normalisation by the channels' unbiased variance at each position"
    emit = Emit(
        "SimpleNorm2d",
        in_channels="channels",
        helper="simple_norm_2d.py.jinja",
        imports=("import torch",),
        uses=("nn.Parameter", "torch.ones", "torch.rsqrt", "torch.var"),
    )

    def saves(self, args, x, y, device):
        return _scaled_saves(x)

    def temporaries(self, args, x, y, device):
        return (Saved("new", x, batched=True, name="normalised"),)  # alive with the output

    def infer(self, x, args, check):
        if x[0] < 2:
            check.error(
                codes.CHANNELS,
                f"simplenorm2d of {shape_text(x)}: its unbiased variance over {x[0]} channel "
                f"divides by C - 1 = {x[0] - 1}, so every output would be NaN",
                hint="use it where there are at least 2 channels, or use rmsnorm2d",
            )
        return x


class GlobalResponseNorm(_ChannelNorm):
    """ConvNeXt-V2's GRN (timm's GlobalResponseNorm, channels first): weight and bias start at
    zero, so zeroing them is its initial state, not a way to zero its output (no zero_init)."""

    name = "grn"
    promotes = True  # x * weight: float32 under autocast
    zero_init = None  # x + gamma * (x * Nx) + beta: zeros give x back, not zeros
    doc = "global response normalisation (ConvNeXt-V2)"
    zero_init = None
    emit = Emit(
        "GlobalResponseNorm",
        in_channels="channels",
        helper="global_response_norm.py.jinja",
        imports=("import torch",),
        uses=("nn.Parameter", "torch.zeros", "torch.addcmul"),
    )
    vectors = 2

    def saves(self, args, x, y, device):
        # norm keeps its input and result, the division both operands, x * relative both, and
        # addcmul the weight and x * relative (the final x + ... nothing).
        c = (x[0], 1, 1)
        return (
            Saved("input"),
            Saved("new", c, batched=True, name="norms"),
            Saved("new", (1, 1, 1), batched=True, name="denominator"),
            Saved("new", c, batched=True, name="relative"),
            Saved("param", (x[0],), name="weight"),
            Saved("new", x, batched=True, name="x * relative"),
        )

    def temporaries(self, args, x, y, device):
        c = (x[0], 1, 1)  # norms and relative live to the end; addcmul's result with the output
        return (
            Saved("new", c, batched=True, name="norms"),
            Saved("new", c, batched=True, name="relative"),
            Saved("new", x, "param", batched=True, name="addcmul"),  # promoted to the params
        )


class FrozenBatchNorm(Op):
    """torchvision.ops.FrozenBatchNorm2d: a batch norm whose weight, bias and running
    statistics are all buffers (4 C; no num_batches_tracked), for detection backbones."""

    name = "frozen_batchnorm"
    promotes = True  # x * scale, of float32 buffers under autocast: float32
    keeps_zero = True  # weight 1, bias 0, mean 0, var 1: buffers, nothing to zero
    doc = "batch normalisation with frozen statistics and affine parameters"
    params = (Param("eps", "float", 1e-5, "eps", "added to the variance", minimum=0),)
    accepts = "spatial"
    family = NORM
    emit = Emit(
        "FrozenBatchNorm2d",
        in_channels="num_features",
        helper="frozen_batch_norm_2d.py.jinja",
        imports=("import torch",),
        uses=("torch.ones", "torch.zeros", "torch.rsqrt"),
    )

    def counts(self, args, x, y):
        return Counts(0, 4 * x[0], 0)

    def buffers(self, args, x):
        return (Buffer((x[0],)),) * 4  # weight, bias, running_mean, running_var

    def saves(self, args, x, y, device):
        # x * scale keeps scale (the buffers require no grad, so not x); + shift keeps nothing
        return (Saved("new", (x[0],), "param", needed_by="input", name="scale"),)

    def temporaries(self, args, x, y, device):
        c = (x[0],)
        return (
            Saved("new", c, "param", name="scale"),
            Saved("new", c, "param", name="shift"),
            Saved("new", x, "param", batched=True, name="x * scale"),  # promoted to the buffers
        )


class BatchNorm1d(BatchNorm):
    """nn.BatchNorm1d on flat features (the face-recognition ResNets' embedding head); counted
    as batchnorm."""

    name = "batchnorm1d"
    doc = "batch normalisation of flat features"
    params = (
        Param(
            "features",
            "int",
            FROM_INPUT,
            doc="checked against the input when given",
            limit="max_channels",
        ),
        Param("eps", "float", 1e-5, "eps", "added to the variance", minimum=0),
        Param("momentum", "float", 0.1, "momentum", minimum=0, maximum=1),
    )
    accepts = "flat"
    family = NORM
    zero_init = "weight"
    emit = Emit("nn.BatchNorm1d", in_channels="num_features")

    def infer(self, x, args, check):
        given = args.get("features")
        if given is not None and given != x[0]:
            worked = "" if check.flattened is None else f" = {shape_text(check.flattened, ' x ')}"
            check.error(
                codes.CHANNELS,
                f"batchnorm1d is declared for {given} features but its input has {x[0]}{worked}",
                arg="features",
                hint=f"write `batchnorm1d` (features follow the input) or `batchnorm1d({x[0]})`",
            )
        return x


BUILTIN: tuple[Op, ...] = (
    GroupNorm(),
    EvoNormS0(),
    EvoNormS0a(),
    FilterResponseNormTlu(),
    LayerNorm2d(),
    RmsNorm2d(),
    SimpleNorm2d(),
    GlobalResponseNorm(),
    FrozenBatchNorm(),
    BatchNorm1d(),
)
