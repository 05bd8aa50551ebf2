"""The stage rule: how `stage layerN = R x Block(args)` becomes R block instances, and a stage of
several runs (`1 x Bottleneck(1024, stride=2) + 1 x SelfAttnBlock(1024)`, timm's byobnet stages)
one sequence of blocks.

This is torchvision's `ResNet._make_layer`, in one place for every later stage to share:
- only the first block gets the stage's stride; the others get stride 1 (the block default);
  in a stage of several runs the first block is the first run's first block, and only the
  first run may write `stride` or `dilate` (resgen.resolve reports it elsewhere), as timm's
  create_byob_stages gives `stride if block_idx == 0 else 1` over the stage's blocks;
- `dilate=true` trades the stride for dilation: the network's dilation is multiplied by the
  stride and the first block gets stride 1 and the *previous* dilation, the rest the new one;
- whether a block has a projection shortcut is the block's own `shortcut ... when` condition,
  evaluated per instance (torchvision: stride != 1 or in_channels != planes * expansion).
`in_channels` is not decided here: it is the channel count flowing into each block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from resgen import codes
from resgen import expr as E
from resgen import spec as S
from resgen.expr import EvalError, Value


@dataclass(frozen=True)
class StageBlocks:
    """What the stage rule gives one run of a stage: how many blocks, and their arguments."""

    repeats: int
    first: dict[str, S.Expr]  # block arguments of the run's block 0 (network-scope expressions)
    rest: dict[str, S.Expr]  # block arguments of its blocks 1 .. repeats-1
    dilation_after: int  # the network's dilation once this run is built
    run: S.Run | None = None  # the run (its block type: run.block)
    start: int = 0  # the position of the run's first block in its stage


def stage_runs(
    stage: S.Stage, blocks: Mapping[str, S.Block], env: Mapping[str, Value], dilation: int
) -> tuple[StageBlocks, ...]:
    """The stage rule over each run of a stage, in order: the first run's first block gets the
    stage's stride (and the dilation before it), every later block stride 1 and the dilation
    after it. `blocks` maps each run's block name to its type; raises EvalError (an unknown
    block is resolve's error, KeyError here)."""
    rules: list[StageBlocks] = []
    start = 0
    for run in stage.runs:
        rule = apply_stage_rule(run, blocks[run.block], env, dilation)
        rules.append(dataclasses.replace(rule, start=start))
        start += rule.repeats
        dilation = rule.dilation_after
    return tuple(rules)


def apply_stage_rule(
    run: S.Run, block: S.Block, env: Mapping[str, Value], dilation: int
) -> StageBlocks:
    """Apply the stage rule to one run (`stage_runs` applies it to each run of a stage; a
    later run has no `stride` or `dilate`, so all its blocks get `dilation`). `env` holds
    network parameters and lets; raises EvalError."""
    repeats = E.evaluate(run.repeats, env)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise EvalError(
            run.repeats.span,
            f"a stage repeats its block at least once, not {E.show(repeats)}",
            codes.BAD_REPEATS,
        )
    dilate_expr = run.arg("dilate")
    dilate = E.evaluate(dilate_expr, env) if dilate_expr is not None else False
    if not isinstance(dilate, bool):
        raise EvalError(
            dilate_expr.span, f"`dilate` is true or false, not {E.show(dilate)}", codes.TYPE
        )
    common = {a.name: a.value for a in run.args if a.name not in ("stride", "dilate")}
    stride_expr = run.arg("stride")
    first, rest = dict(common), dict(common)
    after = dilation
    if dilate:
        if stride_expr is None:
            raise EvalError(
                run.span,
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
        first["dilation"] = E.literal(dilation, run.span)
        rest["dilation"] = E.literal(after, run.span)
    elif after != 1 or dilation != 1:
        raise EvalError(
            run.block_span,
            f"block `{block.name}` has no `dilation` parameter, "
            f"so this stage cannot run at dilation {max(after, dilation)}",
            codes.BAD_DILATE,
            hint="add `dilation = 1` to the block's parameters and use "
            "it for the padding and dilation of its 3x3 convolutions",
        )
    return StageBlocks(repeats, first, rest, after, run)


def repeats_alike(block_plan, channels, rule: StageBlocks) -> bool:
    """Whether the blocks after a stage's first one give the channel count they take, so one
    constructor call can repeat (`*[Block(256, 64) for _ in range(n)]`): true for torchvision's
    stages, false for a block whose output grows (DenseNet-like). Code needs it when the repeat
    count is a network parameter. `block_plan` is the block's resgen.plan.BlockPlan."""
    from resgen.plan import block_out

    out = block_out(block_plan, channels, rule.first)
    return E.to_python(block_out(block_plan, out, rule.rest)) == E.to_python(out)
