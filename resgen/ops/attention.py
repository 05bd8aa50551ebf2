"""Channel attention and per-sample scaling: ECA's gate (timm's EcaModule), a constant scale
(the NF-ResNets' alpha and beta) and stochastic depth (timm's DropPath). Each keeps its input's
shape; only ECA has parameters, and its Conv1d is the only one that counts MACs."""

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


BUILTIN: tuple[Op, ...] = (Eca(), Scale(), DropPath())
