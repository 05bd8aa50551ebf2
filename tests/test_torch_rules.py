"""resgen's argument rules are torch's (issue 12, item 8): one case per rule and side of it.

Each case is a layer written in .arch and the same layer built by hand in torch. resgen's verdict
is `resgen check`'s (exit 0, or an error); torch's is what happens when the module is built and
trained one step (train mode, a batch of 2: forward and backward) on the spec's input. Torch
"refuses" when it raises, or when the layer has nothing to give (an empty or non-finite output:
torch builds nn.Linear(4, 0), but a network whose layer has no outputs is no network, and an
adaptive pool to 0x0 fails in backward). The verdicts must agree.

The rules come from torch's source: nn/modules/conv.py (_ConvNd: groups positive and dividing
both channel counts), aten/src/ATen/native/ConvUtils.h and Convolution.cpp (non-positive stride,
negative padding, dilation and kernel greater than zero, output size), nn/functional.py
batch_norm ("batch_norm eps must be positive during training"), aten/src/ATen/native/Pool.h
pool2d_shape_check ("pad should be smaller than or equal to half of kernel size", for max and
average pooling alike, whatever the dilation; "stride should not be zero"), nn/modules/dropout.py
("dropout probability has to be between 0 and 1").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen.cli import main

torch = pytest.importorskip("torch")
nn = torch.nn

C, H, W = 4, 8, 8


def conv(out, k, **kw):
    return lambda: nn.Conv2d(C, out, k, **kw)


RULES = {
    # id: (layers in .arch, torch module factory, input C x H x W or None for C x H x W)
    "conv-channels-0": ("c = conv(0, 3)", conv(0, 3), None),
    "conv-channels-1": ("c = conv(1, 3)", conv(1, 3), None),
    "conv-kernel-0": ("c = conv(4, 0)", conv(4, 0), None),
    "conv-kernel-pair-0": ("c = conv(4, (3, 0))", conv(4, (3, 0)), None),
    "conv-stride-0": ("c = conv(4, 3, stride=0)", conv(4, 3, stride=0), None),
    "conv-padding-negative": ("c = conv(4, 3, padding=-1)", conv(4, 3, padding=-1), None),
    "conv-padding-over-kernel": ("c = conv(4, 3, padding=5)", conv(4, 3, padding=5), None),
    "conv-dilation-0": ("c = conv(4, 3, dilation=0)", conv(4, 3, dilation=0), None),
    "conv-groups-0": ("c = conv(4, 3, groups=0)", conv(4, 3, groups=0), None),
    "conv-groups-input": ("c = conv(6, 3, groups=3)", conv(6, 3, groups=3), None),
    "conv-groups-output": ("c = conv(6, 3, groups=4)", conv(6, 3, groups=4), None),
    "conv-groups-both": ("c = conv(8, 3, groups=4)", conv(8, 3, groups=4), None),
    "conv-kernel-over-input": ("c = conv(4, 9)", conv(4, 9), None),
    "conv-kernel-over-input-padded": ("c = conv(4, 9, padding=1)", conv(4, 9, padding=1), None),
    "conv-dilated-over-input": ("c = conv(4, 3, dilation=4)", conv(4, 3, dilation=4), None),
    "batchnorm-eps-0": ("b = batchnorm(eps=0.0)", lambda: nn.BatchNorm2d(C, eps=0.0), None),
    "batchnorm-eps-negative": (
        "b = batchnorm(eps=-1.0)",
        lambda: nn.BatchNorm2d(C, eps=-1.0),
        None,
    ),
    "batchnorm-eps-tiny": (
        "b = batchnorm(eps=1e-300)",
        lambda: nn.BatchNorm2d(C, eps=1e-300),
        None,
    ),
    "batchnorm-momentum-negative": (
        "b = batchnorm(momentum=-1.0)",
        lambda: nn.BatchNorm2d(C, momentum=-1.0),
        None,
    ),
    "batchnorm-momentum-over-1": (
        "b = batchnorm(momentum=2.0)",
        lambda: nn.BatchNorm2d(C, momentum=2.0),
        None,
    ),
    "batchnorm-channels": ("b = batchnorm(5)", lambda: nn.BatchNorm2d(5), None),
    "maxpool-kernel-0": ("p = maxpool(0)", lambda: nn.MaxPool2d(0), None),
    "maxpool-stride-0": ("p = maxpool(3, stride=0)", lambda: nn.MaxPool2d(3, stride=0), None),
    "maxpool-padding-negative": (
        "p = maxpool(3, padding=-1)",
        lambda: nn.MaxPool2d(3, padding=-1),
        None,
    ),
    "maxpool-padding-half": ("p = maxpool(3, padding=1)", lambda: nn.MaxPool2d(3, padding=1), None),
    "maxpool-padding-over-half": (
        "p = maxpool(3, padding=2)",
        lambda: nn.MaxPool2d(3, padding=2),
        None,
    ),
    # The example: torch bounds the padding by half the kernel, not the dilated one.
    "maxpool-padding-dilated": (
        "p = maxpool(3, padding=2, dilation=2)",
        lambda: nn.MaxPool2d(3, padding=2, dilation=2),
        None,
    ),
    "maxpool-padding-dilated-half": (
        "p = maxpool(3, padding=1, dilation=2)",
        lambda: nn.MaxPool2d(3, padding=1, dilation=2),
        None,
    ),
    "maxpool-padding-even-kernel": (
        "p = maxpool(4, padding=2)",
        lambda: nn.MaxPool2d(4, padding=2),
        None,
    ),
    "maxpool-padding-per-axis": (
        "p = maxpool((3, 1), padding=(1, 1))",
        lambda: nn.MaxPool2d((3, 1), padding=(1, 1)),
        None,
    ),
    "maxpool-padding-per-axis-ok": (
        "p = maxpool((3, 1), padding=(1, 0))",
        lambda: nn.MaxPool2d((3, 1), padding=(1, 0)),
        None,
    ),
    "maxpool-dilation-0": ("p = maxpool(3, dilation=0)", lambda: nn.MaxPool2d(3, dilation=0), None),
    "maxpool-ceil": (
        "p = maxpool(2, stride=2, ceil_mode=true)",
        lambda: nn.MaxPool2d(2, stride=2, ceil_mode=True),
        (C, 5, 5),
    ),
    "maxpool-over-input": ("p = maxpool(9)", lambda: nn.MaxPool2d(9), None),
    "avgpool-kernel-0": ("p = avgpool(0)", lambda: nn.AvgPool2d(0), None),
    "avgpool-stride-0": ("p = avgpool(3, stride=0)", lambda: nn.AvgPool2d(3, stride=0), None),
    "avgpool-padding-half": ("p = avgpool(3, padding=1)", lambda: nn.AvgPool2d(3, padding=1), None),
    "avgpool-padding-over-half": (
        "p = avgpool(3, padding=2)",
        lambda: nn.AvgPool2d(3, padding=2),
        None,
    ),
    "avgpool-padding-even-kernel": (
        "p = avgpool(4, padding=2)",
        lambda: nn.AvgPool2d(4, padding=2),
        None,
    ),
    "avgpool-ceil-exclude-padding": (
        "p = avgpool(2, padding=1, ceil_mode=true, count_include_pad=false)",
        lambda: nn.AvgPool2d(2, padding=1, ceil_mode=True, count_include_pad=False),
        None,
    ),
    "adaptive-0": ("p = adaptive_avgpool(0)", lambda: nn.AdaptiveAvgPool2d(0), None),
    "adaptive-pair-0": (
        "p = adaptive_avgpool((0, 1))",
        lambda: nn.AdaptiveAvgPool2d((0, 1)),
        None,
    ),
    "adaptive-over-input": ("p = adaptive_avgpool(20)", lambda: nn.AdaptiveAvgPool2d(20), None),
    "linear-features-0": (
        "f = flatten l = linear(0)",
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, 0)),
        None,
    ),
    "linear-in-features": (
        "f = flatten l = linear(3, in_features=5)",
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(5, 3)),
        None,
    ),
    "dropout-negative": ("d = dropout(-0.1)", lambda: nn.Dropout(-0.1), None),
    "dropout-over-1": ("d = dropout(1.1)", lambda: nn.Dropout(1.1), None),
    "dropout-1": ("d = dropout(1.0)", lambda: nn.Dropout(1.0), None),
    "dropout-0": ("d = dropout(0.0)", lambda: nn.Dropout(0.0), None),
}


def torch_accepts(factory, shape) -> tuple[bool, str]:
    try:
        module = factory()
        module.train()
        x = torch.randn(2, *shape, requires_grad=True)
        y = module(x)
        y.sum().backward()
    except Exception as err:  # torch's verdict, whatever the exception type
        return False, f"{type(err).__name__}: {err}"
    if y.numel() == 0 or not torch.isfinite(y).all():
        return False, f"output {tuple(y.shape)}, finite: {bool(torch.isfinite(y).all())}"
    return True, "ok"


def resgen_accepts(layers: str, shape, tmp_path: Path, capsys) -> tuple[bool, str]:
    spec = tmp_path / "rule.arch"
    spec.write_text(f"network n {{ input {'x'.join(map(str, shape))} stem {{ {layers} }} }}\n")
    capsys.readouterr()
    status = main(["check", str(spec)])
    captured = capsys.readouterr()
    assert status in (0, 1) and "Traceback" not in captured.err
    return status == 0, captured.err.strip()


@pytest.mark.parametrize("case", list(RULES))
def test_resgen_agrees_with_torch(case, tmp_path, capsys):
    layers, factory, shape = RULES[case]
    shape = shape or (C, H, W)
    ours, why_ours = resgen_accepts(layers, shape, tmp_path, capsys)
    theirs, why_theirs = torch_accepts(factory, shape)
    assert ours == theirs, f"resgen: {why_ours or 'ok'}\ntorch: {why_theirs}"


def test_both_verdicts_occur():
    """Each rule is tested from both sides somewhere: the table is not all refusals."""
    accepted = [
        case
        for case, (_, factory, shape) in RULES.items()
        if torch_accepts(factory, shape or (C, H, W))[0]
    ]
    assert 10 <= len(accepted) <= len(RULES) - 20
