"""timm's attention families: CLIP's attention-pool head (timm.layers.AttentionPool2d) and the
self-attention ResNets of byoanet.py. Each op of resgen.ops.selfattention against timm's own
layer module, never against resgen itself:

- the generated module has timm's state_dict keys, in timm's order, with timm's shapes, loads
  timm's (random) state_dict strictly and gives timm's output, at every input size it accepts;
- the shape engine's output shape is torch's; parameters are torch's `numel` sums; MACs are half
  the FLOPs torch.utils.flop_counter counts with scaled_dot_product_attention in its math
  backend (which it counts as the matrix products it is);
- the generated module passes torch.jit.script with the same output;
- bad arguments and input sizes are located errors.

Whole networks are compared with timm by tests/timm_coverage.py; the default suite checks them
through tests/data/timm_manifest.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
timm_layers = pytest.importorskip("timm.layers")

from timm.layers import bottleneck_attn, halo_attn, lambda_layer  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from resgen import codegen  # noqa: E402
from resgen.build import import_source  # noqa: E402
from resgen.resolve import Loader  # noqa: E402
from resgen.shapes import analyse  # noqa: E402


@dataclass
class Case:
    layer: str  # the .arch layer
    reference: Callable[[int], nn.Module]  # input channels -> timm's module
    channels: int
    sizes: tuple  # (H, W) inputs: the first is the spec's
    tolerance: float = 1e-5


CASES: dict[str, Case] = {
    # CLIP's head: separate q, k, v (as ByobNet builds it), other sizes resample the embedding
    "attention_pool2d": Case(
        "attention_pool2d(out_features=10, feat_size=(4, 3), head_dim=8, qkv_separate=true)",
        lambda c: timm_layers.AttentionPool2d(
            c, feat_size=(4, 3), out_features=10, head_dim=8, qkv_separate=True
        ),
        channels=32,
        sizes=((4, 3), (7, 7), (2, 5), (1, 1)),
    ),
    # one qkv Linear, heads by number, a narrower embedding (timm cannot build it without
    # biases: its init_weights zeroes them unconditionally)
    "attention_pool2d_qkv": Case(
        "attention_pool2d(feat_size=5, embed_dim=24, num_heads=3)",
        lambda c: timm_layers.AttentionPool2d(c, feat_size=5, embed_dim=24, num_heads=3),
        channels=16,
        sizes=((5, 5), (3, 8)),
    ),
    # BoT: relative position tables for 8 x 6, pooled by 2; and timm's qk_ratio rounding
    "bottleneck_attn": Case(
        "bottleneck_attn(24, feat_size=(8, 6), stride=2, num_heads=2, dim_head=4)",
        lambda c: bottleneck_attn.BottleneckAttn(
            c, 24, feat_size=(8, 6), stride=2, num_heads=2, dim_head=4
        ),
        channels=16,
        sizes=((8, 6),),
    ),
    "bottleneck_attn_ratio": Case(
        "bottleneck_attn(feat_size=5, qk_ratio=0.5, qkv_bias=true, scale_pos_embed=true)",
        lambda c: bottleneck_attn.BottleneckAttn(
            c, feat_size=(5, 5), qk_ratio=0.5, qkv_bias=True, scale_pos_embed=True
        ),
        channels=40,
        sizes=((5, 5),),
    ),
    # Halo: 4 x 4 blocks with a halo of 1 over 8 x 12; strided queries; an odd block pooled
    "halo_attn": Case(
        "halo_attn(16, num_heads=2, block_size=4, halo_size=1)",
        lambda c: halo_attn.HaloAttn(c, 16, num_heads=2, block_size=4, halo_size=1),
        channels=8,
        sizes=((8, 12), (4, 4), (16, 8)),
    ),
    "halo_attn_stride_2": Case(
        "halo_attn(24, stride=2, num_heads=4, dim_head=4, block_size=4, halo_size=2, "
        "qkv_bias=true, scale_pos_embed=true)",
        lambda c: halo_attn.HaloAttn(
            c,
            24,
            stride=2,
            num_heads=4,
            dim_head=4,
            block_size=4,
            halo_size=2,
            qkv_bias=True,
            scale_pos_embed=True,
        ),
        channels=8,
        sizes=((8, 8), (4, 12)),
    ),
    "halo_attn_avg_down": Case(
        "halo_attn(stride=2, num_heads=2, block_size=3, halo_size=1)",
        lambda c: halo_attn.HaloAttn(c, stride=2, num_heads=2, block_size=3, halo_size=1),
        channels=16,
        sizes=((6, 6), (12, 6)),
    ),
    # Lambda: a 5 x 5 lambda convolution at any size; relative positions over a fixed 6 x 4
    "lambda_layer": Case(
        "lambda_layer(num_heads=2, dim_head=8, r=5)",
        lambda c: lambda_layer.LambdaLayer(c, num_heads=2, dim_head=8, r=5),
        channels=16,
        sizes=((6, 6), (3, 7), (1, 1)),
    ),
    "lambda_layer_rel_stride_2": Case(
        "lambda_layer(feat_size=(6, 4), stride=2, dim_head=4, r=0, qkv_bias=true)",
        lambda c: lambda_layer.LambdaLayer(
            c, feat_size=(6, 4), stride=2, dim_head=4, r=None, qkv_bias=True
        ),
        channels=16,
        sizes=((6, 4),),
    ),
}


def _text(case: Case, h: int, w: int) -> str:
    stem = f"    stem {{ op = {case.layer} }}"
    return f"network one {{\n    input {case.channels}x{h}x{w}\n{stem}\n}}\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (spec, the generated model, its module); one build per op."""
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
    generator = torch.Generator().manual_seed(h * 100 + w)
    return torch.randn(batch, case.channels, h, w, generator=generator)


@torch.no_grad()
def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Every floating tensor of the state_dict random, those timm initialises to zero too
    (batch norms' running variances positive)."""
    generator = torch.Generator().manual_seed(seed)
    for key, tensor in module.state_dict().items():
        if key.endswith("running_var"):  # a variance: positive
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        elif tensor.is_floating_point():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_and_counts_are_torch_s(name, built):
    case = CASES[name]
    spec, model = built(name)
    for h, w in case.sizes:
        analysis = analyse(spec, (None, h, w))
        assert analysis.ok, (h, w, [d.message for d in analysis.diagnostics])
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as flops:
            with torch.no_grad():
                out = model(_input(case, h, w, batch=1))
        assert tuple(out.shape[1:]) == tuple(analysis.output), (h, w)
        assert analysis.params == sum(p.numel() for p in model.parameters())
        assert analysis.buffers == sum(b.numel() for b in model.buffers())
        assert 2 * analysis.macs == flops.get_total_flops(), (h, w)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_timm_s_layer(name, built):
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
    scripted = torch.jit.script(ours)
    for h, w in case.sizes:
        x = _input(case, h, w)
        with torch.no_grad():
            expected, got, script = reference(x), ours(x), scripted(x)
        assert got.shape == expected.shape
        scale = max(1.0, expected.abs().max().item())
        for actual in (got, script):
            difference = (actual - expected).abs().max().item()
            assert difference <= case.tolerance * scale, (name, h, w, difference)


# name -> (layer, input channels, (H, W), code, words of the message, where it points)
BAD = {
    "heads": (
        "attention_pool2d(head_dim=12)",
        16,
        (4, 4),
        "bad-argument",
        "head_dim=12 does not divide it",
        "head_dim=",
    ),
    "num_heads": (
        "attention_pool2d(embed_dim=24, num_heads=5)",
        16,
        (4, 4),
        "bad-argument",
        "num_heads=5 does not divide it",
        "num_heads=",
    ),
    "bot-heads": (
        "bottleneck_attn(30, feat_size=4)",
        16,
        (4, 4),
        "bad-argument",
        "dim_out 30 into num_heads=4 heads",
        "op =",
    ),
    "bot-stride": (
        "bottleneck_attn(feat_size=4, stride=3)",
        16,
        (4, 4),
        "bad-argument",
        "a stride of 1 or 2, not 3",
        "stride=",
    ),
    "bot-size": (
        "bottleneck_attn(feat_size=(4, 6))",
        16,
        (4, 4),
        "bad-argument",
        "learned for 4x6 inputs (feat_size), but its input is 16x4x4",
        "feat_size=",
    ),
    "halo-size": (
        "halo_attn(num_heads=2, block_size=4)",
        16,
        (8, 6),
        "indivisible-size",
        "cuts its input into 4x4 blocks (block_size), but its input is 16x8x6",
        "block_size=",
    ),
    "lambda-size": (
        "lambda_layer(feat_size=5, r=0)",
        16,
        (4, 4),
        "bad-argument",
        "learned for 5x5 inputs (feat_size), but its input is 16x4x4",
        "feat_size=",
    ),
    "lambda-no-size": (
        "lambda_layer(r=0)",
        16,
        (4, 4),
        "missing-argument",
        "give feat_size",
        "r=",
    ),
    "lambda-even-r": (
        "lambda_layer(r=4)",
        16,
        (4, 4),
        "bad-argument",
        "only for an odd r, not 4",
        "r=",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_arguments_and_inputs_are_located_errors(name, tmp_path):
    layer, channels, (h, w), code, words, at = BAD[name]
    line = f"    stem {{ op = {layer} }}"
    path = tmp_path / "bad.arch"
    path.write_text(f"network bad {{\n    input {channels}x{h}x{w}\n{line}\n}}\n")
    analysis = analyse(Loader().load(path))
    errors = [d for d in analysis.diagnostics if d.severity == "error"]
    assert [d.code for d in errors] == [code], [d.message for d in errors]
    assert words in errors[0].message
    assert (errors[0].span.line, errors[0].span.column) == (3, line.index(at) + 1)


ALL_LAYERS = """
network every {
    input 8x16x16
    stem {
        halo = halo_attn(16, stride=2, num_heads=2, block_size=4, halo_size=1)
        bot = bottleneck_attn(feat_size=8, num_heads=2)
        pool = attention_pool2d(out_features=5, feat_size=8, head_dim=8, qkv_separate=true)
    }
}
"""


def test_every_layer_exports_and_trains(tmp_path):
    """One model of every self-attention op passes torch.export with eager mode's output, and
    trains one step: every parameter gets a gradient."""
    path = tmp_path / "every.arch"
    path.write_text(ALL_LAYERS)
    spec = Loader().load(path)
    analysis = analyse(spec)
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    model = import_source(codegen.generate(spec, analysis), "every").every().eval()
    x = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-6)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in model.parameters())


CONV = "c = conv(8, 3, stride=2, padding=1)"
SIZED = {  # name -> (the spec's input size, its layers)
    # a strided conv, then 4 x 4 blocks: inputs whose halved size is a multiple of 4
    "halo": (16, f"{CONV}  op = halo_attn(num_heads=2, block_size=4)"),
    # position tables for 6 x 6 after the strided conv: 11 and 12 only
    "bot": (12, f"{CONV}  op = bottleneck_attn(feat_size=6, num_heads=2)"),
    "lambda": (12, f"{CONV}  op = lambda_layer(feat_size=6, r=0, dim_head=4)"),
}


@pytest.mark.parametrize("name", sorted(SIZED))
def test_accepted_input_sizes_are_those_torch_runs(name, tmp_path):
    """The input sizes `check` reports as accepted are exactly those the generated model runs
    on, for layers that refuse sizes of their own (blocks, position tables)."""
    path = tmp_path / "sized.arch"
    size, layers = SIZED[name]
    path.write_text(f"network sized {{\n    input 8x{size}x{size}\n    stem {{ {layers} }}\n}}\n")
    spec = Loader().load(path)
    analysis = analyse(spec)
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    model = import_source(codegen.generate(spec, analysis), "sized").sized().eval()
    for n in range(4, 30):
        try:
            with torch.no_grad():
                model(torch.randn(1, 8, n, n))
            runs = True
        except (RuntimeError, ValueError):
            runs = False
        assert analysis.input_sizes.accepts(n, n) is runs, n
