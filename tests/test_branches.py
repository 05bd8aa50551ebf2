"""Block bodies that fork and join (issue 16): `from`, `when`, `repeat`, split/concat/add/mul.

Expected values come from torch (shapes, parameter counts, MACs by torch.utils.flop_counter,
whether a forward pass runs at all), from timm's own code (Res2Net's loop) and from first
principles (the arithmetic in each error).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from resgen.build import analyse, build_module, generate
from resgen.diagnostics import SpecError
from resgen.resolve import Loader

RES2NET = """
import std.res2net
network small {
    input 3x32x32
    stem { conv1 = conv(64, 3, padding=1, bias=false) }
    stage layer1 = 2 x Bottle2neck(16, base_width=26, scale=4)
    stage layer2 = 1 x Bottle2neck(32, stride=2, base_width=26, scale=3)
    head { pool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }
}
"""


def _load(tmp_path, text: str):
    path = tmp_path / "spec.arch"
    path.write_text(text)
    return Loader().load(path)


def _errors(tmp_path, text: str):
    try:
        spec = _load(tmp_path, text)
    except SpecError as err:
        return err.diagnostics
    return analyse(spec).errors


def _block(body: str, input_shape: str = "8x16x16") -> str:
    return f"""
block B() {{
    main {{
{body}
    }}
}}
network n {{
    input {input_shape}
    stage s = 1 x B()
}}
"""


def test_res2net_keeps_timms_modulelists_and_loop(tmp_path):
    """timm's Bottle2neck: ModuleLists `convs` and `bns`, a loop over them in forward()."""
    source = generate(_load(tmp_path, RES2NET))
    assert "self.convs = nn.ModuleList(" in source
    assert "for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):" in source
    assert "spo.append(sp)" in source


def test_res2net_counts_and_shapes_match_torch(tmp_path):
    spec = _load(tmp_path, RES2NET)
    analysis = analyse(spec)
    assert analysis.ok
    model = build_module(tmp_path / "spec.arch").eval()
    x = torch.randn(1, 3, 32, 32)
    assert analysis.params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as flops:
        model(x)
    assert analysis.macs == flops.get_total_flops() // 2
    keys = list(model.state_dict())
    assert keys.index("layer1.0.convs.2.weight") < keys.index("layer1.0.bns.0.weight")


def test_res2net_scripts_and_exports(tmp_path):
    _load(tmp_path, RES2NET)
    model = build_module(tmp_path / "spec.arch").eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(scripted(x), expected)
        assert torch.equal(exported.module()(x), expected)


@pytest.mark.parametrize(
    ("body", "code", "line", "words"),
    [
        ("        s = split(3)\n        c = concat from s", "channels", 4, "8 = 3 * 2 + 2"),
        (
            "        a = conv(8, 3, stride=2, padding=1)\n        c = concat from x, a",
            "join-mismatch",
            5,
            "8x16x16 and 8x8x8",
        ),
        ("        s = split(2)\n        c = conv(4, 1)", "bundle", 5, "bundle of 2"),
        ("        s = split(2)\n        c = conv(8, 1) from s[2]", "bundle", 5, "-2 to 1"),
        ("        c = conv(8, 1) from nothing", "unknown-name", 4, "`nothing`"),
        (
            "        r = repeat i < 0 { c = conv(8, 1) }\n        d = conv(8, 1)",
            "bad-argument",
            4,
            "at least 1",
        ),
        ("        s = split(2)", "bundle", 4, "ends with a bundle of 2"),
        (
            "        a = conv(4, 1)\n        m = add from x, a",
            "join-mismatch",
            5,
            "channels 8 and 4",
        ),
    ],
)
def test_branch_errors_are_located_with_their_arithmetic(tmp_path, body, code, line, words):
    errors = _errors(tmp_path, _block(body))
    assert errors, body
    first = errors[0]
    assert (str(first.code), first.span.line) == (code, line), first.message
    assert words in first.message


# ---------------------------------------------------------------------------------------------
# Random multi-branch blocks against torch: a split into parallel paths (each its own kernel,
# dilation and stride), joined by concat or summed, optionally gated by CBAM's spatial gate.


@st.composite
def _branchy(draw):
    chunks = draw(st.integers(1, 3))
    width = draw(st.integers(1, 3)) * chunks
    kernels = [draw(st.sampled_from([1, 3, 5])) for _ in range(chunks)]
    strides = [draw(st.sampled_from([1, 2])) for _ in range(chunks)]
    dilations = [draw(st.integers(1, 2)) for _ in range(chunks)]
    join = draw(st.sampled_from(["concat", "add"])) if chunks > 1 else "concat"
    gate = draw(st.booleans())
    size = draw(st.integers(3, 12))
    return chunks, width, kernels, strides, dilations, join, gate, size


def _branchy_spec(chunks, width, kernels, strides, dilations, join, gate, size) -> str:
    paths = "\n".join(
        f"        p{i} = conv(4, {k}, stride={s}, padding={d * (k - 1) // 2}, dilation={d}) "
        f"from xs[{i}]"
        for i, (k, s, d) in enumerate(zip(kernels, strides, dilations, strict=True))
    )
    names = ", ".join(f"p{i}" for i in range(chunks))
    lines = [f"        xs = split({chunks})", paths, f"        j = {join} from {names}"]
    if gate:
        lines += [
            "        mean = channel_mean from j",
            "        peak = channel_max from j",
            "        both = concat from mean, peak",
            "        g = conv(1, 3, padding=1)",
            "        sg = sigmoid",
            "        gated = mul from j, sg",
        ]
    return _block("\n".join(lines), f"{width}x{size}x{size}")


@settings(max_examples=25, deadline=None)
@given(_branchy())
def test_random_branchy_blocks_match_torch(tmp_path_factory, case):
    tmp_path = tmp_path_factory.mktemp("branchy")
    text = _branchy_spec(*case)
    path = tmp_path / "spec.arch"
    path.write_text(text)
    analysis = analyse(Loader().load(path))
    chunks, width, *_, size = case
    try:
        model = build_module(path).eval() if analysis.ok else None
    except SpecError:
        model = None
    # torch is the oracle for whether the block runs: build the same graph by hand.
    reference = _reference(*case)
    x = torch.randn(1, width, size, size)
    try:
        with torch.no_grad():
            expected = reference(x)
    except RuntimeError:
        expected = None
    assert analysis.ok == (expected is not None), (text, [d.message for d in analysis.errors])
    if expected is None:
        return
    assert model is not None
    model.load_state_dict({f"s.{k}": v for k, v in reference[0].state_dict().items()})
    with FlopCounterMode(display=False) as flops:
        out = model(x)
    assert out.shape[1:] == expected.shape[1:] == analysis.output
    assert torch.allclose(out, expected, atol=1e-5)
    assert analysis.params == sum(p.numel() for p in model.parameters())
    assert analysis.macs == flops.get_total_flops() // 2


def _reference(chunks, width, kernels, strides, dilations, join, gate, size):
    """The block written by hand in torch (keys s.0.p0.weight, as the stage holds it)."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, (k, s, d) in enumerate(zip(kernels, strides, dilations, strict=True)):
                conv = torch.nn.Conv2d(width // chunks, 4, k, s, d * (k - 1) // 2, d)
                self.add_module(f"p{i}", conv)
            if gate:
                self.g = torch.nn.Conv2d(2, 1, 3, padding=1)

        def forward(self, x):
            xs = torch.chunk(x, chunks, 1)
            ys = [getattr(self, f"p{i}")(xs[i]) for i in range(chunks)]
            j = torch.cat(ys, 1) if join == "concat" else sum(ys[1:], ys[0])
            if gate:
                both = torch.cat([j.mean(1, keepdim=True), j.amax(1, keepdim=True)], 1)
                j = j * torch.sigmoid(self.g(both))
            return j

    return torch.nn.Sequential(torch.nn.Sequential(Block())).eval()


def test_input_sizes_follow_joins(tmp_path):
    """A 3x3 stride-2 conv gives ceil(n / 2), a 2x2 average pool floor(n / 2): concatenated,
    only even sizes fit, and torch agrees size by size."""
    text = _block(
        "        a = conv(8, 3, stride=2, padding=1) from x\n"
        "        b = avgpool(2) from x\n"
        "        c = concat from a, b"
    )
    sizes = analyse(_load(tmp_path, text)).input_sizes
    pool, conv = torch.nn.AvgPool2d(2), torch.nn.Conv2d(8, 8, 3, 2, 1)
    for n in range(2, 12):
        x = torch.randn(1, 8, n, n)
        fits = conv(x).shape == pool(x).shape
        assert sizes.accepts(n, n) == fits, n


# ---------------------------------------------------------------------------------------------
# CBAM (Woo et al. 2018) against a reference written here from the paper, with the layout and
# the choices of the authors' code (github.com/Jongchan/attention-module, MODELS/cbam.py and
# MODELS/model_resnet.py): the channel gate's one MLP (Flatten, Linear with bias, ReLU, Linear)
# on the average- and max-pooled features, summed, sigmoid (paper eq. 2); the spatial gate's
# 7x7 conv (padding 3, no bias) over [channel max, channel mean] followed by a batch norm
# (eps 1e-5, momentum 0.01: the authors' BasicConv with relu=False; the paper's eq. 3 shows the
# conv only), sigmoid; CBAM after bn3, before the residual sum.


class _RefChannelGate(torch.nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(gate_channels, gate_channels // reduction_ratio),
            torch.nn.ReLU(),
            torch.nn.Linear(gate_channels // reduction_ratio, gate_channels),
        )

    def forward(self, x):
        size = (x.size(2), x.size(3))
        avg = self.mlp(torch.nn.functional.avg_pool2d(x, size, stride=size))
        peak = self.mlp(torch.nn.functional.max_pool2d(x, size, stride=size))
        return x * torch.sigmoid(avg + peak)[:, :, None, None]


class _RefSpatialGate(torch.nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.spatial = torch.nn.Sequential()
        self.spatial.add_module(
            "conv", torch.nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        )
        self.spatial.add_module("bn", torch.nn.BatchNorm2d(1, eps=1e-5, momentum=0.01))

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class _RefCBAM(torch.nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16):
        super().__init__()
        self.ChannelGate = _RefChannelGate(gate_channels, reduction_ratio)
        self.SpatialGate = _RefSpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class _RefBottleneck(torch.nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        self.cbam = _RefCBAM(planes * 4, 16)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class _RefResNet(torch.nn.Module):
    """The authors' ResidualNet("ImageNet", 50, 1000, "CBAM") (AvgPool2d(7): 224 inputs)."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if index == 0 else 2
            stage = [_RefBottleneck(inplanes, planes, stride)]
            inplanes = planes * 4
            stage += [_RefBottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AvgPool2d(7)
        self.fc = nn.Linear(512 * 4, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_cbam_resnet50_is_the_papers_network():
    """specs/cbam_resnet50.arch: the authors' keys (strict load), their outputs in eval mode
    with random batch-norm statistics, the paper's 28.09M parameters (Table 4), and the MACs
    torch's flop counter counts (both applications of each shared MLP). MACs at 32x32, outputs
    at 64x64, to keep the test short: the reference's AvgPool2d(7) (224 inputs only) is then its
    equal there, the adaptive pool (no state, so the keys stay)."""
    from batchnorms import randomise_batchnorms

    from resgen.shapes import analyse as analyse_at

    torch.manual_seed(0)
    reference = _RefResNet().eval()
    randomise_batchnorms(reference, seed=1)
    spec = Loader().load("specs/cbam_resnet50.arch")
    model = build_module("specs/cbam_resnet50.arch").eval()
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    params = sum(p.numel() for p in model.parameters())
    assert analyse(spec).params == params == sum(p.numel() for p in reference.parameters())
    assert round(params / 1e6, 2) == 28.09  # Woo et al. 2018, Table 4 (ResNet50 + CBAM)
    reference.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        model(torch.randn(1, 3, 32, 32))
    assert analyse_at(spec, (None, 32, 32)).macs == flops.get_total_flops() // 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = model(x), reference(x)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[0], out[1])  # the outputs depend on the input


def test_a_shared_layer_is_one_module_applied_twice(tmp_path):
    """`max_out = mlp from max_pool`: one set of weights (one state_dict key set), called twice
    in forward(); its parameters counted once, its MACs per application."""
    text = """
import std.cbam
network n {
    input 32x8x8
    stem { c = conv(32, 3, padding=1) }
    head { gate = ChannelGate(32, 4) }
}
"""
    path = tmp_path / "spec.arch"
    path.write_text(text)
    source = generate(Loader().load(path))
    assert source.count("self.mlp = nn.Sequential(") == 1
    assert "mlp = self.mlp(out)" in source and "max_out = self.mlp(max_pool)" in source
    model = build_module(path).eval()
    keys = [k for k in model.state_dict() if k.startswith("gate.")]
    assert keys == ["gate.mlp.1.weight", "gate.mlp.1.bias", "gate.mlp.3.weight", "gate.mlp.3.bias"]
    analysis = analyse(Loader().load(path))
    assert analysis.params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as flops:
        model(torch.randn(1, 32, 8, 8))
    assert analysis.macs == flops.get_total_flops() // 2
    rows = {layer.name: layer for layer in analysis.layers}
    assert rows["gate.mlp.1#2"].params == 0 and rows["gate.mlp.1#2"].macs == 32 * 8


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        (  # a conv built for 8 channels applied to 16
            "        a = conv(8, 1)\n        b = conv(16, 1) from x\n        c = a from b",
            6,
            "`s.0.a` is applied again to 16x16x16, but its weights were made for its first "
            "input, 8x16x16: its weight is 8x8x1x1, this input needs 8x16x1x1",
        ),
        (  # a seq of ops: its first item's weights decide
            "        m = seq { conv(4, 1)  relu }\n        b = conv(4, 1) from x\n"
            "        c = m from b",
            6,
            "`s.0.m.0` is applied again to 4x16x16",
        ),
    ],
)
def test_a_shared_layer_on_another_input_is_a_located_error(tmp_path, body, line, words):
    errors = _errors(tmp_path, _block(body))
    assert [(str(e.code), e.span.line) for e in errors] == [("reuse-stateful", line)]
    assert words in errors[0].message


def test_a_block_applied_again_is_a_located_error(tmp_path):
    text = """
block Inner() { main { c = conv(8, 1) } }
block Outer() {
    main {
        inner = Inner()
        inner
    }
}
network n {
    input 8x8x8
    stage s = 1 x Outer()
}
"""
    errors = _errors(tmp_path, text)
    assert [(str(e.code), e.span.line) for e in errors] == [("reuse-stateful", 6)]
    assert "block `Inner`" in errors[0].message


def test_a_shared_layer_on_another_size_is_fine(tmp_path):
    """Weights fit any H x W (a detection head shared across feature levels): no error, and
    torch runs it."""
    body = (
        "        a = conv(8, 3, padding=1)\n        p = avgpool(2) from x\n"
        "        b = a from p\n        u = adaptive_avgpool(1) from a\n"
        "        v = adaptive_avgpool(1) from b\n        s = add from u, v"
    )
    path = tmp_path / "spec.arch"
    path.write_text(_block(body))
    analysis = analyse(Loader().load(path))
    assert analysis.ok, [d.message for d in analysis.errors]
    model = build_module(path).eval()
    assert model(torch.randn(1, 8, 16, 16)).shape == (1, 8, 1, 1)
    assert analysis.params == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The tensor ops outside a block body: the stem, head, a stage's own layers, a seq and a
# shortcut are modules called in order, so a function of forward() (and `from`, `when`,
# `repeat`) is a located body-only error there; in a block's main or post each one runs as
# torch runs it.

FUNCTIONS = ["split(2)", "concat", "add", "mul", "channel_mean", "channel_max"]
PLACES = {
    "stem": ("network n {{\n    input 8x8x8\n    stem {{ t = {op} }}\n}}\n", 3),
    "head": (
        "block B() {{ main {{ c = conv(8, 1) }} }}\nnetwork n {{\n    input 8x8x8\n"
        "    stage s = 1 x B()\n    head {{ t = {op} }}\n}}\n",
        5,
    ),
    "stage": (
        "block B() {{ main {{ c = conv(8, 1) }} }}\nnetwork n {{\n    input 8x8x8\n"
        "    stage s = 1 x B() in blocks {{ t = {op} }}\n}}\n",
        4,
    ),
    "seq": (
        "block B() {{ main {{ m = seq {{ conv(8, 1)  {op} }} }} }}\nnetwork n {{\n"
        "    input 8x8x8\n    stage s = 1 x B()\n}}\n",
        1,
    ),
    "shortcut": (
        "block B() {{\n    main {{ c = conv(8, 1) }}\n    shortcut d {{ {op} }}\n"
        "    merge add\n}}\nnetwork n {{\n    input 8x8x8\n    stage s = 1 x B()\n}}\n",
        3,
    ),
}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("op", FUNCTIONS)
def test_a_tensor_function_outside_a_block_body_is_a_located_error(tmp_path, op, place):
    text, line = PLACES[place]
    errors = _errors(tmp_path, text.format(op=op))
    assert [(str(e.code), e.span.line) for e in errors][:1] == [("body-only", line)]
    assert f"`{op.split('(')[0]}` is code in a block's forward()" in errors[0].message


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        ("d = conv(8, 1) from c", "`from` works in a block's `main` and `post`"),
        ("d = conv(8, 1) when (n > 1)", "a layer's `when` works"),
        ("d = repeat i < 2 { e = conv(8, 1) }", "`repeat` works"),
    ],
)
def test_body_constructs_in_the_stem_are_located_errors(tmp_path, layer, words):
    """The stem's forward() calls its modules in order: a `from` or `when` there would be
    dropped from the generated code, so each is refused where it is written."""
    text = (
        f"network m {{\n    input 8x8x8\n    param n = 1\n    stem {{\n        c = conv(8, 1)\n"
        f"        {layer}\n    }}\n}}\n"
    )
    errors = _errors(tmp_path, text)
    assert [(str(e.code), e.span.line) for e in errors][:1] == [("body-only", 6)]
    assert words in errors[0].message


@pytest.mark.parametrize(
    ("body", "reference"),
    [
        ("t = channel_max", lambda x: x.amax(1, keepdim=True)),
        ("t = channel_mean", lambda x: x.mean(1, keepdim=True)),
        (
            "s = split(2)\n        t = concat from s[1], s[0]",
            lambda x: torch.cat(x.chunk(2, 1)[::-1], 1),
        ),
        ("s = split(2)\n        t = add from s", lambda x: sum(x.chunk(2, 1))),
        ("s = split(2)\n        t = mul from s[0], s[1]", lambda x: x[:, :4] * x[:, 4:]),
        ("t = radix_softmax(2)", lambda x: x.view(1, 1, 2, -1).softmax(2).reshape(x.shape)),
    ],
)
def test_each_tensor_op_alone_in_a_block_runs_as_torch(tmp_path, body, reference):
    """One op as a whole block body (a block whose output is channel_mean's one channel
    included): the generated block is torch's expression."""
    path = tmp_path / "spec.arch"
    path.write_text(_block(f"        {body}"))
    analysis = analyse(Loader().load(path))
    assert analysis.ok, [d.message for d in analysis.errors]
    model = build_module(path).eval()
    x = torch.randn(1, 8, 16, 16)
    expected = reference(x)
    assert analysis.output == tuple(expected.shape[1:])
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_a_failing_branch_is_drawn_red(tmp_path):
    """A concat of 8x8x8 and 8x16x16: the join carries the message, and both branches, from
    the fork to the join, are red; the layer before the fork is not."""
    from resgen import diagram

    text = _block(
        "        pre = conv(8, 1)\n"
        "        a = conv(8, 3, stride=2, padding=1) from pre\n"
        "        a2 = relu\n"
        "        b = conv(8, 1) from pre\n"
        "        c = concat from a2, b"
    )
    spec = _load(tmp_path, text)
    source = diagram.to_dot(spec, analyse(spec), "layers")
    red = {
        (m.group(1), m.group(2))
        for m in re.finditer(r'"?([\w.]+)"? -> "?([\w.]+)"? \[[^\]]*color="#cc1f1a"', source)
    }
    assert {("s.0.pre", "s.0.a"), ("s.0.a", "s.0.a2"), ("s.0.a2", "s.0.c")} <= red
    assert {("s.0.pre", "s.0.b"), ("s.0.b", "s.0.c")} <= red
    assert not any(v == "s.0.pre" for _, v in red)
    assert "concat of 8x8x8 and 8x16x16: the inputs&#x27; H x W" in source
