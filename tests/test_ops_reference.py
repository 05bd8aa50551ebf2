"""The layer ops of issue 15 against their references: timm's and torchvision's modules, and
torch's own functions and FLOP counter. Never against resgen itself.

For every op, one network holding just that layer is built from its generated code, then:
- the shape engine's output shape is torch's, over a range of input sizes;
- parameter and buffer counts are torch's `numel` sums, and MACs are half of what
  torch.utils.flop_counter counts (the convolutions and matrix products it runs);
- a reference module (timm's, torchvision's or torch's) with random values in every tensor of
  its state_dict loads into the generated one with `strict=True`, with the same keys in the
  same order and shapes, and both give the same output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

torch = pytest.importorskip("torch")
timm_layers = pytest.importorskip("timm.layers")

from timm.layers.grn import GlobalResponseNorm  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchvision.ops import FrozenBatchNorm2d  # noqa: E402

from resgen import codegen  # noqa: E402
from resgen.build import import_source  # noqa: E402
from resgen.resolve import Loader  # noqa: E402
from resgen.shapes import analyse  # noqa: E402


class Function(nn.Module):
    """A torch function as a reference module (for the stateless ops)."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class ChannelsLast(nn.Module):
    """timm's ConvNeXt applies its MLP (nn.Linear) to N x H x W x C tensors."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)


F = torch.nn.functional


@dataclass
class Case:
    layer: str  # the .arch layer
    reference: Callable[[int], nn.Module]  # input channels -> the reference module
    channels: int = 8
    sizes: tuple = ((8, 8), (7, 5), (1, 1), (16, 12))
    flat: bool = False  # the op takes flat features: a flatten comes first
    tolerance: float = 1e-6
    train: bool = False  # also compare in training mode (batch statistics)
    extra: dict = field(default_factory=dict)


CASES: dict[str, Case] = {
    # activations
    "silu": Case("silu(inplace=true)", lambda c: Function(F.silu)),
    "gelu": Case("gelu", lambda c: timm_layers.activations.GELU()),
    "gelu_tanh": Case("gelu_tanh", lambda c: timm_layers.activations.GELUTanh()),
    "leaky_relu": Case("leaky_relu(0.2)", lambda c: nn.LeakyReLU(0.2)),
    "elu": Case("elu(alpha=0.7)", lambda c: Function(lambda x: F.elu(x, 0.7))),
    "hardswish": Case("hardswish", lambda c: timm_layers.activations.HardSwish()),
    "hardsigmoid": Case("hardsigmoid", lambda c: timm_layers.activations.HardSigmoid()),
    "mish": Case("mish", lambda c: timm_layers.activations.Mish()),
    "tanh": Case("tanh", lambda c: Function(torch.tanh)),
    "prelu": Case("prelu(init=0.1)", lambda c: nn.PReLU(init=0.1)),
    "prelu_per_channel": Case("prelu(per_channel=true)", lambda c: nn.PReLU(c)),
    # norms
    "groupnorm": Case("groupnorm(4)", lambda c: timm_layers.GroupNorm(c, 4), train=True),
    "groupnorm_default": Case("groupnorm", lambda c: nn.GroupNorm(32, c), channels=64),
    "groupnorm_size": Case("groupnorm(group_size=2)", lambda c: nn.GroupNorm(c // 2, c)),
    "evonorms0": Case("evonorms0", lambda c: timm_layers.EvoNorm2dS0(c), channels=64),
    "evonorms0_size_no_act": Case(
        "evonorms0(group_size=2, apply_act=false, eps=1e-3)",
        lambda c: timm_layers.EvoNorm2dS0(c, group_size=2, apply_act=False, eps=1e-3),
    ),
    "evonorms0a": Case(
        "evonorms0a(group_size=16)",
        lambda c: timm_layers.EvoNorm2dS0a(c, group_size=16),
        channels=64,
    ),
    "evonorms0a_no_act": Case(
        "evonorms0a(groups=4, apply_act=false)",
        lambda c: timm_layers.EvoNorm2dS0a(c, groups=4, apply_act=False),
    ),
    "frntlu": Case("frntlu", lambda c: timm_layers.FilterResponseNormTlu2d(c), train=True),
    "frntlu_no_act": Case(
        "frntlu(apply_act=false, eps=1e-6)",
        lambda c: timm_layers.FilterResponseNormTlu2d(c, apply_act=False, eps=1e-6),
    ),
    "layernorm2d": Case("layernorm2d", lambda c: timm_layers.LayerNorm2d(c)),
    "rmsnorm2d": Case("rmsnorm2d(eps=1e-5)", lambda c: timm_layers.RmsNorm2d(c, eps=1e-5)),
    "simplenorm2d": Case("simplenorm2d", lambda c: timm_layers.SimpleNorm2d(c), tolerance=1e-5),
    "grn": Case("grn", lambda c: GlobalResponseNorm(c, channels_last=False)),
    "frozen_batchnorm": Case("frozen_batchnorm", lambda c: FrozenBatchNorm2d(c), train=True),
    "batchnorm1d": Case(
        "batchnorm1d", lambda c: nn.BatchNorm1d(c), flat=True, sizes=((1, 1),), train=True
    ),
    # pools and resampling
    "adaptive_maxpool": Case("adaptive_maxpool((2, 3))", lambda c: nn.AdaptiveMaxPool2d((2, 3))),
    "adaptive_avgmaxpool": Case(
        "adaptive_avgmaxpool(1)", lambda c: timm_layers.SelectAdaptivePool2d(pool_type="avgmax")
    ),
    "adaptive_catavgmaxpool": Case(
        "adaptive_catavgmaxpool(2)",
        lambda c: timm_layers.SelectAdaptivePool2d(2, pool_type="catavgmax"),
    ),
    "blurpool": Case(
        "blurpool", lambda c: timm_layers.BlurPool2d(c), sizes=((8, 8), (7, 5), (2, 2), (9, 3))
    ),
    "blurpool_5": Case(
        "blurpool(5, stride=1)",
        lambda c: timm_layers.BlurPool2d(c, filt_size=5, stride=1),
        sizes=((8, 8), (3, 4), (5, 9)),
    ),
    "constant_pad": Case("constant_pad(2, value=0.5)", lambda c: nn.ConstantPad2d(2, 0.5)),
    "space_to_depth": Case(
        "space_to_depth",
        lambda c: timm_layers.SpaceToDepth(4),
        sizes=((8, 8), (4, 12), (16, 4)),
        channels=3,
    ),
    # convolutions and the channel linear
    "std_conv": Case(
        "std_conv(16, 3, stride=2, padding=1, eps=1e-8)",
        lambda c: timm_layers.StdConv2d(c, 16, 3, stride=2, padding=1, eps=1e-8),
        tolerance=1e-5,
    ),
    "scaled_std_conv": Case(
        "scaled_std_conv(12, (3, 1), padding=(1, 0), groups=2, gamma=1.7, gain_init=0.5)",
        lambda c: timm_layers.ScaledStdConv2d(
            c, 12, (3, 1), padding=(1, 0), groups=2, gamma=1.7, gain_init=0.5
        ),
        tolerance=1e-5,
    ),
    "scaled_std_conv_same": Case(
        "scaled_std_conv_same(12, 3, stride=2, gamma=1.7, gain_init=0.5)",
        lambda c: timm_layers.ScaledStdConv2dSame(c, 12, 3, stride=2, gamma=1.7, gain_init=0.5),
        sizes=((8, 8), (7, 5), (1, 1), (16, 13), (2, 3)),
        tolerance=1e-5,
    ),
    "scaled_std_conv_same_static": Case(
        "scaled_std_conv_same(6, (3, 5), groups=2, bias=false)",
        lambda c: timm_layers.ScaledStdConv2dSame(c, 6, (3, 5), groups=2, bias=False),
        tolerance=1e-5,
    ),
    "scaled_std_conv_same_dilated": Case(
        "scaled_std_conv_same(8, (2, 3), stride=(1, 2), dilation=(1, 2))",
        lambda c: timm_layers.ScaledStdConv2dSame(c, 8, (2, 3), stride=(1, 2), dilation=(1, 2)),
        sizes=((8, 8), (7, 5), (1, 1), (3, 10)),
        tolerance=1e-5,
    ),
    "channel_linear": Case(
        "channel_linear(20)", lambda c: ChannelsLast(nn.Linear(c, 20)), tolerance=1e-5
    ),
    # attention, scale, stochastic depth
    "eca": Case("eca", lambda c: timm_layers.EcaModule(c), channels=128),
    "eca_kernel": Case("eca(kernel=7)", lambda c: timm_layers.EcaModule(kernel_size=7)),
    "global_context": Case(
        "global_context", lambda c: timm_layers.GlobalContext(c), channels=16, tolerance=1e-5
    ),
    "global_context_add": Case(  # timm's 'gca', the ByobNets' attn_layer
        "global_context(fuse_add=true, fuse_scale=false)",
        lambda c: timm_layers.GlobalContext(c, fuse_add=True, fuse_scale=False),
        channels=16,
        tolerance=1e-5,
    ),
    "global_context_mean_both": Case(
        "global_context(use_attn=false, fuse_add=true, rd_ratio=0.25, rd_divisor=8)",
        lambda c: timm_layers.GlobalContext(
            c, use_attn=False, fuse_add=True, rd_ratio=0.25, rd_divisor=8
        ),
        channels=40,
        tolerance=1e-5,
    ),
    "scale": Case("scale(1.7)", lambda c: Function(lambda x: x * 1.7)),
    "drop_path": Case("drop_path(0.3)", lambda c: timm_layers.DropPath(0.3)),
}


def _text(case: Case, h: int, w: int) -> str:
    layers = f"flatten = flatten op = {case.layer}" if case.flat else f"op = {case.layer}"
    return f"network one {{\n    input {case.channels}x{h}x{w}\n    stem {{ {layers} }}\n}}\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (spec, the generated model); one build per op, whatever the input size."""
    cache = {}

    def build(name: str):
        if name not in cache:
            case = CASES[name]
            path = tmp_path_factory.mktemp(name) / "one.arch"
            path.write_text(_text(case, *case.sizes[0]))
            spec = Loader().load(path)
            analysis = analyse(spec)
            assert analysis.ok, [d.message for d in analysis.diagnostics]
            module = import_source(codegen.generate(spec, analysis), "one")
            cache[name] = spec, module.one().eval()
        return cache[name]

    return build


def _input(case: Case, h: int, w: int, batch: int = 2):
    return torch.randn(batch, case.channels, h, w, generator=torch.Generator().manual_seed(h * w))


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_and_counts_are_torch_s(name, built):
    case = CASES[name]
    spec, model = built(name)
    for h, w in case.sizes:
        analysis = analyse(spec, (None, h, w))
        assert analysis.ok, (h, w, [d.message for d in analysis.diagnostics])
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            out = model(_input(case, h, w, batch=1))
        assert tuple(out.shape[1:]) == tuple(analysis.output), (h, w)
        assert analysis.params == sum(p.numel() for p in model.parameters())
        assert analysis.buffers == sum(b.numel() for b in model.buffers())
        assert 2 * analysis.macs == flops.get_total_flops(), (h, w)


@torch.no_grad()
def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Every floating tensor of the state_dict uniform in [0.5, 1.5) (positive, so variances
    stay variances), including those timm initialises to zero (GRN) or one."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_reference_module(name, built):
    case = CASES[name]
    _, model = built(name)
    ours = model.op
    reference = case.reference(case.channels).eval()
    _randomise(reference)
    theirs = reference.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()
    }
    ours.load_state_dict(theirs, strict=True)
    modes = (False, True) if case.train else (False,)
    for training in modes:
        ours.train(training)
        reference.train(training)
        for h, w in case.sizes:
            x = _input(case, h, w)
            if case.flat:
                x = x.flatten(1)
            with torch.no_grad():
                expected, got = reference(x.clone()), ours(x.clone())
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, rtol=case.tolerance, atol=case.tolerance), (
                name,
                h,
                w,
                (got - expected).abs().max().item(),
            )


def test_drop_path_in_training_is_timm_s_per_sample_mask(built):
    """In training the same seed draws the same per-sample mask as timm's DropPath: whole
    samples zeroed, the others divided by the keep probability."""
    _, model = built("drop_path")
    ours, reference = model.op.train(), timm_layers.DropPath(0.3).train()
    x = torch.randn(64, 8, 3, 3)
    torch.manual_seed(7)
    got = ours(x)
    torch.manual_seed(7)
    expected = reference(x)
    assert torch.equal(got, expected)
    kept = got.flatten(1).abs().sum(1) > 0
    assert 0 < int(kept.sum()) < 64
    assert torch.allclose(got[kept], x[kept] / 0.7)


def test_frozen_batchnorm_takes_a_batchnorm_checkpoint(built):
    """torchvision's FrozenBatchNorm2d loads nn.BatchNorm2d's state_dict (num_batches_tracked
    dropped), so an ImageNet backbone's weights freeze into it."""
    _, model = built("frozen_batchnorm")
    bn = nn.BatchNorm2d(8).eval()
    _randomise(bn)
    model.op.load_state_dict(bn.state_dict(), strict=True)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        assert torch.allclose(model.op(x), bn(x), atol=1e-6)


def test_scaled_std_conv_parameters_in_timm_s_order(built):
    _, model = built("scaled_std_conv")
    fresh = type(model.op)(8, 12, (3, 1), groups=2, gain_init=0.5)
    reference = timm_layers.ScaledStdConv2d(8, 12, (3, 1), groups=2, gain_init=0.5)
    assert [n for n, _ in fresh.named_parameters()] == ["weight", "bias", "gain"]
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert torch.equal(fresh.gain.detach(), torch.full((12, 1, 1, 1), 0.5))


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize(("k", "s", "d"), [(3, 2, 1), (1, 2, 1), (2, 1, 1), (3, 3, 2), (4, 2, 1)])
def test_same_padding_is_timm_s(n, k, s, d):
    """The padding of each axis and the output size, ceil(n / s), against timm's pad_same on
    a tensor of that size."""
    from timm.layers.padding import pad_same

    from resgen.ops.convs import SameWindow, same_padding

    before, after = same_padding(n, k, s, d)
    padded = pad_same(torch.zeros(1, 1, n, 1), [k, 1], [s, 1], [d, 1], value=1.0)
    column = padded[0, 0, :, 0]
    assert (int(column[:before].sum()), int(column[n + before :].sum())) == (before, after)
    assert len(column) == n + before + after
    out = F.conv2d(padded, torch.ones(1, 1, k, 1), stride=(s, 1), dilation=(d, 1))
    assert SameWindow(k, s, 0, d, True).out(n) == out.shape[2] == -(-n // s)


def test_grn_starts_as_the_identity(built):
    """timm zero-initialises GRN's weight and bias: a fresh one passes its input through."""
    _, model = built("grn")
    fresh = type(model.op)(8)
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), x)
    assert [n for n, p in fresh.named_parameters() if p.count_nonzero()] == []


def test_blurpool_filter_is_a_non_persistent_buffer(built):
    """timm's BlurPool2d keeps its binomial filter out of the state_dict."""
    _, model = built("blurpool")
    assert list(model.op.state_dict()) == []
    (filt,) = model.op.buffers()
    assert filt.shape == (8, 1, 3, 3)
    assert torch.equal(filt[0, 0], torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)


def test_space_to_depth_is_not_pixel_unshuffle(built):
    """timm's channel order (b, b, C) differs from pixel_unshuffle's (C, b, b) for C > 1."""
    _, model = built("space_to_depth")
    x = torch.randn(1, 3, 8, 8)
    ours = model.op(x)
    assert not torch.equal(ours, F.pixel_unshuffle(x, 4))
    # channel (i*4 + j)*3 + c holds pixel (i, j) of each 4x4 patch of channel c
    for i, j, c in ((0, 0, 0), (1, 2, 2), (3, 3, 1)):
        assert torch.equal(ours[0, (i * 4 + j) * 3 + c], x[0, c, i::4, j::4])


@pytest.mark.parametrize("channels", [1, 2, 3, 8, 63, 64, 100, 128, 255, 256, 511, 512, 2048])
def test_eca_kernel_follows_timm_for_every_width(channels, tmp_path):
    """The kernel rule, math.log(C, 2) included, against timm's EcaModule: params = k."""
    path = tmp_path / "eca.arch"
    path.write_text(
        f"network one {{ input {channels}x4x4 stem {{ op = eca(gamma=2, beta=1) }} }}\n"
    )
    analysis = analyse(Loader().load(path))
    kernel = timm_layers.EcaModule(channels).conv.kernel_size[0]
    assert analysis.params == kernel
    assert analysis.macs == channels * kernel


# ---------------------------------------------------------------------------------------------
# Whole blocks: ConvNeXt v1 and v2 with timm's keys, written with the channel-axis ops


def _convnext_block(name: str, grn: str) -> str:
    return f"""
block {name}() {{
    main {{
        conv_dw = conv(in_channels, 7, padding=3, groups=in_channels)
        norm = layernorm2d
        mlp = seq {{
            fc1 = channel_linear(4 * in_channels)
            act = gelu{grn}
            fc2 = channel_linear(in_channels)
        }}
    }}
    merge add
}}
"""


CONVNEXT = (
    _convnext_block("ConvNeXtBlock", "")
    + _convnext_block("ConvNeXtV2Block", "\n            grn = grn")
    + """
network blocks {
    input 32x9x9
    stem {
        v1 = ConvNeXtBlock()
        v2 = ConvNeXtV2Block()
    }
}
"""
)


def test_convnext_blocks_are_timm_s(tmp_path):
    """timm's ConvNeXtBlock (channels-last MLP, no layer scale) and its ConvNeXt-V2 variant
    (GRN in the MLP): the same keys in the same order, strict loads, equal outputs."""
    from timm.models.convnext import ConvNeXtBlock

    path = tmp_path / "blocks.arch"
    path.write_text(CONVNEXT)
    spec = Loader().load(path)
    model = import_source(codegen.generate(spec), "blocks").blocks().eval()
    for ours, use_grn in ((model.v1, False), (model.v2, True)):
        reference = ConvNeXtBlock(32, ls_init_value=None, use_grn=use_grn).eval()
        _randomise(reference)
        assert list(ours.state_dict()) == list(reference.state_dict())
        ours.load_state_dict(reference.state_dict(), strict=True)
        x = torch.randn(2, 32, 9, 9)
        with torch.no_grad():
            assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Input sizes: the size search (resgen.sizes) knows each op's own condition


@pytest.mark.parametrize(
    "layers",
    [
        "op = blurpool",  # reflect padding 1: at least 2
        "op = blurpool(5, stride=1)",  # reflect padding 2: at least 3
        "op = space_to_depth",  # multiples of 4
        "op = space_to_depth(2) pool = blurpool(4, stride=3)",
    ],
)
def test_accepted_input_sizes_are_those_torch_runs(layers, tmp_path):
    path = tmp_path / "sizes.arch"
    path.write_text(f"network sizes {{\n    input 2x16x16\n    stem {{ {layers} }}\n}}\n")
    spec = Loader().load(path)
    model = import_source(codegen.generate(spec), "sizes").sizes().eval()
    runs = []
    for n in range(1, 25):
        try:
            with torch.no_grad():
                model(torch.randn(1, 2, n, n))
            runs.append(n)
        except RuntimeError:
            pass
    accepted = [n for n in range(1, 25) if analyse(spec, (None, n, n)).ok]
    assert accepted == runs
    assert analyse(spec).input_sizes.smallest == (runs[0], runs[0])


# ---------------------------------------------------------------------------------------------
# Errors: located, with the arithmetic, where torch fails too

ERRORS = {
    # (input, layer): (code, message part, torch's own failure)
    "groupnorm": (
        "8x4x4",
        "groupnorm(3)",
        "groups",
        "input channels 8 are not divisible by groups=3 (8 / 3 leaves 2)",
        lambda: nn.GroupNorm(3, 8),
    ),
    "groupnorm_default": (
        "48x4x4",
        "groupnorm",
        "groups",
        "input channels 48 are not divisible by groups=32 (48 / 32 leaves 16)",
        lambda: nn.GroupNorm(32, 48),
    ),
    "groupnorm_size": (
        "8x4x4",
        "groupnorm(group_size=3)",
        "groups",
        "input channels 8 are not divisible by group_size=3 (8 / 3 leaves 2)",
        None,
    ),
    "groupnorm_both": (
        "8x4x4",
        "groupnorm(4, group_size=2)",
        "bad-argument",
        "groupnorm takes `groups` or `group_size`, not both (groups=4, group_size=2)",
        None,
    ),
    "space_to_depth": (
        "3x30x32",
        "space_to_depth",
        "indivisible-size",
        "space_to_depth(4) needs a height and width divisible by 4, but its input is 3x30x32: "
        "height 30 = 4*7 + 2",
        lambda: timm_layers.SpaceToDepth(4)(torch.randn(1, 3, 30, 32)),
    ),
    "blurpool": (
        "4x1x8",
        "blurpool",
        "too-small",
        "blurpool pads its height 1 by 1 on each side by reflection, which needs an input of at "
        "least 2",
        lambda: timm_layers.BlurPool2d(4)(torch.randn(1, 4, 1, 8)),
    ),
    "blurpool_5": (
        "4x8x2",
        "blurpool(5)",
        "too-small",
        "blurpool pads its width 2 by 2 on each side by reflection, which needs an input of at "
        "least 3",
        lambda: timm_layers.BlurPool2d(4, filt_size=5)(torch.randn(1, 4, 8, 2)),
    ),
    "simplenorm2d": (
        "1x4x4",
        "simplenorm2d",
        "channels",
        "its unbiased variance over 1 channel divides by C - 1 = 0, so every output would be NaN",
        None,  # torch gives NaN: checked below
    ),
    "eca_even": (
        "16x4x4",
        "eca(kernel=4)",
        "bad-argument",
        "eca's kernel must be odd to keep the 16 channels (padding (k - 1) / 2), but it is 4: "
        "the gate would have 15",
        None,  # timm asserts the same; torch fails at the product: checked below
    ),
    "eca_gamma": ("16x4x4", "eca(gamma=0)", "bad-argument", "divides by gamma, which is 0", None),
    "leaky_relu_inplace": (
        "4x4x4",
        "leaky_relu(-0.1, inplace=true)",
        "bad-argument",
        "leaky_relu with inplace=true and slope=-0.1: torch cannot compute its gradient in place",
        None,
    ),
    "std_conv_fan_in": (
        "4x4x4",
        "std_conv(4, 1, groups=4)",
        "channels",
        "std_conv standardises each output channel's 4/4*1*1 = 1 weight, but the variance of "
        "one value is undefined",
        lambda: timm_layers.StdConv2d(4, 4, 1, groups=4)(torch.randn(1, 4, 4, 4)),
    ),
    "drop_path_p": ("4x4x4", "drop_path(1.5)", "bad-argument", "is between 0 and 1", None),
    "blurpool_kernel": ("4x4x4", "blurpool(1)", "bad-argument", "must be at least 2", None),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_arguments_and_inputs_are_located_errors(name, tmp_path):
    shape, layer, code, message, torch_fails = ERRORS[name]
    path = tmp_path / "bad.arch"
    path.write_text(
        f"network bad {{\n    input {shape}\n    stem {{\n        op = {layer}\n    }}\n}}\n"
    )
    analysis = analyse(Loader().load(path))
    (error,) = analysis.errors
    assert error.code == code
    assert message in error.message, error.message
    assert error.span.line == 4 and error.span.column >= 9  # at the layer or its argument
    if torch_fails is not None:
        with pytest.raises((RuntimeError, ValueError)):
            torch_fails()


def test_what_torch_does_where_resgen_refuses():
    """The refusals without a torch error: SimpleNorm2d over one channel is NaN everywhere,
    an even ECA kernel breaks the gate's product, and an in-place leaky ReLU with a negative
    slope fails in backward."""
    with pytest.warns(UserWarning):  # torch: degrees of freedom <= 0
        assert timm_layers.SimpleNorm2d(1)(torch.randn(1, 1, 4, 4)).isnan().all()
    with pytest.raises(AssertionError):
        timm_layers.EcaModule(kernel_size=4)
    eca = timm_layers.EcaModule(kernel_size=3)
    eca.conv = nn.Conv1d(1, 1, 4, padding=1, bias=False)
    with pytest.raises(RuntimeError):
        eca(torch.randn(1, 16, 4, 4))
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="negative slope"):
        F.leaky_relu(x * 1, -0.1, inplace=True).sum().backward()


def test_prelu_per_channel_must_be_a_constant(tmp_path):
    """It decides nn.PReLU's arguments (nn.PReLU(C) or nn.PReLU()), so codegen needs its value:
    a block parameter is a located codegen error, not a wrong module."""
    from resgen.diagnostics import SpecError

    path = tmp_path / "prelu.arch"
    path.write_text(
        "block Act(flag = true) {\n    main { act = prelu(per_channel=flag) }\n}\n"
        "network net {\n    input 4x4x4\n    stem { a = Act() }\n}\n"
    )
    spec = Loader().load(path)
    with pytest.raises(SpecError) as caught:
        codegen.generate(spec)
    (error,) = caught.value.diagnostics
    assert error.code == "codegen" and (error.span.line, error.span.column) == (2, 36)
    assert "`per_channel` of prelu decides the arguments of its constructor" in error.message
