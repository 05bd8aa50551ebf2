"""torchvision's RegNets written in .arch (std.tvregnet, specs/torchvision/): each network has
torchvision's module tree (stem.0, trunk_output.block1.block1-0.proj.0, f.a.0, f.se.fc1, fc), so
`torchvision.models.regnet_*().state_dict()` loads strictly, and computes the same outputs.

Keys, shapes and key order of all 15 are compared with torchvision's own models on the meta
device (no weights allocated: regnet_y_128gf has 645M parameters); outputs for the smallest
RegNetX and RegNetY, with random batch-norm statistics. timm's RegNets are checked by
tests/test_timm_manifest.py (specs/timm/regnet*.arch).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from batchnorms import randomise_batchnorms  # noqa: E402
from torchvision.models import regnet as tv_regnet  # noqa: E402

from resgen.build import build_module  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs" / "torchvision"
NAMES = [name for name in tv_regnet.__all__ if name.startswith("regnet_")]


def test_every_torchvision_regnet_has_a_spec():
    assert len(NAMES) == 15
    assert sorted(path.stem for path in SPECS.glob("regnet_*.arch")) == sorted(NAMES)


@pytest.fixture
def widths_on_cpu(monkeypatch):
    """torchvision computes the block widths with torch tensors and reads them back (`.tolist()`),
    which the meta device cannot do: that arithmetic runs on the CPU, the modules on meta."""
    compute = tv_regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return compute(cls, *args, **kwargs)

    monkeypatch.setattr(tv_regnet.BlockParams, "from_init_params", classmethod(on_cpu))


def layout(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


@pytest.mark.parametrize("name", NAMES)
def test_layout_matches_torchvision(name, widths_on_cpu):
    """Same keys, in the same order (projection before the branch), with the same shapes."""
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)()
        model = build_module(SPECS / f"{name}.arch")
    assert layout(model) == layout(reference)


@pytest.mark.parametrize("name", ["regnet_x_400mf", "regnet_y_400mf"])
def test_matches_torchvision(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    randomise_batchnorms(reference, seed=1, weight=(0.2, 0.5), var=(0.5, 1.5))
    model = build_module(SPECS / f"{name}.arch").eval()
    model.load_state_dict(reference.state_dict(), strict=True)

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        difference = (model(x) - expected).abs().max().item()
    assert expected.abs().max().item() > 1e-2  # a real signal, not zeros
    assert difference <= 1e-5
