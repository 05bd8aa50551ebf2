"""timm's ByobNet families beyond GENet (timm/models/byobnet.py) and the RegNets of
timm/models/regnet.py that share their layers: RegNetZ (std.byob's RegNetZBottleneck, std.regnetz's
RegNetZBlock), the SiLU ResNets "ts" / "q" with squeeze-excite, ECA or global-context attention.

Every spec is checked weight for weight by tests/timm_coverage.py and its keys and shapes by
tests/test_timm_manifest.py (which also compares the outputs of the smallest model of each kind).
Here, what those do not see, each against timm's own modules:
- RegNetZ has no residual on a block whose shape changes: which blocks add their input is read
  from timm's model (its `shortcut` / `downsample` is None), not assumed;
- one output comparison per block type that the manifest's representatives do not run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import timm_coverage as coverage  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs" / "timm"
SMALL = 64  # input size for the output comparisons


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


@pytest.mark.parametrize("name", ["regnetz_b16"])
def test_outputs_match_timm(name):
    """The block types the manifest's representatives do not run, at a small input."""
    comparison = coverage.compare_with_timm(name, SPECS / f"{name}.arch", size=SMALL)
    assert comparison.problems == []
    assert comparison.max_abs_diff is not None
