"""Ops that scale their input by a learned parameter belonging to the enclosing block (not to a
submodule: timm stores them on the block, so its keys are `stages.0.blocks.0.gamma`)."""

from __future__ import annotations

from resgen.ops.base import OTHER, Counts, Emit, Op, Param


class LayerScale(Op):
    """ConvNeXt's layer scale (Touvron et al. 2021, CaiT): a per-channel gain initialised to a
    small value, `x * gamma` with gamma of shape (C,), stored as the block's own parameter
    (timm's ConvNeXtBlock: `x.mul(self.gamma.reshape(1, -1, 1, 1))`)."""

    name = "layer_scale"
    doc = "a learned per-channel scale, the enclosing block's own parameter (ConvNeXt's gamma)"
    params = (Param("init", "float", 1e-6, doc="initial value of every channel's gain"),)
    accepts = "spatial"
    family = OTHER
    keeps_zero = True  # x * gamma
    promotes = True  # a bfloat16 x times the float32 gamma is float32 (autocast)
    emit = Emit(
        "nn.Parameter",
        imports=("import torch",),
        uses=("torch.full",),
        owned="nn.Parameter(torch.full(({channels},), {init}))",
        apply="{x} * {self}.reshape(1, -1, 1, 1)",
    )

    def counts(self, args, x, y):
        return Counts(params=x[0])


class SkipInit(Op):
    """SkipInit (De & Smith 2020, "Batch Normalization Biases Residual Blocks Towards the
    Identity Function in Deep Networks"): one learnable scalar gain, initialised to 0, that
    multiplies a residual branch so that each block starts as its shortcut. Stored as the
    enclosing block's own 0-d parameter (timm's NormFreeBlock: `skipinit_gain`, a
    `torch.tensor(0.)`; a layer named `skipinit_gain` gives its key). timm multiplies in place
    (`out.mul_(skipinit_gain)`); `x * gain` is the same value without overwriting x."""

    name = "skipinit"
    doc = "a learned scalar gain on a residual branch, initially 0 (SkipInit)"
    params = (Param("init", "float", 0.0, doc="the gain's initial value"),)
    family = OTHER
    keeps_zero = True  # x * gain
    # not `promotes`: a 0-d tensor does not take part in type promotion against a dimensioned
    # one, so a bfloat16 x times the float32 gain stays bfloat16 under autocast
    emit = Emit(
        "nn.Parameter",
        imports=("import torch",),
        uses=("torch.tensor",),
        owned="nn.Parameter(torch.tensor({init}))",
        apply="{x} * {self}",
    )

    def counts(self, args, x, y):
        return Counts(params=1)

    def parameters(self, args, x):
        return ((),)  # a 0-d tensor


BUILTIN: tuple[Op, ...] = (LayerScale(), SkipInit())
