"""Output stride and receptive field per stage, against torch: the gradient support of one
output pixel of torchvision's own model.

Max pooling passes a gradient to one input per window, so for the measurement each max pool
becomes an average pool of the same geometry; all conv weights are made positive so no
contribution cancels. The receptive field is then the extent of the nonzero input gradient of
the centre pixel, and the output stride the ratio of input to feature-map size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen.resolve import load
from resgen.shapes import analyse

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")

SPECS = Path(__file__).resolve().parents[1] / "specs"
SIZE = 512  # large enough that the centre pixel's field (435 for resnet18) is not clipped


def measured(model, stage: str) -> tuple[int, int]:
    """(output stride, receptive field) of `stage`'s output, along the height axis."""
    model.eval()
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if isinstance(module, torch.nn.MaxPool2d):
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                setattr(
                    parent,
                    name.rpartition(".")[2],
                    torch.nn.AvgPool2d(module.kernel_size, module.stride, module.padding),
                )
            elif isinstance(module, torch.nn.Conv2d):
                module.weight.abs_()
    x = torch.ones(1, 3, SIZE, SIZE, requires_grad=True)
    features = {}
    getattr(model, stage).register_forward_hook(lambda _m, _i, out: features.update(out=out))
    model(x)
    out = features["out"]
    h, w = out.shape[2] // 2, out.shape[3] // 2
    out[0, :, h, w].sum().backward()
    rows = x.grad[0].abs().sum(dim=(0, 2)).nonzero().flatten()
    return SIZE // out.shape[2], int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize(
    "name, factory, kwargs",
    [
        ("resnet18", "resnet18", {}),
        ("resnet50", "resnet50", {}),
        ("resnet50_dilated", "resnet50", {"replace_stride_with_dilation": [False, True, True]}),
    ],
)
def test_stride_and_receptive_field_match_torch(name, factory, kwargs):
    torch.manual_seed(0)
    analysis = analyse(load(SPECS / f"{name}.arch"), (None, SIZE, SIZE))
    stages = {s.name: s for s in analysis.stages}
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        model = getattr(tvm, factory)(weights=None, **kwargs)
        stride, field = measured(model, stage)
        assert stages[stage].output_stride == (stride, stride), stage
        assert stages[stage].receptive_field == (field, field), stage
