"""timm's ResNetV2 with other norms (timm/models/resnetv2.py): BiT (GroupNorm + weight-
standardised convs, std.resnetv2's ResNetV2BottleneckBiT) and resnetv2_50d_gn / _evos / _frn
(ResNetV2BottleneckD with a norm_layer, ResNetV2BottleneckDNormAct with evonorms0 or frntlu).

tests/timm_coverage.py compares every one with timm with random batch-norm statistics, but these
networks have no batch norm: their norms keep timm's initial weight 1 and bias 0 (EvoNorm's v 1,
FRN's tau 0), where a norm in the wrong place, or a v and a tau swapped, still computes timm's
output. Here every norm gets random parameters first."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from timm.layers import EvoNorm2dS0, FilterResponseNormTlu2d  # noqa: E402
from timm.models import resnetv2  # noqa: E402

import resgen  # noqa: E402
from resgen.build import build_module  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs" / "timm"
NORMS = (torch.nn.GroupNorm, EvoNorm2dS0, FilterResponseNormTlu2d)


@torch.no_grad()
def _randomise_norms(model: torch.nn.Module, seed: int) -> int:
    """Each norm's weight uniform in [0.5, 1), its bias, and FRN's threshold tau, normal with
    standard deviation 0.1, EvoNorm's v uniform in [0.5, 1.5); returns how many norms."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    for norm in norms:
        for name, tensor in norm.named_parameters():
            n = tensor.numel()
            if name == "weight":
                tensor.copy_(0.5 + 0.5 * torch.rand(n, generator=generator))
            elif name == "v":
                tensor.copy_(0.5 + torch.rand(n, generator=generator))
            else:  # bias, tau
                tensor.copy_(0.1 * torch.randn(n, generator=generator))
    return len(norms)


@pytest.mark.parametrize("name", ["resnetv2_50d_evos", "resnetv2_50d_frn", "resnetv2_50x1_bit"])
def test_matches_timm_with_random_norms(name):
    """One block per stage (timm's `layers` argument, the spec's d1 ... d4), so the test is
    quick; every kind of block and norm placement is still there."""
    depths = {"d1": 1, "d2": 1, "d3": 1, "d4": 1}
    torch.manual_seed(0)
    if name.endswith("_bit"):  # its entry point passes `layers` itself: call what it calls
        create = resnetv2._create_resnetv2_bit
        reference = create(name, layers=[1, 1, 1, 1], width_factor=1, num_classes=10)
    else:
        reference = timm.create_model(name, layers=[1, 1, 1, 1], num_classes=10)
    norms = 3 * 4 + 1 + (0 if name.endswith("_bit") else 2)  # blocks, the last, the stem's
    assert _randomise_norms(reference.eval(), seed=1) == norms
    spec = resgen.load(SPECS / f"{name}.arch", params={**depths, "num_classes": 10})
    with torch.device("meta"):  # timm's weights replace every tensor: skip initialising them
        model = build_module(spec)
    model = model.to_empty(device="cpu").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = reference(x), model(x)
    assert expected.abs().max().item() > 1e-2
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
