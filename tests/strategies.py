"""Hypothesis strategies shared by the robustness tests: random .arch specs as text.

`valid_specs()` draws networks that are right by construction (every conv is "same"-padded, so
any input size works): stdlib BasicBlock / Bottleneck and blocks written here with random
kernels (square or not), dilations, groups, strides, merges, shortcuts, `seq`, reuse, a
squeeze-excite block used as a layer, and bodies that fork and join (`fork_lines`: splits,
repeats, concats, sums, gates, a shared MLP applied twice). `invalid_specs()` puts one
shape-level mistake into such a network. Sizes stay small (channels <= 32, inputs <= 64x64)
so a torch forward pass is cheap.

The budget of every test that uses them comes from RESGEN_FUZZ_EXAMPLES (see `examples`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DEFAULT_EXAMPLES = int(os.environ.get("RESGEN_FUZZ_EXAMPLES", "0") or 0)


# Seeded, no deadline, no example database: the same examples on every machine and every run.
SEEDED = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)


def examples(default: int) -> int:
    """The example budget of one test: `default` in CI, RESGEN_FUZZ_EXAMPLES for a long run."""
    return DEFAULT_EXAMPLES or default


# Broadcasting `merge mul`: C x 1 x 1 gates times the C x H x W input.
SQUEEZE_EXCITE = """
block SqueezeExcite(reduction = 2) {
    let squeezed = in_channels // reduction
    main {
        pool = adaptive_avgpool(1)
        fc1 = conv(squeezed, 1)
        relu = relu(inplace=true)
        fc2 = conv(in_channels, 1)
        gate = sigmoid
    }
    merge mul
}
"""

KERNELS = ["1", "3", "5", "(1, 3)", "(3, 1)", "(3, 5)"]


# Parameter-free activations (a block applies its `act` again by name), in place where torch
# allows it; the norms and convolutions of issue 15 that fit any even channel count >= 4 and any
# size. `prelu` has parameters, so it appears only where it is not re-applied.
def _out_of_place(call: str) -> str:
    """`leaky_relu(0.1, inplace=true)` -> `leaky_relu(0.1)`; `relu(inplace=true)` -> `relu`."""
    call = call.replace(", inplace=true", "").replace("(inplace=true)", "")
    return call.replace("inplace=true, ", "")


ACTIVATIONS = [
    "relu(inplace=true)",
    "silu(inplace=true)",
    "gelu",
    "gelu_tanh",
    "leaky_relu(0.1, inplace=true)",
    "elu(alpha=0.5)",
    "hardswish",
    "hardsigmoid(inplace=true)",
    "mish",
    "tanh",
]
NORMS = [
    "batchnorm",
    "batchnorm",
    "groupnorm(2)",
    "groupnorm(group_size=2)",
    "evonorms0(group_size=2)",
    "evonorms0a(groups=2)",
    "frntlu",
    "layernorm2d",
    "rmsnorm2d",
    "simplenorm2d",
    "grn",
    "frozen_batchnorm",
]
UNGROUPED = [norm for norm in NORMS if not norm.startswith("groupnorm")]  # any channel count
CONVS = ["conv", "conv", "conv", "std_conv", "scaled_std_conv"]
# Layers that keep C x H x W whatever it is (channel_linear's width is the block's `width`).
EXTRAS = [
    "eca",
    "eca(kernel=5)",
    "global_context(fuse_add=true)",
    "drop_path(0.2)",
    "scale(0.5)",
    "prelu(per_channel=true)",
]


def _same_padding(kernel: str, dilated: bool) -> str:
    """The padding that keeps the size for an odd kernel (per axis for a pair)."""

    def one(k: int) -> str:
        half = (k - 1) // 2
        if half == 0:
            return "0"
        return ("dilation" if half == 1 else f"{half} * dilation") if dilated else str(half)

    if kernel.startswith("("):
        kh, kw = (int(v) for v in kernel.strip("()").split(","))
        return f"({one(kh)}, {one(kw)})"
    return one(int(kernel))


@st.composite
def custom_block(draw, name: str, mistake: str | None = None) -> str:
    """A block type with random internals. `mistake` ("spatial" or "channels") breaks its merge:
    a middle conv padded one short, or a last conv one channel off the shortcut's."""
    expansion = draw(st.sampled_from([1, 2]))
    widen = draw(st.sampled_from([1, 2]))
    merge = draw(st.sampled_from(["add", "add", "mul", None]))
    if mistake:
        merge = draw(st.sampled_from(["add", "mul"]))
    lines = [
        f"block {name}(planes, stride = 1, groups = 1, dilation = 1) {{",
        f"    expansion {expansion}",
        f"    let width = planes * {widen}",
        "    main {",
    ]
    style = draw(st.sampled_from(["plain", "seq"]))
    # Pre-activation (ResNet v2): the projection reads the activated input (`shortcut ... from`).
    preact = merge is not None and draw(st.booleans())
    act = draw(st.sampled_from(ACTIVATIONS))
    if preact:
        # It sees the block's input, whose channels an earlier block's mistake may have made
        # odd: torch would then fail building a group norm before running that mistake.
        pre_norm = draw(st.sampled_from(UNGROUPED))
        lines += [f"        pre_bn = {pre_norm}", f"        pre_act = {act}"]
    middles = draw(st.integers(1, 2))
    stride_on = draw(st.integers(0, middles))  # 0: the 1x1 reduce conv takes the stride
    if style == "seq":
        stride = "stride" if stride_on == 0 else "1"
        norm = draw(st.sampled_from(NORMS))
        lines.append(
            f"        reduce = seq {{ conv(width, 1, stride={stride}, bias=false) {norm} {act} }}"
        )
        lines.append(f"        act = {_out_of_place(act)}")  # the seq's act saved its output
    else:
        lines.append(
            "        reduce = conv(width, 1, stride=%s, bias=false)"
            % ("stride" if stride_on == 0 else "1")
        )
        lines.append(f"        bn0 = {draw(st.sampled_from(NORMS))}")
        lines.append(f"        act = {act}")
    spatial_mistake_at = draw(st.integers(1, middles)) if mistake == "spatial" else None
    for i in range(1, middles + 1):
        kernel = draw(st.sampled_from(KERNELS))
        if spatial_mistake_at == i and kernel in ("1", "(1, 3)", "(3, 1)"):
            kernel = "3"
        dilated = draw(st.booleans())
        padding = _same_padding(kernel, dilated)
        if spatial_mistake_at == i:  # valid conv, wrong size: one row short on every side
            padding = _same_padding(kernel, False).replace("2", "1", 1).replace("1", "0", 1)
            dilated = False
        stride = "stride" if stride_on == i else "1"
        dil = ", dilation=dilation" if dilated else ""
        # A standardised 1x1 conv may have one weight per output channel (groups = width):
        # torch cannot standardise one value, so those get a plain conv.
        standardised = spatial_mistake_at != i and kernel != "1"
        conv = draw(st.sampled_from(CONVS)) if standardised else "conv"
        lines.append(
            f"        conv{i} = {conv}(width, {kernel}, stride={stride}, "
            f"padding={padding}{dil}, groups=groups, bias=false)"
        )
        if draw(st.booleans()):
            lines.append(f"        bn{i} = {draw(st.sampled_from(NORMS))}")
        lines.append("        act")
        if draw(st.integers(0, 3)) == 0:
            lines.append(f"        extra{i} = {draw(st.sampled_from(EXTRAS))}")
    if draw(st.integers(0, 3)) == 0:
        lines.append("        mix = channel_linear(width)")
    # A body that forks and joins (issue 16); not with a projection `from pre_act`, which
    # resgen writes only for a body without `from`.
    if not preact and draw(st.integers(0, 2)) == 0:
        lines += draw(fork_lines())
    out = "planes * expansion" + (" + 1" if mistake == "channels" else "")
    lines.append(f"        expand = conv({out}, 1, bias=false)")
    # The last norm sees `out`, odd when the mistake is a channel off: group norms would add an
    # error of their own there.
    last_norms = UNGROUPED if mistake else NORMS
    lines.append(f"        bn9 = {draw(st.sampled_from(last_norms))}")
    if draw(st.booleans()):
        lines.append("        se = SqueezeExcite()")
    lines.append("    }")
    if merge is not None:
        always = draw(st.booleans())
        when = "" if always else " when stride != 1 or in_channels != planes * expansion"
        source = " from pre_act" if preact else ""
        lines.append(f"    shortcut downsample{source}{when} {{")
        lines.append("        conv(planes * expansion, 1, stride=stride, bias=false)")
        if draw(st.booleans()):
            lines.append("        batchnorm")
        lines.append("    }")
        lines.append(f"    merge {merge}")
        if draw(st.booleans()):
            lines.append("    post { act }")
    lines.append("}")
    return "\n".join(lines)


@st.composite
def fork_lines(draw) -> list[str]:
    """Layers of a block body that fork and join, from `trunk` (the value before them) back to
    `width` channels at its size: parallel "same" convs on channel chunks (a split, a repeat as
    ModuleLists, a concat or a sum), a fork of two kernels summed, CBAM's spatial gate (channel
    mean and max, a 7x7 conv, a product) and its channel gate (one MLP applied to the average
    and the max pool: shared weights), in a random order."""
    lines = ["        trunk = identity"]
    last = "trunk"
    kinds = st.sampled_from(["split", "fork", "spatial", "channel"])
    parts = draw(st.lists(kinds, min_size=1, max_size=3))
    for n, part in enumerate(parts):
        if part == "split":
            chunks = draw(st.sampled_from([1, 2]))
            kernel = draw(st.sampled_from(KERNELS))
            join = draw(st.sampled_from(["concat", "add"]))
            width = "width // 2" if chunks == 2 and join == "concat" else "width"
            if chunks == 2 and join == "add":  # each path back to the full width
                width = "width"
            lines += [
                f"        xs{n} = split({chunks}) from {last}",
                f"        ys{n} = repeat i < {chunks} {{",
                f"            paths{n} = conv({width}, {kernel}, "
                f"padding={_same_padding(kernel, False)}) from xs{n}[i]",
                "        }",
                f"        j{n} = {join} from ys{n}",
            ]
        elif part == "fork":
            lines += [
                f"        fa{n} = conv(width, 3, padding=1) from {last}",
                f"        fb{n} = conv(width, 1, bias=false) from {last}",
                f"        j{n} = add from fa{n}, fb{n}",
            ]
        elif part == "spatial":
            lines += [
                f"        mean{n} = channel_mean from {last}",
                f"        peak{n} = channel_max from {last}",
                f"        both{n} = concat from peak{n}, mean{n}",
                f"        sconv{n} = conv(1, 7, padding=3)",
                f"        sgate{n} = sigmoid",
                f"        j{n} = mul from {last}, sgate{n}",
            ]
        else:
            lines += [
                f"        avg{n} = adaptive_avgpool(1) from {last}",
                f"        mlp{n} = seq {{ conv(width, 1) relu conv(width, 1) }}",
                f"        max{n} = adaptive_maxpool(1) from {last}",
                f"        max_out{n} = mlp{n} from max{n}",
                f"        logits{n} = add from mlp{n}, max_out{n}",
                f"        cgate{n} = sigmoid",
                f"        j{n} = mul from {last}, cgate{n}",
            ]
        last = f"j{n}"
    return lines


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def _stage(draw, index: int, blocks: list[str], dilating: bool):
    """One stage line; (text, block name)."""
    block = draw(st.sampled_from(blocks))
    repeats = draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 1, 2]))
    args = []
    if block == "BasicBlock":
        planes = draw(st.sampled_from([4, 8, 16, 32]))
        args.append(str(planes))
    elif block == "Bottleneck":
        planes = draw(st.sampled_from([2, 4, 8]))
        groups = draw(st.sampled_from(_divisors(planes)[:3]))
        base_width = draw(st.sampled_from([64, 128]))
        while planes * base_width // 64 * groups > 32:
            groups = 1
            base_width = 64
        args.append(str(planes))
        if groups != 1:
            args.append(f"groups={groups}")
        if base_width != 64:
            args.append(f"base_width={base_width}")
    else:
        planes = draw(st.sampled_from([4, 8]))
        groups = draw(st.sampled_from(_divisors(planes)))
        args.append(str(planes))
        if groups != 1:
            args.append(f"groups={groups}")
    if stride != 1:
        args.insert(1, f"stride={stride}")
        if dilating and draw(st.booleans()):
            args.append("dilate=true")
    return f"    stage layer{index} = {repeats} x {block}({', '.join(args)})", block


# Hazards (issue 12, item 9): values on both sides of torch's argument rules, numbers that
# overflow, and names that collide with what the generated module needs. A spec drawn with them
# may be right or wrong; what must hold is check ok => build ok => it trains one step.
EPS = ["1e-5", "1e-300", "1e3", "0.0", "-1.0", "1e308 * 10.0"]
MOMENTUM = ["0.1", "0.0", "-1.0", "2.0"]
DROPOUT = ["0.0", "0.25", "1.0", "-0.1", "1.1"]
COLLIDING = [
    "extra",
    "scale",
    "BasicBlock",
    "Bottleneck",
    "Custom1",
    "SqueezeExcite",
    "PadChannels",
    "Net",
    "module",
    "index",
    "range",
    "nn",
    "OrderedDict",
]
LAYER_NAMES = ["extra_act", "f_globals", "gi_frame", "forward", "mro", "training", "tail"]


@st.composite
def _hazards(draw) -> dict[str, str]:
    """Argument texts and names for network_design(hazards=True): each a risky value about one
    time in three, so a fair share of specs is still right and goes on to build and train."""

    def pick(values: list[str]) -> str:  # values[0] is the safe one
        return draw(st.sampled_from(values[:1] * len(values) * 2 + values))

    kernel = draw(st.sampled_from([1, 2, 3, 4]))
    return {
        "eps": pick(EPS),
        "momentum": pick(MOMENTUM),
        "p": pick(DROPOUT),
        "pool_kernel": str(kernel),
        "pool_padding": str(draw(st.integers(0, kernel // 2 + 1))),
        "pool_dilation": str(draw(st.sampled_from([1, 1, 2]))),
        "pool_ceil": draw(st.sampled_from(["false", "true"])),
        "param": pick(COLLIDING),
        "layer": pick(LAYER_NAMES),
    }


@st.composite
def network_design(draw, mistake: str | None = None, hazards: bool = False) -> str:
    """A whole spec; `mistake` names the one shape error to put in (None: a valid spec);
    `hazards` adds the values and names of `_hazards` (the spec may then be right or wrong)."""
    channels = draw(st.sampled_from([1, 3]))
    height = draw(st.integers(1, 64))
    width = draw(st.integers(1, 64))
    if draw(st.booleans()):
        width = height  # square inputs are common; keep them common here too
    if mistake == "too-small":  # an unpadded conv (below) that needs more than the input has
        height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    stem_width = draw(st.sampled_from([4, 8, 16]))
    kernel = draw(st.sampled_from(["3", "5", "7", "(3, 5)", "(7, 3)"]))
    stem = []
    if mistake == "indivisible":  # an odd size where space_to_depth needs an even one
        height = 2 * draw(st.integers(1, 31)) + 1
    if mistake == "indivisible" or (height % 2 == 0 and width % 2 == 0 and draw(st.booleans())):
        stem.append("        s2d = space_to_depth(2)")  # 4 C x H/2 x W/2
    if draw(st.integers(0, 3)) == 0:
        stem.append(f"        pad = constant_pad({draw(st.integers(0, 2))})")
    stem.append(
        f"        conv1 = {draw(st.sampled_from(CONVS))}(width, {kernel}, "
        f"stride={draw(st.sampled_from([1, 2]))}, padding={_same_padding(kernel, False)}, "
        "bias=false)"
    )
    bn = "batchnorm"
    if mistake == "batchnorm":
        bn = f"batchnorm({stem_width + draw(st.integers(1, 4))})"
    elif mistake == "groupnorm":
        bn = "groupnorm(3)"  # the stem is 4, 8 or 16 wide
    hazard = draw(_hazards()) if hazards else None
    if hazard:
        bn = f"batchnorm(eps={hazard['eps']}, momentum={hazard['momentum']})"
    stem += [f"        bn1 = {bn}", "        relu = relu(inplace=true)"]
    if hazard:
        pool = (
            "maxpool"
            if hazard["pool_dilation"] == "2"
            else draw(st.sampled_from(["maxpool", "avgpool"]))
        )
        dilation = f", dilation={hazard['pool_dilation']}" if pool == "maxpool" else ""
        stem.append(
            f"        hpool = {pool}({hazard['pool_kernel']}, stride=1, "
            f"padding={hazard['pool_padding']}{dilation}, ceil_mode={hazard['pool_ceil']})"
        )
    if draw(st.booleans()):
        # Out of place: the ReLU before it saved its output for backward (overwrites-saved).
        act = draw(st.sampled_from([*ACTIVATIONS, "prelu"]))
        stem.append(f"        act = {_out_of_place(act)}")
    # Reflect padding needs a size above the padding: only where the input is surely large.
    if height > 8 and width > 8 and draw(st.integers(0, 3)) == 0:
        stem.append(f"        aa = blurpool({draw(st.sampled_from([2, 3]))})")
    pool = draw(st.sampled_from([None, "maxpool", "avgpool"]))
    if mistake == "pool-padding":
        pool = draw(st.sampled_from(["maxpool", "avgpool"]))
    if pool:
        k = draw(st.sampled_from([2, 3]))
        padding = draw(st.integers(0, k // 2)) if height > 4 and width > 4 else k // 2
        if mistake == "pool-padding":
            padding = k // 2 + draw(st.integers(1, 2))
        stem.append(
            f"        pool = {pool}({k}, stride={draw(st.sampled_from([1, 2]))}, padding={padding})"
        )
    if mistake == "too-small":
        stem.append(f"        valid = conv(width, {draw(st.sampled_from([5, 7]))})")

    block_names = ["BasicBlock", "Bottleneck", "Custom1", "Custom2"]
    broken = mistake in ("spatial", "channels")
    defs = [
        SQUEEZE_EXCITE,
        draw(custom_block("Custom1", mistake if broken else None)),
        draw(custom_block("Custom2")),
    ]
    stages = []
    for index in range(1, draw(st.sampled_from([1, 2, 3, 0])) + 1):
        line, _ = draw(_stage(index, block_names, dilating=True))
        stages.append(line)
    if broken:
        # The broken block in a stage of its own with a stride, so a shortcut projects.
        stages.append(f"    stage layer{len(stages) + 1} = 1 x Custom1(8, stride=2)")
    if mistake == "groups":
        planes = draw(st.sampled_from([4, 8, 16]))
        groups = draw(st.sampled_from([3, 5, 6]))
        stages.append(f"    stage layer{len(stages) + 1} = 1 x Custom2({planes}, groups={groups})")

    size = draw(st.sampled_from(["1", "1", "(2, 1)", "(1, 3)"]))
    pool = draw(
        st.sampled_from(
            ["adaptive_avgpool", "adaptive_avgpool", "adaptive_maxpool", "adaptive_avgmaxpool"]
            + ["adaptive_catavgmaxpool"]
        )
    )
    head = [f"        avgpool = {pool}({size})", "        flatten = flatten"]
    if hazard:
        head.append(f"        drop = dropout({hazard['p']})")
    elif draw(st.booleans()):
        head.append("        drop = dropout(0.25)")
    if draw(st.integers(0, 3)) == 0:
        head.append("        bn = batchnorm1d")
    in_features = ""
    if mistake == "linear":
        in_features = f", in_features={draw(st.integers(1000, 1005))}"  # never the real one
    head.append(f"        fc = linear(num_classes{in_features})")
    if draw(st.booleans()):
        head.append("        relu")  # the stem's ReLU applied again
    if hazard:
        head.append(f"        {hazard['layer']} = identity")

    text = [
        "import std.resnet",
        *defs,
        "network net {",
        f"    input {channels}x{height}x{width}",
        f"    param num_classes = {draw(st.integers(1, 12))}",
        f"    param width = {stem_width}",
        *([f"    param {hazard['param']} = 1"] if hazard else []),
        "    stem {",
        *stem,
        "    }",
        *stages,
        "    head {",
        *head,
        "    }",
        "}",
        "",
    ]
    return "\n".join(text)


MISTAKES = (
    "too-small",
    "spatial",
    "channels",
    "groups",
    "pool-padding",
    "linear",
    "batchnorm",
    "groupnorm",
    "indivisible",
)


def valid_specs() -> st.SearchStrategy[str]:
    return network_design()


def hazardous_specs() -> st.SearchStrategy[str]:
    """Specs of valid_specs' design with the hazards in: right or wrong, either is possible."""
    return network_design(hazards=True)


def invalid_specs() -> st.SearchStrategy[tuple[str, str]]:
    """(spec text, mistake) with one shape-level mistake in it."""
    return st.sampled_from(MISTAKES).flatmap(
        lambda m: network_design(m).map(lambda text: (text, m))
    )
