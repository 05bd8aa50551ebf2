"""The stage rule: how `stage layerN = R x Block(args)` becomes R block instances.

This is torchvision's `ResNet._make_layer`, in one place for every later stage to share:
- only the first block gets the stage's stride; the others get stride 1 (the block default);
- `dilate=true` trades the stride for dilation: the network's dilation is multiplied by the
  stride and the first block gets stride 1 and the *previous* dilation, the rest the new one;
- whether a block has a projection shortcut is the block's own `shortcut ... when` condition,
  evaluated per instance (torchvision: stride != 1 or in_channels != planes * expansion).
`in_channels` is not decided here: it is the channel count flowing into each block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from resgen import codes
from resgen import expr as E
from resgen import spec as S
from resgen.expr import EvalError, Value


@dataclass(frozen=True)
class StageBlocks:
    """What the stage rule gives a stage: how many blocks, and their arguments."""

    repeats: int
    first: dict[str, S.Expr]  # block arguments of block 0 (network-scope expressions)
    rest: dict[str, S.Expr]  # block arguments of blocks 1 .. repeats-1
    dilation_after: int  # the network's dilation once this stage is built


def apply_stage_rule(
    stage: S.Stage, block: S.Block, env: Mapping[str, Value], dilation: int
) -> StageBlocks:
    """Apply the stage rule. `env` holds network parameters and lets; raises EvalError."""
    repeats = E.evaluate(stage.repeats, env)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise EvalError(
            stage.repeats.span,
            f"a stage repeats its block at least once, not {E.show(repeats)}",
            codes.BAD_REPEATS,
        )
    dilate_expr = stage.arg("dilate")
    dilate = E.evaluate(dilate_expr, env) if dilate_expr is not None else False
    if not isinstance(dilate, bool):
        raise EvalError(
            dilate_expr.span, f"`dilate` is true or false, not {E.show(dilate)}", codes.TYPE
        )
    common = {a.name: a.value for a in stage.args if a.name not in ("stride", "dilate")}
    stride_expr = stage.arg("stride")
    first, rest = dict(common), dict(common)
    after = dilation
    if dilate:
        if stride_expr is None:
            raise EvalError(
                stage.span,
                "`dilate=true` replaces the stage's stride, but the stage has no `stride`",
                codes.BAD_DILATE,
            )
        stride = E.evaluate(stride_expr, env)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise EvalError(
                stride_expr.span,
                f"a dilated stage needs one integer stride, not {E.show(stride)}",
                codes.BAD_DILATE,
            )
        after = dilation * stride
        first["stride"] = E.literal(1, stride_expr.span)
    elif stride_expr is not None:
        first["stride"] = stride_expr
    if block.param("dilation") is not None:
        first["dilation"] = E.literal(dilation, stage.span)
        rest["dilation"] = E.literal(after, stage.span)
    elif after != 1 or dilation != 1:
        raise EvalError(
            stage.block_span,
            f"block `{block.name}` has no `dilation` parameter, "
            f"so this stage cannot run at dilation {max(after, dilation)}",
            codes.BAD_DILATE,
            hint="add `dilation = 1` to the block's parameters and use "
            "it for the padding and dilation of its 3x3 convolutions",
        )
    return StageBlocks(repeats, first, rest, after)


def repeats_alike(block_plan, channels, rule: StageBlocks) -> bool:
    """Whether the blocks after a stage's first one give the channel count they take, so one
    constructor call can repeat (`*[Block(256, 64) for _ in range(n)]`): true for torchvision's
    stages, false for a block whose output grows (DenseNet-like). Code needs it when the repeat
    count is a network parameter. `block_plan` is the block's resgen.plan.BlockPlan."""
    from resgen.plan import block_out

    out = block_out(block_plan, channels, rule.first)
    return E.to_python(block_out(block_plan, out, rule.rest)) == E.to_python(out)
