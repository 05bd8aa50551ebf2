"""Channel attention and per-sample scaling: ECA's gate (timm's EcaModule), global context
attention (timm's GlobalContext, GCNet), a constant scale (the NF-ResNets' alpha and beta) and
stochastic depth (timm's DropPath). Each keeps its input's shape; only the two attention ops
have parameters and count MACs (their convolutions and, for global context, the matrix product
that pools the positions)."""

from __future__ import annotations

import math

from resgen import codes
from resgen.ops.base import DERIVED, OTHER, Counts, Emit, Op, Param, Saved


def eca_kernel(channels: int, gamma: float, beta: float) -> int:
    """ECA-Net's kernel for `channels` (Wang et al. 2020, eq. 12), written as timm's EcaModule
    computes it, math.log(C, 2) included (it rounds differently from log2 for some C):
    t = int(|log2(C) + beta| / gamma), k = max(t if t is odd else t + 1, 3)."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class Eca(Op):
    """timm's EcaModule: the gate x * sigmoid(conv1d(mean_HW(x))), its Conv1d (1 -> 1 channel,
    no bias, zero padding (k - 1) / 2) sliding over the C pooled values. The kernel follows the
    channel count unless given (the pruned ECA-ResNets fix it)."""

    name = "eca"
    keeps_zero = True  # x * sigmoid(...): zero for a zero x
    doc = "efficient channel attention: a 1-D convolution across channels gates them"
    params = (
        Param(
            "kernel", "int", DERIVED, "kernel_size", "odd; from C, gamma, beta", limit="max_kernel"
        ),
        Param("gamma", "float", 2.0, "gamma", "divides log2(C) + beta"),
        Param("beta", "float", 1.0, "beta", "added to log2(C)"),
    )
    accepts = "spatial"
    family = OTHER
    # Its Conv1d runs in lower precision under autocast, on the pooled C values (already in
    # the low precision after a convolution): its weight's copy is saved.
    autocast = "lower"
    emit = Emit(
        "EcaModule",
        in_channels="channels",
        helper="eca_module.py.jinja",
        imports=("import math", "import torch"),
        uses=("math.log", "nn.Conv1d", "torch.sigmoid"),
    )

    def kernel(self, args, c: int) -> int | None:
        if "kernel" in args:
            return args["kernel"]
        if args.get("gamma", 2.0) == 0:
            return None
        return eca_kernel(c, args["gamma"], args["beta"])

    def infer(self, x, args, check):
        if "kernel" in args and args["kernel"] % 2 == 0:
            k = args["kernel"]
            check.error(
                codes.BAD_ARGUMENT,
                f"eca's kernel must be odd to keep the {x[0]} channels (padding (k - 1) / 2), "
                f"but it is {k}: the gate would have {x[0] + 2 * ((k - 1) // 2) - k + 1}",
                arg="kernel",
                hint=f"use {k - 1} or {k + 1}",
            )
        elif "kernel" not in args and args.get("gamma") == 0:
            check.error(
                codes.BAD_ARGUMENT,
                "eca's kernel divides by gamma, which is 0",
                arg="gamma",
                hint="ECA-Net uses gamma=2, beta=1",
            )
        return x

    def counts(self, args, x, y):
        k = self.kernel(args, x[0])
        return Counts(k or 0, 0, x[0] * (k or 0))  # the Conv1d: C outputs of k taps each

    def label(self, args, times="×"):
        return "eca" if "kernel" not in args else f"eca k{args['kernel']}"

    def parameters(self, args, x):
        k = self.kernel(args, x[0])
        return ((1, 1, k),) if k else ()

    def saves(self, args, x, y, device):
        # mean keeps nothing; conv1d keeps the pooled values and its weight; sigmoid its
        # result, the gate, which x * gate keeps with x
        pooled = (1, x[0])
        return (
            Saved("input"),
            Saved("new", pooled, batched=True, name="pooled"),
            *(Saved("param", shape, name="conv.weight") for shape in self.parameters(args, x)),
            Saved("new", pooled, batched=True, name="gate"),
        )

    def temporaries(self, args, x, y, device):
        # The most is live at x * gate (the gate and the output) or, for a 1 x 1 input whose
        # output is no larger than the gate, as sigmoid returns: pooled, conv1d's and gate.
        pooled = (1, x[0])
        gate = Saved("new", pooled, batched=True, name="gate")
        if x[1] * x[2] == 1:
            return (Saved("new", pooled, batched=True, name="pooled"), gate)
        return (gate,)


def context_channels(channels: int, rd_ratio: float, rd_divisor: int) -> int:
    """The width of GlobalContext's MLP as timm computes it: make_divisible(channels *
    rd_ratio, rd_divisor, round_limit=0.), the multiple of rd_divisor nearest C * rd_ratio
    (halves up), at least rd_divisor."""
    scaled = channels * rd_ratio
    return max(rd_divisor, int(scaled + rd_divisor / 2) // rd_divisor * rd_divisor)


class GlobalContext(Op):
    """timm's GlobalContext (Cao et al. 2019, GCNet: "Non-local Networks Meet Squeeze-Excitation
    Networks and Beyond"): a context vector per sample, the input's positions averaged with
    softmax weights from a 1x1 conv to one channel (`conv_attn`; the plain mean with
    use_attn=false), goes through timm's ConvMlp (1x1 conv to rd channels, LayerNorm over them
    (eps 1e-6), ReLU, 1x1 conv back: `mlp_add`, `mlp_scale`), and is fused with the input: added
    (fuse_add) and/or as a sigmoid gate (fuse_scale, the default; scale first when both). timm's
    'gca' attention of the ByobNets is global_context(fuse_add=true, fuse_scale=false). Keeps
    the input's shape. MACs: conv_attn's C x H x W, the weighted sum's C x H x W (a matrix
    product) and 2 x C x rd per MLP."""

    name = "global_context"
    doc = "global context attention (GCNet): a softmax-pooled context added to or gating the input"
    params = (
        Param("use_attn", "bool", True, "use_attn", "softmax-weighted pooling (else the mean)"),
        Param("fuse_add", "bool", False, "fuse_add", "add the context MLP's output"),
        Param("fuse_scale", "bool", True, "fuse_scale", "gate by sigmoid of a context MLP"),
        Param("rd_ratio", "float", 0.125, "rd_ratio", "the MLP's width over C", above=0),
        Param(
            "rd_channels",
            "int",
            DERIVED,
            "rd_channels",
            "the MLP's width; from C, rd_ratio, rd_divisor",
            limit="max_channels",
        ),
        Param("rd_divisor", "int", 1, "rd_divisor", "the MLP's width is a multiple of it"),
    )
    accepts = "spatial"
    family = OTHER
    emit = Emit(
        "GlobalContext",
        in_channels="channels",
        helper="global_context.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.Conv2d",
            "nn.LayerNorm",
            "nn.ReLU",
            "nn.init.kaiming_normal_",
            "nn.init.zeros_",
            "torch.sigmoid",
        ),
    )

    def rd(self, args, c: int) -> int:
        if "rd_channels" in args:
            return args["rd_channels"]
        return context_channels(c, args.get("rd_ratio", 0.125), args.get("rd_divisor", 1))

    def mlps(self, args) -> int:
        return int(bool(args.get("fuse_add", False))) + int(bool(args.get("fuse_scale", True)))

    def maps_zero(self, args):
        # x * sigmoid(...) is zero for a zero x; x + mlp(context) adds fc2's bias
        return not args.get("fuse_add", False)

    def counts(self, args, x, y):
        c, positions = x[0], x[1] * x[2]
        rd = self.rd(args, c)
        attn = args.get("use_attn", True)
        mlp = 2 * c * rd + rd + 2 * rd + c  # fc1, norm, fc2: weights and biases
        params = (c + 1 if attn else 0) + self.mlps(args) * mlp
        macs = (2 * c * positions if attn else 0) + self.mlps(args) * 2 * c * rd
        return Counts(params, 0, macs)

    def label(self, args, times="×"):
        fuse = "+".join(
            name
            for name, on in (
                ("scale", args.get("fuse_scale", True)),
                ("add", args.get("fuse_add", False)),
            )
            if on
        )
        return f"global context {fuse}" if fuse else "global context"

    def parameters(self, args, x):
        c = x[0]
        rd = self.rd(args, c)
        attn = ((1, c, 1, 1), (1,)) if args.get("use_attn", True) else ()
        mlp = ((rd, c, 1, 1), (rd,), (rd,), (rd,), (c, rd, 1, 1), (c,))
        return attn + mlp * self.mlps(args)

    def saves(self, args, x, y, device):
        c, (h, w) = x[0], x[1:]
        rd = self.rd(args, c)
        saved = []
        if args.get("use_attn", True):
            # conv_attn keeps x and its weight; softmax its result, which the weighted sum
            # (a matrix product of views of x and of it) keeps with x
            saved += [
                Saved("input"),
                Saved("param", (1, c, 1, 1), name="conv_attn.weight"),
                Saved("new", (1, h * w), batched=True, name="softmax"),
            ]
        # the context (the mean keeps nothing), which each MLP's first conv keeps
        saved.append(Saved("new", (c, 1, 1), batched=True, name="context"))
        for mlp in ("mlp_scale", "mlp_add")[: self.mlps(args)]:
            saved += [
                Saved("param", (rd, c, 1, 1), name=f"{mlp}.fc1.weight"),
                Saved("new", (rd, 1, 1), batched=True, name=f"{mlp}.fc1"),  # the norm's input
                Saved("param", (rd,), name=f"{mlp}.norm.weight"),
                Saved("param", (rd,), name=f"{mlp}.norm.bias"),
                Saved("new", (1, 1), "param", batched=True, name=f"{mlp}.norm.mean"),
                Saved("new", (1, 1), "param", batched=True, name=f"{mlp}.norm.rstd"),
                Saved("new", (rd, 1, 1), batched=True, name=f"{mlp}.act"),  # ReLU's, fc2's input
                Saved("param", (c, rd, 1, 1), name=f"{mlp}.fc2.weight"),
            ]
        if args.get("fuse_scale", True):
            # sigmoid keeps the gate, x * gate keeps x (already kept by conv_attn) and the gate
            if not args.get("use_attn", True):
                saved.append(Saved("input"))
            saved.append(Saved("new", (c, 1, 1), batched=True, name="gate"))
        return tuple(saved)

    def temporaries(self, args, x, y, device):
        # Held with the output at its last step: the softmax weights and the context (locals of
        # forward()), and the gate (x * gate) or the added MLP's output and, after a scale, the
        # gated input (x * gate + mlp).
        c, (h, w) = x[0], x[1:]
        vector = (c, 1, 1)
        held = [Saved("new", vector, batched=True, name="context")]
        if args.get("use_attn", True):
            held.append(Saved("new", (1, h * w), batched=True, name="softmax"))
        if args.get("fuse_add", False):
            held.append(Saved("new", vector, batched=True, name="mlp_add"))
            if args.get("fuse_scale", True):
                held.append(Saved("new", x, batched=True, name="scaled"))
        elif args.get("fuse_scale", True):
            held.append(Saved("new", vector, batched=True, name="gate"))
        return tuple(held)


class Scale(Op):
    """A constant factor (the NF-ResNets' alpha on the residual branch and beta on the input):
    x * factor. No parameters, 0 MACs (an element-wise product, like an activation)."""

    name = "scale"
    keeps_zero = True
    doc = "multiply by a constant"
    params = (Param("factor", "float", torch="factor", doc="the constant"),)
    family = OTHER
    stateless = True
    emit = Emit("Scale", positional=("factor",), helper="scale.py.jinja")

    def label(self, args, times="×"):
        factor = args.get("factor")
        return "scale" if factor is None else f"scale {times}{factor:g}"

    def saves(self, args, x, y, device):
        return ()  # mul by a Python number keeps no tensor


class DropPath(Op):
    """timm's DropPath (stochastic depth, Huang et al. 2016): in training each sample is
    zeroed with probability p, the rest divided by 1 - p; the identity in eval mode. No state."""

    name = "drop_path"
    keeps_zero = True
    doc = "stochastic depth: drop whole samples of a residual branch in training"
    params = (
        Param("p", "float", 0.0, "drop_prob", "probability of dropping a sample", 0, 1),
        Param("scale_by_keep", "bool", True, "scale_by_keep", "divide the kept by 1 - p"),
    )
    family = OTHER
    stateless = True
    emit = Emit("DropPath", positional=("p",), helper="drop_path.py.jinja")

    def label(self, args, times="×"):
        p = args.get("p")
        return "drop_path" if p is None else f"drop_path p={p:g}"

    def storage(self, args, training):
        # forward() returns x itself for p = 0 and in eval mode
        return "new" if training and args["p"] > 0 else "input"

    def saves(self, args, x, y, device):
        if args["p"] == 0:
            return ()
        # x * mask keeps the per-sample mask (x.new_empty: the input's dtype) for x's gradient
        mask = (1,) * len(x)  # [N, 1, ...]: one value per sample
        return (Saved("new", mask, batched=True, needed_by="input", name="mask"),)


BUILTIN: tuple[Op, ...] = (Eca(), GlobalContext(), Scale(), DropPath())
