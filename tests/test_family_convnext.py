"""timm's ConvNeXt family written in .arch (std.convnext, specs/timm/convnext*.arch,
test_convnext*.arch): ConvNeXt v1 with channels-last (nn.Linear) or 1x1-conv MLPs, the _ols
stems, the RMS and SimpleNorm models, the head-norm-first model and ConvNeXt-V2 with GRN.

tests/timm_coverage.py compares all 31 models with timm (keys, strict load, outputs) and
tests/test_timm_manifest.py keeps their keys and shapes, one model per kind against timm. What
that comparison cannot see, here: timm initialises the MLP weights with std 0.02, so each
activation works near zero, where GELU and its tanh approximation agree to 1e-6. Here every
parameter of timm's model gets a value at the scale of its fan-in, outputs must agree to 1e-5,
and a spec with one layer changed (the activation, the norm, GRN) must fail the same
comparison. Also: the stochastic-depth schedule against timm's in training, and the MACs
against the ConvNeXt paper and torch's flop counter.
Fresh initialisation, no downloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import timm_coverage as coverage  # noqa: E402

import resgen  # noqa: E402
from resgen.build import analyse, build_module  # noqa: E402

TIMM_SPECS = Path(__file__).resolve().parent.parent / "specs" / "timm"
INPUT = 64
TOLERANCE = 1e-5  # max |ours - timm| <= TOLERANCE * max(1, max |timm|)

STDLIB = Path(resgen.__file__).parent / "stdlib" / "convnext.arch"

# one small model per kind of tests/data/timm_resnet_family.txt, and a change the output
# comparison must catch: (text in the spec, or in std.convnext when STDLIB, its replacement)
CASES = {
    "test_convnext": (None, "act_layer=gelu_tanh", "act_layer=gelu"),
    "convnext_atto": (None, "act_layer = gelu", "act_layer = gelu_tanh"),
    "convnext_zepto_rms_ols": (None, "norm_layer = simplenorm2d", "norm_layer = rmsnorm2d"),
    "convnextv2_atto": (STDLIB, "grn = grn", "grn = layernorm2d"),  # the same keys
}


def test_every_convnext_of_timm_has_a_spec():
    """(tests/test_timm_manifest.py checks that each is recorded, and so reproduced.)"""
    names = [m.name for m in coverage.read_family() if m.module == "convnext"]
    assert len(names) == 31
    assert [name for name in names if not (TIMM_SPECS / f"{name}.arch").is_file()] == []


@torch.no_grad()
def randomise_at_fan_in(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights normal with std 1 / sqrt(fan in); vectors (norm weights and biases, layer scale,
    GRN, biases) uniform in [-1, 1): every nonlinearity then works on values around 1."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        if parameter.dim() > 1:
            fan_in = parameter[0].numel()
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in**0.5)
        else:
            parameter.copy_(2 * torch.rand(parameter.shape, generator=generator) - 1)


def difference(name: str, path: Path) -> tuple[float, float]:
    """max |ours - timm| and max |timm| for the network of `path`, loaded with the weights of
    timm's `name`, randomised at fan-in scale."""
    reference = timm.create_model(name, pretrained=False).eval()
    randomise_at_fan_in(reference, seed=1)
    model = build_module(path).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, INPUT, INPUT, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        return (model(x) - expected).abs().max().item(), expected.abs().max().item()


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_timm_with_every_parameter_random(name):
    gap, scale = difference(name, TIMM_SPECS / f"{name}.arch")
    assert scale > 1e-2
    assert gap <= TOLERANCE * max(1.0, scale)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_comparison_sees_a_change(name, tmp_path):
    """The same comparison with one layer of the spec changed fails: it is not blind to GELU's
    approximation, to RMS norm for SimpleNorm, or to a LayerNorm for GRN (each pair with the
    same keys)."""
    library, old, new = CASES[name]
    text = (TIMM_SPECS / f"{name}.arch").read_text(encoding="utf-8")
    text = text.replace('import "', f'import "{TIMM_SPECS}/')
    if library is None:
        assert text.count(old) == 1
        text = text.replace(old, new)
    else:  # the change goes into a copy of the library the spec imports
        blocks = library.read_text(encoding="utf-8")
        assert old in blocks
        (tmp_path / library.name).write_text(blocks.replace(old, new), encoding="utf-8")
        text = text.replace(f"import std.{library.stem}", f'import "{library.name}"')
    changed = tmp_path / f"{name}.arch"
    changed.write_text(text, encoding="utf-8")
    gap, scale = difference(name, changed)
    assert gap > TOLERANCE * max(1.0, scale)


def test_drop_path_schedule_is_timm_s():
    """In training, with the same seed, the same samples are dropped with the same rates:
    timm's linspace(0, rate, N) over all blocks (test_convnext: 9 blocks)."""
    rate = 0.3
    reference = timm.create_model("test_convnext", drop_path_rate=rate).train()
    randomise_at_fan_in(reference, seed=1)
    model = build_module(TIMM_SPECS / "test_convnext.arch", drop_path_rate=rate).train()
    model.load_state_dict(reference.state_dict(), strict=True)
    theirs = [m.drop_prob for m in reference.modules() if hasattr(m, "drop_prob")]
    ours = [m.drop_prob for m in model.modules() if hasattr(m, "drop_prob")]
    assert len(ours) == 9 and ours[0] == 0.0
    assert ours[1:] == pytest.approx(theirs, abs=1e-7)  # timm: no DropPath where the rate is 0
    x = torch.randn(8, 3, INPUT, INPUT, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    expected = reference(x)
    torch.manual_seed(3)
    actual = model(x)
    assert (actual - expected).abs().max().item() <= TOLERANCE * expected.abs().max().item()


# ConvNeXt (Liu et al. 2022), the ImageNet-1K table and the model zoo: GFLOPs at 224 x 224, which
# count multiply-accumulates (fvcore), and parameters in whole millions (ConvNeXt-T's 28.6M is
# given as 28M, B's 88.6M as 89M: within one million).
PAPER = {
    "convnext_tiny": (4.5, 28),
    "convnext_small": (8.7, 50),
    "convnext_base": (15.4, 89),
    "convnext_large": (34.4, 198),
    "convnext_xlarge": (60.9, 350),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_counts_agree_with_the_paper(name):
    analysis = analyse(resgen.load(TIMM_SPECS / f"{name}.arch"))
    gmacs, millions = PAPER[name]
    assert round(analysis.macs / 1e9, 1) == gmacs
    assert abs(analysis.params / 1e6 - millions) < 1


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto", "test_convnext"])
def test_macs_are_torch_s_flops_over_two(name):
    """torch.utils.flop_counter on timm's model: convolutions and linear layers (nn.Linear on
    channels-last tensors included), FLOPs = 2 x MACs."""
    from torch.utils.flop_counter import FlopCounterMode

    reference = timm.create_model(name, pretrained=False).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        reference(torch.randn(1, 3, 224, 224))
    assert analyse(resgen.load(TIMM_SPECS / f"{name}.arch")).macs * 2 == counter.get_total_flops()
