"""README's "ResNet-50 with GroupNorm(32), SiLU and stochastic depth 0.1" (issue 15): the derived
network of three lines, against timm.create_model("resnet50", norm_layer="groupnorm",
act_layer="silu", drop_path_rate=0.1), which is that network in timm. Never against resgen.

It builds from the README's own text; its state_dict is timm's (keys in order, shapes, strict
load); outputs agree in eval mode and, drawing the same drop-path masks from the same seed, in
training mode; timm's per-block drop rates are ours; and one SGD step leaves the same weights.
`resgen verify` accepts it too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from resgen.build import build_module  # noqa: E402
from resgen.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    """The ```arch block of README that derives a network from timm/resnet50_gn."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```arch\n(.*?)^```$", readme, re.M | re.S)
    (example,) = [b for b in blocks if 'import "timm/resnet50_gn.arch"' in b]
    return example


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The README's file, written next to a copy of specs/timm as it would be in specs/."""
    root = tmp_path_factory.mktemp("specs")
    shutil.copytree(ROOT / "specs" / "timm", root / "timm")
    path = root / "resnet50_gn_silu.arch"
    path.write_text(readme_example(), encoding="utf-8")
    return path


def test_the_example_is_at_most_three_lines():
    assert len([line for line in readme_example().splitlines() if line.strip()]) <= 3


@torch.no_grad()
def _randomise(module: torch.nn.Module) -> None:
    """Every tensor moved off its initial value (timm zero-initialises each block's last norm),
    by a little, so fifty layers keep a sane signal."""
    generator = torch.Generator().manual_seed(1)
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))


def test_matches_timm_in_eval_training_and_one_sgd_step(example):
    torch.manual_seed(0)
    ours = build_module(example)
    theirs = timm.create_model(
        "resnet50", pretrained=False, norm_layer="groupnorm", act_layer="silu", drop_path_rate=0.1
    )
    _randomise(theirs)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    ours.load_state_dict(theirs.state_dict(), strict=True)

    # timm builds no DropPath for a rate of 0 (the first block); every other rate is timm's.
    rates = [m.drop_prob for m in ours.modules() if type(m).__name__ == "DropPath"]
    expected = [m.drop_prob for m in theirs.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates[0] == 0 and rates[1:] == pytest.approx(expected, rel=1e-12)
    assert len(rates) == 16 and expected[-1] == pytest.approx(0.1)

    x, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])  # small: CPU time
    ours.eval(), theirs.eval()
    with torch.no_grad():
        expected_out = theirs(x)
        assert expected_out.abs().max() > 1e-2
        assert torch.allclose(ours(x), expected_out, atol=1e-5)

    ours.train(), theirs.train()
    after = []
    for model in (ours, theirs):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(7)  # the same drop-path masks, drawn in the same order
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        after.append((loss.item(), [p.detach().clone() for p in model.parameters()]))
    (our_loss, our_weights), (their_loss, their_weights) = after
    assert our_loss == pytest.approx(their_loss, abs=1e-5)
    assert all(
        torch.allclose(a, b, atol=1e-5) for a, b in zip(our_weights, their_weights, strict=True)
    )


def test_resgen_verify_accepts_it(example, capsys):
    assert main(["verify", str(example), "--input", "3x32x32"]) == 0
    assert "ok" in capsys.readouterr().out
