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


BUILTIN: tuple[Op, ...] = (LayerScale(),)
