"""timm's normaliser-free networks written in .arch (std.nfnet, specs/timm/nf_*.arch, nfnet_*,
eca_nfnet_*, dm_nfnet_*): timm/models/nfnet.py is the reference.

tests/timm_coverage.py verifies every model (strict load, equal outputs) and
tests/test_timm_manifest.py checks keys, shapes and one small model per kind on every run. Here:
the per-block constants timm computes in Python (beta from the expected variance, alpha,
attn_gain, the activation gain gamma folded into the convolutions) against timm's own blocks,
for one model of each block type, on the meta device (no weights allocated, so the 400M-parameter
models cost nothing), and the expected-variance function itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from resgen import designspace

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from resgen.build import build_module  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs" / "timm"
FAMILY = ROOT / "tests" / "data" / "timm_resnet_family.txt"
# One model per kind and block type, the deepest where depth changes the schedule.
CHECKED = [
    "nf_resnet101",
    "nf_seresnet26",
    "nf_ecaresnet50",
    "nf_regnet_b1",
    "nfnet_f1",
    "eca_nfnet_l0",
    "test_nfnet",
    "dm_nfnet_f1",
]


def _blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if name.startswith("stages.") and name.count(".") == 2
    ]


def _constants(block: torch.nn.Module, timm_block: bool) -> dict[str, float]:
    """alpha, beta and (where the block has attention) attn_gain of one block: timm keeps them
    as Python floats on the block, resgen as Scale modules' factors."""
    if timm_block:
        found = {"alpha": block.alpha, "beta": block.beta}
        if block.attn is not None or block.attn_last is not None:
            found["attn_gain"] = block.attn_gain
        return found
    return {
        name: getattr(block, name).factor
        for name in ("alpha", "beta", "attn_gain")
        if hasattr(block, name)
    }


def test_every_nfnet_model_has_a_spec():
    family = [line.split("\t") for line in FAMILY.read_text(encoding="utf-8").splitlines()]
    names = {row[0] for row in family if len(row) > 2 and row[1] == "nfnet"}
    specs = {path.stem for path in SPECS.glob("*.arch")}
    assert set(CHECKED) <= names
    assert {name for name in names if name.startswith("nf_")} <= specs


@pytest.mark.parametrize("name", CHECKED)
def test_block_constants_are_timms(name):
    """Every block's alpha, beta and attn_gain equal timm's exactly (beta is timm's running sum
    of alpha**2, not a closed form), and each ScaledStdConv2d has timm's gamma / sqrt(fan_in)
    and eps."""
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
        model = build_module(SPECS / f"{name}.arch")
    theirs, ours = _blocks(reference), _blocks(model)
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    for (path, mine), (_, their) in zip(ours, theirs, strict=True):
        assert _constants(mine, False) == _constants(their, True), path
    convs = {n: m for n, m in reference.named_modules() if hasattr(m, "gain")}
    for path, conv in model.named_modules():
        if hasattr(conv, "gain"):
            assert (conv.scale, conv.eps) == (convs[path].scale, convs[path].eps), path


def test_dm_nfnet_pads_odd_sizes_as_timm():
    """DeepMind's NFNet (one block per stage) at an input whose every stage is odd (65, 33,
    17, 9, 5, 3): its strided 3x3s pad (1, 1), where the manifest's even inputs pad (0, 1);
    with timm's weights the outputs agree. SkipInit's gains are set, so every branch counts."""
    torch.manual_seed(0)
    reference = timm.create_model("dm_nfnet_f0", pretrained=False, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if name.endswith("skipinit_gain"):
                tensor.fill_(0.5)
    model = build_module(SPECS / "dm_nfnet_f0.arch", d1=1, d2=1, d3=1, d4=1).eval()
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        difference = (model(x) - expected).abs().max().item()
    assert expected.abs().max().item() > 1e-2
    assert difference <= 1e-4 * max(1.0, expected.abs().max().item())


def test_nf_beta_is_timms_running_sum():
    """Stage by stage as NormFreeNet.__init__ walks it: block 0 of a stage sees the variance
    the previous stage left, the others 1 + j alpha**2, summed one block at a time."""
    depths, alpha = (3, 4, 23, 3), 0.2
    expected_var, betas, ours = 1.0, [], []
    for stage, depth in enumerate(depths):
        for j in range(depth):
            betas.append(1.0 / expected_var**0.5)
            ours.append(designspace.nf_beta(j, depths[stage - 1] if stage else 0, alpha))
            if j == 0:
                expected_var = 1.0
            expected_var += alpha**2
    assert ours == betas
    # the closed form 1 / sqrt(1 + j alpha**2) differs in the last bits: the sum is timm's
    assert any(b != 1 / math.sqrt(1 + j * alpha**2) for j, b in enumerate(ours[3:7], 1))


def test_make_divisible_is_timms():
    from timm.layers import make_divisible

    for v in [*range(1, 200), 7.5, 11.9, 36.0, 90.0, 330.0, 1064.25, 3.999]:
        for divisor in (1, 4, 8, 16):
            assert designspace.make_divisible(v, divisor) == make_divisible(v, divisor), v


def test_nf_beta_refuses_negative_positions():
    with pytest.raises(ValueError, match="at least 0"):
        designspace.nf_beta(-1, 0, 0.2)
