"""zero_init_residual against torch: each op's declaration (Op.maps_zero, Op.zeroed) checked on
its own module, then random residual blocks: with the option on, a block with an identity
shortcut and no post-merge layer returns its input exactly, and a block resgen leaves alone is
one where zeroing no single layer of the residual branch would make it do so (found by trying
each in torch)."""

from __future__ import annotations

import random
import re

import pytest

from resgen import ops
from resgen.build import analyse, import_source, load
from resgen.codegen import generate

torch = pytest.importorskip("torch")

# One use of each built-in op, as the only layer of a network on a 4x6x6 input (flat ops get a
# flatten first); `None` marks ops resgen cannot zero-initialise.
OP_USES = [
    "conv(4, 3, padding=1)",
    "conv(4, 3, padding=1, bias=false)",
    "batchnorm",
    "relu",
    "relu(inplace=true)",
    "sigmoid",
    "maxpool(3, stride=1, padding=1)",
    "avgpool(3, stride=1, padding=1)",
    "adaptive_avgpool(2)",
    "flatten",
    "linear(5)",
    "linear(5, bias=false)",
    "dropout",
    "identity",
    "pad_channels(6)",
    "layer_scale(0.5)",
    "skipinit",
    "skipinit(init=0.5)",
    # the layers issue's ops
    "silu",
    "gelu",
    "gelu_tanh",
    "leaky_relu",
    "elu",
    "hardswish",
    "hardsigmoid",
    "mish",
    "tanh",
    "prelu",
    "prelu(per_channel=true)",
    "groupnorm(2)",
    "evonorms0(groups=2)",
    "evonorms0(apply_act=false)",
    "evonorms0a(group_size=2)",
    "evonorms0a(groups=2, apply_act=false)",
    "frntlu",
    "frntlu(apply_act=false)",
    "layernorm2d",
    "rmsnorm2d",
    "simplenorm2d",
    "grn",
    "frozen_batchnorm",
    "batchnorm1d",
    "adaptive_maxpool(2)",
    "adaptive_avgmaxpool(2)",
    "adaptive_catavgmaxpool(2)",
    "blurpool",
    "constant_pad(1)",
    "constant_pad(1, value=0.5)",
    "space_to_depth(2)",
    "std_conv(4, 3, padding=1)",
    "scaled_std_conv(4, 3, padding=1)",
    "scaled_std_conv(4, 3, padding=1, bias=false)",
    "scaled_std_conv_same(4, 3, stride=2)",
    "scaled_std_conv_same(4, 3, bias=false)",
    "channel_linear(4)",
    "channel_linear(4, bias=false)",
    "eca",
    "global_context",
    "global_context(fuse_add=true, fuse_scale=false)",
    "scale(0.5)",
    "drop_path(0.5)",
    # self-attention
    "attention_pool2d(feat_size=6, head_dim=2)",
    "bottleneck_attn(feat_size=6, num_heads=2)",
    "bottleneck_attn(feat_size=6, num_heads=2, qkv_bias=true)",
    "halo_attn(num_heads=2, block_size=3, halo_size=1)",
    "halo_attn(stride=2, num_heads=2, block_size=3, qkv_bias=true)",
    "lambda_layer(num_heads=2, dim_head=4, r=3)",
    "lambda_layer(feat_size=6, stride=2, num_heads=2, dim_head=4, r=0)",
]


def _network(tmp_path, body: str, name="n"):
    path = tmp_path / f"{name}.arch"
    path.write_text(body)
    spec = load(path)
    analysis = analyse(spec)
    assert analysis.ok, analysis.diagnostics
    source = generate(spec, analysis)
    return spec, analysis, source, import_source(source, spec.network.name)


def test_every_builtin_op_is_covered():
    used = {re.match(r"\w+", use).group() for use in OP_USES + [b for b, _ in TENSOR_USES]}
    assert used == {op.name for op in ops.registered() if not isinstance(op, ops.Merge)}


# The tensor ops are code in a block's forward(), so each is checked inside a block body on a
# zero input `x`: `b = sigmoid from x` is a value that is not zero (0.5), `x` one that is.
# Each use names the inputs it reads; the op's declaration (Op.maps_zero, for a join
# Op.maps_zeros with the inputs' flags) must say what torch gives.
TENSOR_USES = [
    ("split(2) from x", ["x"]),
    ("split(2) from b", ["b"]),
    ("concat from x, x", ["x", "x"]),
    ("concat from x, b", ["x", "b"]),
    ("add from x, x", ["x", "x"]),
    ("add from x, b", ["x", "b"]),
    ("mul from x, b", ["x", "b"]),
    ("mul from b, x", ["b", "x"]),
    ("mul from b, b", ["b", "b"]),
    ("radix_softmax(2) from x", ["x"]),
    ("radix_softmax(1) from x", ["x"]),
    ("channel_mean from x", ["x"]),
    ("channel_max from x", ["x"]),
]


@pytest.mark.parametrize(("use", "names"), TENSOR_USES)
@torch.no_grad()
def test_tensor_op_declarations_match_torch(tmp_path, use, names):
    join = "        j = concat from t\n" if use.startswith("split") else ""
    text = (
        f"block B() {{\n    main {{\n        b = sigmoid from x\n        t = {use}\n{join}"
        "    }\n}\nnetwork n { input 4x6x6 stage s = 1 x B() }\n"
    )
    _, analysis, _, module = _network(tmp_path, text)
    node = analysis.nodes["s.0.t"]
    out = module.n().eval()(torch.zeros(2, 4, 6, 6))
    zeros = [name == "x" for name in names]
    op = node.op
    declared = op.maps_zeros(node.args, zeros) if op.arity == "many" else op.maps_zero(node.args)
    assert bool((out == 0).all()) is (declared and zeros[0] if op.arity != "many" else declared)


@pytest.mark.parametrize("use", OP_USES)
@torch.no_grad()
def test_op_declarations_match_torch(tmp_path, use):
    flat = use.startswith(("linear", "batchnorm1d"))
    stem = ("f = flatten " if flat else "") + f"l = {use}"
    _, analysis, _, module = _network(tmp_path, f"network n {{ input 4x6x6 stem {{ {stem} }} }}")
    node = analysis.nodes["l"]
    net = module.n()  # the whole network (a flatten, then the layer): layer_scale is its own
    layer = net.l
    shape = (2, 4, 6, 6)
    for mode in (net.train, net.eval):  # batch norm: batch statistics and running ones
        mode()
        out = net(torch.zeros(shape))
        assert bool((out == 0).all()) is node.op.maps_zero(node.args), use
    zeroed = node.op.zeroed(node.args)
    if zeroed:
        for name in zeroed:
            torch.nn.init.constant_(getattr(layer, name), 0)
        assert bool((net(torch.randn(shape)) == 0).all()), use
    else:  # nothing to zero: no parameters, or they cannot give zeros
        assert not list(net.parameters()) or not node.op.zeroed(node.args)


# Layers that keep C x H x W, to build residual branches from.
LAYERS = [
    "conv(in_channels, 3, padding=1)",
    "conv(in_channels, 3, padding=1, bias=false)",
    "conv(in_channels, 1)",
    "batchnorm",
    "relu",
    "sigmoid",
    "identity",
    "dropout",
    "avgpool(3, stride=1, padding=1)",
    "maxpool(3, stride=1, padding=1)",
    "seq { conv(in_channels, 1, bias=false) batchnorm }",
    "seq { batchnorm sigmoid }",
    "SE()",
    "ConvBN()",
    "Gated()",
]

LIBRARY = """
block SE() {
    main {
        pool = adaptive_avgpool(1) fc1 = conv(2, 1) act = relu fc2 = conv(in_channels, 1)
        gate = sigmoid
    }
    merge mul
}
block ConvBN() { main { conv = conv(in_channels, 1, bias=false) bn = batchnorm } }
block Gated() { main { conv = conv(in_channels, 1) act = sigmoid } merge mul }
"""


def _random_blocks(seed: int, count: int) -> list[tuple[str, bool]]:
    rng = random.Random(seed)
    blocks = []
    for _ in range(count):
        layers = [rng.choice(LAYERS) for _ in range(rng.randint(1, 4))]
        blocks.append(
            (" ".join(f"l{i} = {layer}" for i, layer in enumerate(layers)), rng.random() < 0.25)
        )
    return blocks


@torch.no_grad()
def test_random_residual_blocks_start_as_their_shortcut(tmp_path):
    blocks = _random_blocks(13, 40)
    # A branch ending in a layer that saves its output (sigmoid) cannot be added to in place
    # (`out += identity`): check says so (overwrites-saved); those draws are left out.
    # (After a convolution, as in the network: the input itself needs no gradient.)
    lead = "c = conv(4, 1)"
    trainable = [b for b in blocks if _spec_ok(tmp_path, _residual_network([b], lead))]
    blocks = trainable
    _, _, source, module = _network(tmp_path, _residual_network(blocks))
    zeroed = set(re.findall(r"isinstance\(module, (R\d+)\)", source))
    model = module.n(zero_init_residual=True).eval()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    checked = 0
    for index, (main, projection) in enumerate(blocks):
        block = getattr(model, f"b{index}")
        expected = block.proj(x) if projection else x
        if f"R{index}" in zeroed:
            assert torch.equal(block(x), expected), main
            checked += 1
        else:
            assert f"`R{index}` is left as it is" in source
            assert not _some_layer_zeroes(module.n().eval(), f"b{index}", x, projection), main
    assert 10 <= checked < len(blocks)  # the draw exercises both answers


def _residual_network(blocks, lead: str = "") -> str:
    text = LIBRARY
    for index, (main, projection) in enumerate(blocks):
        shortcut = "shortcut proj { conv(in_channels, 1) }" if projection else ""
        text += f"block R{index}() {{ main {{ {main} }} {shortcut} merge add }}\n"
    stem = " ".join(f"b{i} = R{i}()" for i in range(len(blocks)))
    return text + f"network n {{ input 4x6x6 stem {{ {lead} {stem} }} }}"


def _spec_ok(tmp_path, text: str) -> bool:
    path = tmp_path / "one.arch"
    path.write_text(text)
    return analyse(load(path)).ok


def _some_layer_zeroes(model, name: str, x, projection: bool) -> bool:
    """Whether zeroing all parameters of one module of the residual branch makes the block
    return its shortcut exactly: tried on each module that has parameters."""
    block = getattr(model, name)
    candidates = [m for n, m in block.named_modules() if n and not n.startswith("proj")]
    for module in candidates:
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        saved = [p.detach().clone() for p in params]
        for p in params:
            p.zero_()
        same = torch.equal(block(x), block.proj(x) if projection else x)
        for p, value in zip(params, saved, strict=True):
            p.copy_(value)
        if same:
            return True
    return False


@torch.no_grad()
def test_the_issue_example_convnext_like(tmp_path):
    """dwconv -> norm -> 1x1 conv with bias -> act -> 1x1 conv with bias: zeroing the norm left
    the output up to 0.75 away from the input; zeroing the last conv's weight and bias makes the
    block an identity."""
    text = """block CNX() {
    main {
        dw = conv(in_channels, 3, padding=1, groups=in_channels)
        norm = batchnorm
        pw1 = conv(in_channels * 4, 1)
        act = relu
        pw2 = conv(in_channels, 1)
    }
    merge add
}
network n { input 8x8x8 stem { b = CNX() } }
"""
    _, _, source, module = _network(tmp_path, text)
    assert "nn.init.constant_(module.pw2.weight, 0)" in source
    assert "nn.init.constant_(module.pw2.bias, 0)" in source
    model = module.n(zero_init_residual=True).eval()
    x = torch.randn(2, 8, 8, 8)
    assert torch.equal(model(x), x)


def test_torchvision_blocks_keep_their_rule_and_comment():
    from pathlib import Path

    spec = load(Path(__file__).resolve().parents[1] / "specs" / "resnet50.arch")
    source = generate(spec)
    assert "nn.init.constant_(module.bn3.weight, 0)" in source
    assert "# Zero-initialise the last BN of each residual branch" in source
    assert "left as it is" not in source


BRANCHY_RESIDUAL = """
import std.cbam
import std.res2net
import std.sknet
block Cat() {
    main {
        a = conv(in_channels // 2, 1) from x
        bn_a = batchnorm
        c = conv(in_channels // 2, 1) from x
        bn_c = batchnorm
        cat = concat from bn_a, bn_c
    }
    merge add
}
network n {
    input 32x8x8
    stage s1 = 2 x CBAMBottleneck(8, reduction_ratio=4)
    stage s2 = 2 x Bottle2neck(8, base_width=32, scale=2)
    stage s3 = 2 x SKBasicBlock(32)
    stage s4 = 1 x Cat()
}
"""


@torch.no_grad()
def test_blocks_that_fork_and_join_start_as_their_shortcut(tmp_path):
    """zero_init_residual through a body's paths: CBAM's gates (x * gate) keep the zeros of
    bn3, Res2Net's and SKNet's last norm comes after their joins; a block whose branch ends in
    a concat of two normed paths has no single layer to zero, and torch agrees."""
    _, _, source, module = _network(tmp_path, BRANCHY_RESIDUAL)
    model = module.n(zero_init_residual=True).eval()
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    for stage in ("s1", "s2", "s3"):
        block = getattr(model, stage)[1]  # an identity shortcut, a ReLU after the sum
        assert torch.equal(block(x), torch.relu(x)), stage
    assert "`Cat` is left as it is: no single layer's zeros reach" in source
    assert not _some_layer_zeroes(module.n().eval(), "s4", x, projection=False)
