"""Blocks whose residual depends on the instance (`merge add when ...`, timm's RegNetZ) and ops
whose parameter belongs to the block (ConvNeXt's layer-scale `gamma`). Expected values: torch's
own semantics (state_dict order, a forward written out in torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from batchnorms import randomise_batchnorms  # noqa: E402

from resgen.build import build_module, verify  # noqa: E402
from resgen.codegen import generate  # noqa: E402
from resgen.resolve import load  # noqa: E402
from resgen.shapes import analyse  # noqa: E402

NET = """
block Z(planes, stride = 1) {
    main {
        conv1 = conv(planes, 3, stride=stride, padding=1, bias=false)
        bn1 = batchnorm
        gamma = layer_scale(0.5)
    }
    merge add when stride == 1 and in_channels == planes
}
network znet {
    input 3x16x16
    stem { conv1 = conv(8, 3, padding=1, bias=false) }
    stage layer1 = 2 x Z(8)
    stage layer2 = 2 x Z(16, stride=2)
    head { pool = adaptive_avgpool(1)  flatten = flatten  fc = linear(4) }
}
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "znet.arch").write_text(NET)
    return load(tmp_path / "znet.arch")


def test_a_residual_only_where_its_condition_holds(spec):
    analysis = analyse(spec)
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    merges = [n for n, node in analysis.nodes.items() if node.kind == "merge"]
    assert merges == ["layer1.0.add", "layer1.1.add", "layer2.1.add"]  # layer2.0 changes shape
    model = build_module(spec).eval()
    randomise_batchnorms(model, seed=0)
    assert [m.residual for m in (*model.layer1, *model.layer2)] == [True, True, False, True]
    x = torch.randn(2, 8, 16, 16)  # what layer1 and layer2 receive: 8 x 16 x 16
    with torch.no_grad():
        for block, residual in ((model.layer1[0], True), (model.layer2[0], False)):
            main = block.bn1(block.conv1(x)) * block.gamma.view(1, -1, 1, 1)
            assert torch.equal(block(x.clone()), main + x if residual else main)
    assert verify(spec, analysis)[0] == []


def test_layer_scale_is_the_blocks_own_parameter(spec):
    model = build_module(spec)
    keys = [k for k in model.state_dict() if k.startswith("layer1.0.")]
    # torch lists a module's own parameters before its children's (timm: `...blocks.0.gamma`
    # comes before `...conv_dw.weight`)
    assert keys[0] == "layer1.0.gamma" and model.layer1[0].gamma.shape == (8,)
    assert torch.all(model.layer1[0].gamma == 0.5)
    analysis = analyse(spec)
    assert analysis.params == sum(p.numel() for p in model.parameters())
    source = generate(spec, analysis)
    assert "self.gamma = nn.Parameter(torch.full((planes,), 0.5))" in source
    assert "out = out * self.gamma.reshape(1, -1, 1, 1)" in source
    assert "import torch\nfrom torch import Tensor, nn" in source
    assert "self.residual = stride == 1 and in_channels == planes" in source


def test_a_merge_that_does_not_happen_needs_no_matching_shapes(tmp_path):
    """`merge add when false`: the main path may change the shape, nothing is added."""
    (tmp_path / "n.arch").write_text(
        NET.replace("when stride == 1 and in_channels == planes", "when false")
    )
    analysis = analyse(load(tmp_path / "n.arch"))
    assert analysis.ok and not any(n.kind == "merge" for n in analysis.nodes.values())
    (tmp_path / "m.arch").write_text(NET.replace("when stride == 1 and in_channels == planes", ""))
    errors = analyse(load(tmp_path / "m.arch")).errors
    assert [e.code for e in errors] == ["merge-mismatch"]  # always merged: layer2.0 cannot be
