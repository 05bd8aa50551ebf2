"""Functions of the .arch expression language that compute design spaces (resgen.expr.FUNCTIONS).

Each is plain Python over numbers, and generated code defines the same function from this very
source (resgen.codegen copies it), so a generated model computes exactly what resgen checked.
They raise ValueError with a sentence; the expression evaluator turns it into a located error.

The RegNet rule is the paper's (Radosavovic et al., "Designing Network Design Spaces", CVPR
2020, section 3.3): a network of `depth` blocks has the continuous widths u_j = w0 + wa * j
(j = 0 .. depth - 1); each is rounded to the nearest power of wm times w0,
s_j = round(log(u_j / w0) / log(wm)), and quantised to a multiple of 8,
w_j = 8 * round(w0 * wm**s_j / 8). A stage is a run of equal widths: stage i has the i-th
smallest width, and as many blocks as have it. The arithmetic is timm's (timm.models.regnet.
generate_regnet): float32 at every step, ties rounded to even, so a spec that computes its widths
here builds timm's regnetx_*/regnety_* weight for weight (tests/test_regnet_space.py compares
every published configuration).
"""

from __future__ import annotations

from math import frexp, ldexp, log


def to_float32(x: float) -> float:
    """x rounded to the nearest float32, ties to even (as torch stores a float32 tensor)."""
    if x == 0:
        return 0.0
    mantissa, exponent = frexp(x)
    return ldexp(round(mantissa * 16777216) / 16777216, exponent)


def regnet_widths(depth: int, w0: float, wa: float, wm: float) -> list[int]:
    """The width of each of the `depth` blocks by RegNet's quantised linear rule."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"RegNet's depth d is a whole number of at least 1, not {depth}")
    if w0 <= 0 or wa < 0 or wm <= 1:
        raise ValueError(
            f"RegNet's rule needs w0 > 0, wa >= 0 and wm > 1, not w0={w0}, wa={wa}, wm={wm}"
        )
    w0_32, wa_32, wm_32 = to_float32(w0), to_float32(wa), to_float32(wm)
    log_wm = to_float32(log(wm))
    widths = []
    for j in range(depth):
        u = to_float32(to_float32(j * wa_32) + w0_32)
        s = round(to_float32(to_float32(log(to_float32(u / w0_32))) / log_wm))
        w = to_float32(to_float32(w0_32 * to_float32(wm_32**s)) / 8)
        widths = widths + [8 * round(w)]
    return widths


def regnet_stage(stage: int, stages: int, depth: int, w0: float, wa: float, wm: float):
    """(width, blocks) of stage `stage` (from 1) of a RegNet of `stages` stages. The block
    widths never decrease, so stage i holds the i-th distinct width. Raises ValueError when the
    rule gives another number of stages."""
    widths = regnet_widths(depth, w0, wa, wm)
    distinct = []
    for width in widths:
        if width not in distinct:
            distinct = distinct + [width]
    if len(distinct) != stages:
        shown = ""
        for width in distinct:
            shown = f"{shown}, {width}" if shown else f"{width}"
        raise ValueError(
            f"d={depth}, w0={w0}, wa={wa}, wm={wm} give {len(distinct)} stages (widths "
            f"{shown}), not the {stages} this network has"
        )
    if not isinstance(stage, int) or stage < 1 or stage > stages:
        raise ValueError(f"stage {stage} is not one of 1 .. {stages}")
    width = distinct[stage - 1]
    return width, len([w for w in widths if w == width])


def regnet_width(stage: int, stages: int, depth: int, w0: float, wa: float, wm: float) -> int:
    """The width of stage `stage` (from 1) of a RegNet of `stages` stages."""
    return regnet_stage(stage, stages, depth, w0, wa, wm)[0]


def regnet_depth(stage: int, stages: int, depth: int, w0: float, wa: float, wm: float) -> int:
    """How many blocks stage `stage` (from 1) of a RegNet of `stages` stages has."""
    return regnet_stage(stage, stages, depth, w0, wa, wm)[1]


def quantize(x: float, q: int) -> int:
    """The multiple of q nearest x, ties to the even multiple: round(x / q) * q (timm's and
    pycls's `quantize_float`; RegNet's group-width adjustment), exact for integers."""
    if not isinstance(q, int) or q < 1:
        raise ValueError(f"quantize needs a whole number q of at least 1, not {q}")
    if not isinstance(x, int):
        return int(round(x / q) * q)
    n, r = x // q, x % q
    if 2 * r > q or (2 * r == q and n % 2 == 1):
        n = n + 1
    return n * q


def make_divisible(v: float, divisor: int) -> int:
    """timm's channel rounding (timm.layers.make_divisible, round_limit 0.9): the multiple of
    `divisor` nearest v (halves up), at least `divisor`, and one `divisor` more where rounding
    down would lose more than 10% of v."""
    if not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"make_divisible needs a whole divisor of at least 1, not {divisor}")
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def nf_beta(index: int, previous: int, alpha: float) -> float:
    """The input scale beta = 1 / sqrt(expected variance) of block `index` (from 0) of a stage
    of a normaliser-free network (Brock et al. 2021, "Characterizing signal propagation to close
    the performance gap in unnormalized ResNets", section 4), whose previous stage had
    `previous` blocks (0 for the first stage). Each residual branch adds alpha**2 to the
    variance of the signal; a block whose shortcut is a projection (the first of a stage)
    resets it to 1. So block 0 of a stage sees 1 + previous * alpha**2 and block j > 0 sees
    1 + j * alpha**2, summed one block at a time in timm's own arithmetic
    (timm.models.nfnet.NormFreeNet: `expected_var += alpha ** 2`, then
    `beta = 1. / expected_var ** 0.5`)."""
    if not isinstance(index, int) or not isinstance(previous, int) or index < 0 or previous < 0:
        raise ValueError(
            f"nf_beta needs a block index and a previous depth of at least 0, not {index} "
            f"and {previous}"
        )
    expected_var = 1.0
    for _ in range(previous if index == 0 else index):
        expected_var += alpha**2
    return 1.0 / expected_var**0.5


# What generated code defines for each function, in order (a function after those it calls).
SOURCES = {
    "regnet_width": (to_float32, regnet_widths, regnet_stage, regnet_width),
    "regnet_depth": (to_float32, regnet_widths, regnet_stage, regnet_depth),
    "quantize": (quantize,),
    "nf_beta": (nf_beta,),
    "make_divisible": (make_divisible,),
}
_MATH = ("from math import frexp, ldexp, log",)
IMPORTS = {"regnet_width": _MATH, "regnet_depth": _MATH}
