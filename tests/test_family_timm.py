"""timm's ResNet family written in .arch (std.timm, std.senet): each network loads the
state_dict of `timm.create_model(NAME)` strictly and computes the same outputs.

ResNet-D (Bag of Tricks, He et al. 2019): deep 3x3 stem and average-pool projection shortcut;
SE-ResNet (Hu et al. 2018): squeeze-and-excitation written as an .arch block with `merge mul`,
its squeeze width rounded as timm rounds it (std.timm) or not (the original SENets, std.senet).
tests/timm_coverage.py checks every timm model of these kinds; these are the everyday few.
Fresh initialisation, no downloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from batchnorms import randomise_batchnorms  # noqa: E402

from resgen import cli  # noqa: E402
from resgen.build import analyse, build_module, load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# timm model name -> its spec under specs/ and the input size (smaller for the deeper ones, to
# keep CPU time modest). seresnet18/34 have 64-channel SE modules, where timm's width rounding
# (8, not 64 / 16 = 4) shows; legacy_seresnet18 keeps the unrounded 4.
CASES = {
    "resnet18d": ("resnet18d.arch", 224),
    "resnet26d": ("resnet26d.arch", 224),
    "resnet50d": ("resnet50d.arch", 224),
    "resnet101d": ("resnet101d.arch", 128),
    "seresnet50": ("seresnet50.arch", 224),
    "seresnet18": ("timm/seresnet18.arch", 224),
    "seresnet34": ("timm/seresnet34.arch", 160),
    "legacy_seresnet18": ("timm/legacy_seresnet18.arch", 224),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_timm(name):
    spec, size = CASES[name]
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    # timm zero-initialises each branch's last BN: all get values, small so 100 layers stay sane
    randomise_batchnorms(reference, seed=1, weight=(0.2, 0.5), var=(0.5, 1.5))
    model = build_module(SPECS / spec).eval()

    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    model.load_state_dict(theirs, strict=True)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )

    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        difference = (model(x) - expected).abs().max().item()
    assert expected.abs().max().item() > 1e-2  # a real signal, not zeros
    assert difference <= 1e-5


def test_resnet_d_structure():
    """The ResNet-D changes are where the paper puts them: a deep stem of three 3x3 convolutions,
    and the shortcut's stride moved from the 1x1 conv to a 2x2 average pool."""
    model = build_module(SPECS / "resnet50d.arch")
    convs = [m for m in model.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (3, 3), (2, 2)),
        (32, (3, 3), (1, 1)),
        (64, (3, 3), (1, 1)),
    ]
    pool, conv, _ = model.layer2[0].downsample
    assert isinstance(pool, torch.nn.AvgPool2d)
    assert (pool.kernel_size, pool.stride, pool.ceil_mode, pool.count_include_pad) == (
        2,
        2,
        True,
        False,
    )
    assert conv.stride == (1, 1)
    pool = model.layer1[0].downsample[0]  # stride 1: a 1x1 average, i.e. the identity
    assert (pool.kernel_size, pool.stride) == (1, 1)
    x = torch.randn(1, 64, 9, 9)
    assert torch.equal(pool(x), x)


def test_squeeze_excite_gates_channels():
    """SqueezeExcite: C -> C/16 -> C on the pooled input, the gate multiplied into the input."""
    model = build_module(SPECS / "seresnet50.arch")
    se = model.layer3[0].se
    assert (se.fc1.in_channels, se.fc1.out_channels, se.fc2.out_channels) == (1024, 64, 1024)
    x = torch.randn(2, 1024, 5, 5)
    with torch.no_grad():
        gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
        assert torch.allclose(se(x), x * gate, atol=1e-6)
    analysis = analyse(load(SPECS / "seresnet50.arch"))
    info = {layer.name: layer for layer in analysis.layers}
    assert info["layer3.0.se.pool"].out == (1024, 1, 1)
    assert info["layer3.0.se.fc1"].out == (64, 1, 1)
    assert info["layer3.0.se.fc1"].params == 1024 * 64 + 64
    assert info["layer3.0.se.fc1"].macs == 1024 * 64


@pytest.mark.parametrize("name", sorted(CASES))
def test_verify(name, capsys):
    spec, size = CASES[name]
    size = min(size, 160)
    assert cli.main(["verify", str(SPECS / spec), "--input", f"3x{size}x{size}"]) == 0
    assert ": ok (" in capsys.readouterr().out


def squeeze_analysis(tmp_path, module: str, block: str, channels: int, arguments: str):
    """The analysis of one `block` (from std.`module`) applied to `channels` channels."""
    path = tmp_path / "se.arch"
    path.write_text(
        f"import std.{module}\n"
        f"network se {{\n    input {channels}x4x4\n"
        f"    stage s = 1 x {block}({arguments})\n}}\n",
        encoding="utf-8",
    )
    return analyse(load(path))


def squeeze_width(tmp_path, module: str, block: str, channels: int, arguments: str) -> int:
    """The output channels of fc1 in one `block` (from std.`module`) applied to `channels`."""
    analysis = squeeze_analysis(tmp_path, module, block, channels, arguments)
    assert analysis.ok, [d.message for d in analysis.errors]
    return {layer.name: layer for layer in analysis.layers}["s.0.fc1"].out[0]


# Channel counts that are multiples of the reduction and ones that are not (timm rounds
# C / reduction to the nearest multiple of the divisor, halves up, at least the divisor).
SE_CHANNELS = (8, 24, 40, 48, 64, 72, 100, 120, 256, 1000, 2048)


@pytest.mark.parametrize("channels", SE_CHANNELS)
@pytest.mark.parametrize("reduction, divisor", [(16, 8), (4, 8), (16, 1), (8, 4), (2, 3)])
def test_squeeze_excite_width_is_timms(tmp_path, channels, reduction, divisor):
    """std.timm's SqueezeExcite squeezes to timm's SEModule width (make_divisible, timm's
    rd_ratio = 1 / reduction: powers of two, exact in floating point)."""
    from timm.layers import SEModule

    expected = SEModule(channels, rd_ratio=1 / reduction, rd_divisor=divisor).fc1.out_channels
    arguments = f"reduction={reduction}, divisor={divisor}"
    assert squeeze_width(tmp_path, "timm", "SqueezeExcite", channels, arguments) == expected


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # timm's 0-channel conv
@pytest.mark.parametrize("channels", SE_CHANNELS)
def test_legacy_se_module_width_is_timms(tmp_path, channels):
    """std.senet's SEModule squeezes to in_channels // reduction, as timm's legacy SEModule;
    where that is 0 (timm builds a 0-channel conv, a gate of constants), resgen refuses it."""
    from timm.models.senet import SEModule

    expected = SEModule(channels, reduction=16).fc1.out_channels
    if expected:
        assert squeeze_width(tmp_path, "senet", "SEModule", channels, "reduction=16") == expected
        return
    analysis = squeeze_analysis(tmp_path, "senet", "SEModule", channels, "reduction=16")
    assert [(d.code, d.layer) for d in analysis.errors] == [("bad-argument", "s.0.fc1")]


def test_family_libraries_import_together(tmp_path):
    """std.resnet, std.timm and std.senet share no block name, so a spec can use all three."""
    path = tmp_path / "all.arch"
    path.write_text("import std.resnet\nimport std.timm\nimport std.senet\n", encoding="utf-8")
    assert load(path).network is None
