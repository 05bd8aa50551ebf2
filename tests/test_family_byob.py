"""timm's ByobNet families beyond GENet (timm/models/byobnet.py) and the RegNets of
timm/models/regnet.py that share their layers: RegNetZ (std.byob's RegNetZBottleneck, std.regnetz's
RegNetZBlock), the SiLU ResNets "ts" / "q" with squeeze-excite, ECA or global-context attention.

Every spec is checked weight for weight by tests/timm_coverage.py and its keys and shapes by
tests/test_timm_manifest.py (which also compares the outputs of the smallest model of each kind).
Here, what those do not see, each against timm's own modules:
- RegNetZ has no residual on a block whose shape changes: which blocks add their input is read
  from timm's model (its `shortcut` / `downsample` is None), not assumed;
- every block type and stem, in small ByobNets that timm builds from the same configuration
  (outputs for each, in a second or two, where the full models take a minute).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import timm_coverage as coverage  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs" / "timm"


def residual_flags(reference: torch.nn.Module, model: torch.nn.Module, shortcut: str):
    """Block name -> whether it adds its input, from timm's model (its block's `shortcut` or
    `downsample` attribute is None where there is no residual) and from ours (`residual`)."""
    blocks = [name for name, module in reference.named_modules() if hasattr(module, shortcut)]
    ours = dict(model.named_modules())
    theirs = dict(reference.named_modules())
    return (
        {name: getattr(theirs[name], shortcut) is not None for name in blocks},
        {name: ours[name].residual for name in blocks},
    )


@pytest.mark.parametrize(
    ("name", "shortcut", "without"),
    [
        ("regnetz_b16", "shortcut", {"stages.0.0", "stages.1.0", "stages.2.0", "stages.3.0"}),
        # stage 0 keeps the stem's 64 channels at stride 1: its first block adds its input
        ("regnetz_d32", "shortcut", {"stages.1.0", "stages.2.0", "stages.3.0"}),
        ("regnetz_005", "downsample", {"s1.b1", "s2.b1", "s3.b1", "s4.b1"}),
    ],
)
def test_regnetz_adds_the_input_only_where_timm_has_a_shortcut(name, shortcut, without):
    """timm builds no shortcut where a RegNetZ block changes the shape (downsample=''/None);
    the other blocks add their input."""
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
    model = coverage.build_on_meta(SPECS / f"{name}.arch")
    theirs, ours = residual_flags(reference, model, shortcut)
    assert ours == theirs
    assert {block for block, adds in theirs.items() if not adds} == without


# ---------------------------------------------------------------------------------------------
# Every block type and stem of std.byob against timm's ByobNet built from a small ByoModelCfg of
# the same pieces (the full models are checked by the coverage script; these run in a second).

TINY = {
    # resnet61q's pieces: the quad stem, an edge block, bottlenecks with a second kxk conv
    # (extra_conv), with global context ('gca') after every kxk conv
    "quad_edge_extra_conv_gc": (
        dict(
            blocks=(
                ("edge", dict(d=1, c=48, s=1, gs=0, br=1.0, block_kwargs={})),
                ("bottle", dict(d=2, c=64, s=2, gs=8, br=0.25)),
            ),
            stem_chs=32,
            stem_type="quad",
            stem_pool=None,
            act_layer="silu",
            attn_layer="gca",
            block_kwargs=dict(extra_conv=True),
        ),
        """
        stem { stem = QuadStem(32, act_layer=act) }
        stage stages.0 = 1 x ByobEdgeAct(48, attn_layer=gc, act_layer=act)
        stage stages.1 = 2 x ByobBottleneck2Act(64, stride=2, bottle_ratio=0.25, group_size=8,
                                                attn_layer=gc, act_layer=act)
        """,
    ),
    # resnet51q's stem, seresnet33ts's squeeze-excite bottleneck, a final 1x1 ConvNormAct
    "quad2_se_final_conv": (
        dict(
            blocks=(
                ("bottle", dict(d=1, c=48, s=1, gs=0, br=0.25)),
                ("bottle", dict(d=2, c=64, s=2, gs=0, br=0.25)),
            ),
            stem_chs=32,
            stem_type="quad2",
            stem_pool=None,
            num_features=48,
            act_layer="silu",
            attn_layer="se",
        ),
        """
        stem { stem = Quad2Stem(32, act_layer=act) }
        stage stages.0 = 1 x ByobSEBottleneckAct(48, bottle_ratio=0.25, act_layer=act)
        stage stages.1 = 2 x ByobSEBottleneckAct(64, stride=2, bottle_ratio=0.25, act_layer=act)
        head_conv final_conv = ConvNormAct(48, act_layer=act)
        """,
    ),
    # regnetz_d32's tiered stem and inverted bottlenecks (no residual where the shape changes)
    "tiered_regnetz": (
        dict(
            blocks=(
                ("bottle", dict(d=2, c=24, s=1, gs=8, br=3)),
                ("bottle", dict(d=2, c=32, s=2, gs=8, br=3)),
            ),
            stem_chs=32,
            stem_type="tiered",
            stem_pool="",
            downsample="",
            act_layer="silu",
            attn_layer="se",
            attn_kwargs=dict(rd_ratio=0.25),
            block_kwargs=dict(bottle_in=True, linear_out=True),
        ),
        """
        stem { stem = TieredStem(32, act_layer=act) }
        stage stages.0 = 2 x RegNetZBottleneck(24, 8, bottle_ratio=3.0, act_layer=act)
        stage stages.1 = 2 x RegNetZBottleneck(32, 8, stride=2, bottle_ratio=3.0, act_layer=act)
        """,
    ),
    # resnext26ts's stem with its max pool, ECA after the grouped conv
    "tiered_maxpool_eca": (
        dict(
            blocks=(
                ("bottle", dict(d=2, c=64, s=1, gs=4, br=0.25)),
                ("bottle", dict(d=1, c=96, s=2, gs=4, br=0.25)),
            ),
            stem_chs=32,
            stem_type="tiered",
            stem_pool="maxpool",
            act_layer="silu",
            attn_layer="eca",
        ),
        """
        stem { stem = TieredStemMaxPool(32, act_layer=act) }
        stage stages.0 = 2 x ByobBottleneckAct(64, bottle_ratio=0.25, group_size=4,
                                               attn_layer=eca, act_layer=act)
        stage stages.1 = 1 x ByobBottleneckAct(96, stride=2, bottle_ratio=0.25, group_size=4,
                                               attn_layer=eca, act_layer=act)
        """,
    ),
}


def _tiny_timm(config: dict) -> torch.nn.Module:
    from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

    config = dict(config)
    blocks = tuple(ByoBlockCfg(type=kind, **fields) for kind, fields in config.pop("blocks"))
    return ByobNet(ByoModelCfg(blocks=blocks, **config), num_classes=10)


def _tiny_spec(body: str, tmp_path: Path) -> Path:
    stages, _, final = body.partition("head_conv ")
    path = tmp_path / "tiny.arch"
    path.write_text(
        "import std.byob\n\nnetwork tiny {\n    class ByobNet\n    input 3x32x32\n"
        "    param act = silu(inplace=true)\n"
        "    param gc = global_context(fuse_add=true, fuse_scale=false)\n"
        + stages
        + "    head {\n        "
        + final
        + "\n        head = seq { global_pool = adaptive_avgpool(1)  flatten = flatten"
        + "  fc = linear(10) }\n    }\n}\n"
    )
    return path


@pytest.mark.parametrize("name", sorted(TINY))
def test_blocks_match_timm_byobnet(name, tmp_path):
    """Keys, key order and shapes, a strict load, and eval outputs (random batch-norm
    statistics, random global-context MLPs and classifier: timm zero-initialises the added MLP's
    last conv, which would hide it, and draws the classifier's weights with std 0.01). The
    quad2/SE case has middle widths of 12, which timm's make_divisible rounds up to 16."""
    from batchnorms import randomise_batchnorms

    from resgen.build import build_module

    config, body = TINY[name]
    torch.manual_seed(0)
    reference = _tiny_timm(config).eval()
    randomise_batchnorms(reference, seed=1, weight=(0.2, 0.5), var=(0.5, 1.5))
    with torch.no_grad():
        for key, value in reference.state_dict().items():
            if ".mlp_add.fc2." in key or key.startswith("head.fc."):
                value.copy_(0.1 * torch.randn(value.shape))
    model = build_module(_tiny_spec(body, tmp_path)).eval()
    theirs = reference.state_dict()
    assert coverage.state_dict_layout(model) == coverage.state_dict_layout(reference)
    model.load_state_dict(theirs, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = reference(x), model(x)
    assert expected.abs().max().item() > 1e-2  # a signal
    assert (actual - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
