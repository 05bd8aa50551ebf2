"""timm's ECA-ResNets (timm/models/resnet.py, attn_layer="eca") written in .arch: std.timm's
ECABottleneckD in specs/timm/ecaresnet*.arch. tests/timm_coverage.py --kind ECA compares all nine
with timm (strict load, outputs); the manifest test checks their keys and shapes and the outputs
of the smallest. Here: what a wrong spec could get right by accident there."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import timm_coverage as coverage  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs" / "timm"


def test_eca_kernels_follow_timms_channel_rule():
    name = "ecaresnetlight"
    """Each block's ECA kernel is the one timm's EcaModule derives from the block's output
    channels: int((log2(C) + 1) / 2) rounded up to odd, 5 for 256 to 1024 channels and 7 for
    2048. A kernel fixed at 5 would differ only in the last stage."""
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
    model = coverage.build_on_meta(SPECS / f"{name}.arch")
    ours = {k: m.conv.kernel_size for k, m in model.named_modules() if k.endswith(".se")}
    theirs = {k: m.conv.kernel_size for k, m in reference.named_modules() if k.endswith(".se")}
    assert ours == theirs
    assert {k[0] for k in theirs.values()} == {5, 7}
