"""ResNet variants on torchvision's weights: ResNet-50 v1 (stride on the first 1x1, as in the
paper and Caffe) and dilated ResNet-18/34 at output stride 8 (BasicBlock with dilation, which
torchvision refuses: pytorch/vision#2121).

Each loads torchvision's state_dict strictly; the shapes and MACs that change are checked against
numbers worked out by hand, and the dilated nets against a torchvision model patched by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen import cli
from resgen.build import analyse, load

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
NEW_SPECS = ["resnet50_v1", "resnet18_os8", "resnet34_os8"]


def _macs(stem: str) -> tuple[int, dict[str, int]]:
    analysis = analyse(load(SPECS / f"{stem}.arch"))
    assert analysis.ok
    return analysis.macs, {layer.name: layer.macs for layer in analysis.layers}


def test_v1_moves_the_stride_to_the_first_1x1():
    """Per-layer MACs from first principles (MACs = C_in x C_out x k^2 x H_out x W_out / groups).

    In layer2.0 (256 -> 128 -> 512 channels, 56x56 in): v1.5's conv1 runs at 56x56 and its 3x3
    strides to 28x28; v1's conv1 strides straight to 28x28 and its 3x3 stays at 28x28. So conv1
    costs 4x less and conv2 the same. The same saving repeats in the first block of layer3 and
    layer4 (each C_in x width x (H^2 - (H/2)^2) with C_in x width x H^2 constant per stage)."""
    total_v15, v15 = _macs("resnet50")
    total_v1, v1 = _macs("resnet50_v1")
    assert v15["layer2.0.conv1"] == 256 * 128 * 56 * 56 == 102_760_448
    assert v1["layer2.0.conv1"] == 256 * 128 * 28 * 28 == 25_690_112
    assert v15["layer2.0.conv2"] == v1["layer2.0.conv2"] == 128 * 128 * 9 * 28 * 28 == 115_605_504
    assert v15["layer3.0.conv1"] - v1["layer3.0.conv1"] == 512 * 256 * (28 * 28 - 14 * 14)
    assert v15["layer4.0.conv1"] - v1["layer4.0.conv1"] == 1024 * 512 * (14 * 14 - 7 * 7)
    saving = 3 * 77_070_336  # 256*128*2352 == 512*256*588 == 1024*512*147 == 77,070,336
    assert total_v15 == 4_089_184_256  # torchvision's published 4.09 GMACs
    assert total_v15 - total_v1 == saving
    assert total_v1 == 3_857_973_248
    differing = {name for name in v15 if v15[name] != v1.get(name)}
    assert differing == {"layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"}


def test_output_stride_8_macs():
    """Dilation keeps layer3 and layer4 at 28x28: their MACs grow by 4x and 16x."""
    _, os32 = _macs("resnet18")
    _, os8 = _macs("resnet18_os8")
    assert os32["layer3.1.conv2"] == 256 * 256 * 9 * 14 * 14
    assert os8["layer3.1.conv2"] == 256 * 256 * 9 * 28 * 28
    assert os8["layer4.1.conv2"] == 16 * os32["layer4.1.conv2"] == 512 * 512 * 9 * 28 * 28


@pytest.mark.parametrize("stem", NEW_SPECS)
def test_verify(stem, capsys):
    assert cli.main(["verify", str(SPECS / f"{stem}.arch"), "--input", "3x160x160"]) == 0
    assert ": ok (" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# against torchvision

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")

from resgen.build import build_module  # noqa: E402


def _load_strict(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    model.load_state_dict(theirs, strict=True)


def _output_shapes(model, names: list[str], x):
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, _args, output) -> None:  # returns None: the output is left alone
            shapes.setdefault(name, tuple(output.shape[1:]))

        return hook

    handles = [modules[n].register_forward_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes, out


def test_resnet50_v1_on_torchvision_weights():
    torch.manual_seed(0)
    reference = tvm.resnet50(weights=None).eval()
    model = build_module(SPECS / "resnet50_v1.arch").eval()
    _load_strict(model, reference)

    x = torch.randn(1, 3, 224, 224)
    names = ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample", "layer4"]
    ours, out_v1 = _output_shapes(model, names, x)
    theirs, out_v15 = _output_shapes(reference, names, x)
    assert ours["layer2.0.conv1"] == (128, 28, 28)
    assert theirs["layer2.0.conv1"] == (128, 56, 56)
    for name in names[1:]:  # from conv2 on, the block outputs agree in shape
        assert ours[name] == theirs[name]
    assert ours["layer4"] == (2048, 7, 7)
    assert out_v1.shape == out_v15.shape == (1, 1000)
    assert (out_v1 - out_v15).abs().max().item() > 1e-3  # same weights, another function


def _dilate_by_hand(model, repeats: list[int]):
    """torchvision's replace_stride_with_dilation=[False, True, True] rule, applied to a
    BasicBlock ResNet by hand: in a dilated stage the stride becomes 1 (also in the downsample
    conv), the first block keeps the previous dilation and the others take the new one; every 3x3
    gets padding = dilation."""
    dilation = 1
    for stage in ("layer3", "layer4"):
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(getattr(model, stage)):
            d = previous if i == 0 else dilation
            for conv in (block.conv1, block.conv2):
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        assert len(getattr(model, stage)) == repeats[int(stage[-1]) - 1]
    return model


@pytest.mark.parametrize(
    "stem,factory,repeats,size",
    [
        ("resnet18_os8", "resnet18", [2, 2, 2, 2], 224),
        ("resnet34_os8", "resnet34", [3, 4, 6, 3], 160),
    ],
)
def test_dilated_basicblock_matches_patched_torchvision(stem, factory, repeats, size):
    torch.manual_seed(0)
    reference = getattr(tvm, factory)(weights=None).eval()
    model = build_module(SPECS / f"{stem}.arch").eval()
    _load_strict(model, reference)  # dilation adds no weights: torchvision's resnet loads as is
    _dilate_by_hand(reference, repeats)

    x = torch.randn(1, 3, size, size)
    ours, out = _output_shapes(model, ["layer2", "layer3", "layer4"], x)
    theirs, expected = _output_shapes(reference, ["layer2", "layer3", "layer4"], x)
    assert ours == theirs
    assert ours["layer4"] == (512, size // 8, size // 8)  # output stride 8: 28x28 at 224
    assert (out - expected).abs().max().item() <= 1e-5
    # torchvision itself refuses: pytorch/vision#2121
    with pytest.raises(NotImplementedError):
        getattr(tvm, factory)(weights=None, replace_stride_with_dilation=[False, True, True])
