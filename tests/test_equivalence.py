"""The generated models are torchvision's: same state_dict keys and shapes, same outputs.

Fresh initialisation, no downloads: torchvision's weights are loaded into the generated model.
Also checks that the generated code works beyond eager mode (TorchScript, compile, export).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")

from batchnorms import randomise_batchnorms  # noqa: E402
from torch import nn  # noqa: E402

from resgen.build import analyse, build_module  # noqa: E402
from resgen.resolve import load  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"

# spec stem -> (torchvision factory, its arguments, input size). The 100M-parameter models run at
# 160x160 to keep CPU time modest; the comparison is as strict there.
CASES = {
    "resnet18": ("resnet18", {}, 224),
    "resnet34": ("resnet34", {}, 224),
    "resnet50": ("resnet50", {}, 224),
    "resnet101": ("resnet101", {}, 160),
    "resnet152": ("resnet152", {}, 160),
    "resnext50_32x4d": ("resnext50_32x4d", {}, 224),
    "resnext101_32x8d": ("resnext101_32x8d", {}, 160),
    "resnext101_64x4d": ("resnext101_64x4d", {}, 160),
    "wide_resnet50_2": ("wide_resnet50_2", {}, 160),
    "wide_resnet101_2": ("wide_resnet101_2", {}, 160),
    "resnet50_dilated": ("resnet50", {"replace_stride_with_dilation": [False, True, True]}, 224),
}


@pytest.mark.parametrize("stem", sorted(CASES))
def test_matches_torchvision(stem):
    factory, kwargs, size = CASES[stem]
    torch.manual_seed(0)
    reference = getattr(tvm, factory)(weights=None, **kwargs).eval()
    randomise_batchnorms(reference, weight=(0.8, 1.2), var=(0.8, 1.2))
    model = build_module(SPECS / f"{stem}.arch").eval()

    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    model.load_state_dict(theirs, strict=True)

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        difference = (model(x) - expected).abs().max().item()
    assert expected.std() > 1e-3  # a real signal, not a constant
    assert difference <= 1e-5


def test_overrides_reach_the_network():
    model = build_module(SPECS / "resnet50.arch", num_classes=10, groups=32, width_per_group=4)
    reference = tvm.resnext50_32x4d(weights=None, num_classes=10)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


@torch.no_grad()
def test_zero_init_residual_zeroes_the_last_batchnorm():
    model = build_module(SPECS / "resnet50.arch", zero_init_residual=True)
    assert all(float(block.bn3.weight.abs().sum()) == 0 for block in model.layer1)
    assert float(model.bn1.weight.sum()) == 64  # other batchnorms start at 1
    model = build_module(SPECS / "resnet18.arch", zero_init_residual=True)
    assert float(model.layer2[1].bn2.weight.abs().sum()) == 0
    assert float(build_module(SPECS / "resnet18.arch").layer2[1].bn2.weight.sum()) == 128


# ---------------------------------------------------------------------------------------------
# Beyond eager mode


def _reference_pair(stem):
    factory, kwargs, _ = CASES[stem]
    torch.manual_seed(0)
    reference = getattr(tvm, factory)(weights=None, **kwargs).eval()
    model = build_module(SPECS / f"{stem}.arch").eval()
    model.load_state_dict(reference.state_dict())
    return model, reference


@pytest.mark.parametrize("stem", ["resnet18", "resnet50"])
def test_torchscript(stem):
    model, reference = _reference_pair(stem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (scripted(x) - reference(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("stem", ["resnet18", "resnet50"])
def test_export(stem):
    model, reference = _reference_pair(stem)
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert (exported.module()(x) - reference(x)).abs().max().item() <= 1e-5


@pytest.mark.slow  # 30-50 s each on two cores (Inductor compiles C++); in the default run
@pytest.mark.parametrize("stem", ["resnet18", "all_ops"])
def test_compile(stem):
    """torchvision's ResNet-18, and one model that holds every op of issues 15 and 16
    (compiling each op's own model would cost minutes).

    Inductor fuses and reorders float32 arithmetic (softmaxes, the sums of convolutions and
    joins), so compiled and eager outputs differ by rounding, which grows with the size of the
    terms summed, not with the outputs alone. The measure of that rounding is eager float32's
    own error against the same model in float64: the compiled model, another float32 order of
    the same sums, must be as close to float64 within a factor of 4 (elementwise, relative to
    eager's largest error, with 1 ulp of the largest output for a lucky eager)."""
    model, reference = _reference_pair(stem) if stem in CASES else _all_ops()
    compiled = torch.compile(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        exact = copy.deepcopy(reference).double()(x.double())
        rounding = (expected.double() - exact).abs().max().item()
        ulp = torch.finfo(torch.float32).eps * exact.abs().max().item()
        error = (compiled(x).double() - exact).abs().max().item()
        assert error <= 4 * rounding + ulp, (error, rounding)


# ---------------------------------------------------------------------------------------------
# The ops of issue 15 beyond eager mode: one model holds them all (tests/data/all_ops.arch); the
# reference is the same model in eager mode (each op is checked against timm and torchvision in
# tests/test_ops_reference.py).

ALL_OPS = Path(__file__).resolve().parent / "data" / "all_ops.arch"


def _all_ops():
    from resgen.ops import activations, attention, convs, norms, pools, tensors

    torch.manual_seed(0)
    model = build_module(ALL_OPS).eval()
    with torch.no_grad():  # GRN starts as the identity: give every tensor a value of its own
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(0.5 + torch.rand(tensor.shape))
    used = {type(m).__name__ for m in model.modules()}
    for kind in (activations, attention, convs, norms, pools):
        for op in kind.BUILTIN:
            assert op.emit.cls.removeprefix("nn.") in used, op.name
    # the tensor ops are mostly functions in forward(), not modules: ask the analysed graph
    layers = analyse(load(ALL_OPS)).nodes.values()
    applied = {node.op.name for node in layers if node.op is not None}
    assert {op.name for op in tensors.BUILTIN} <= applied
    assert any(node.module not in (None, node.id) and node.op.name == "conv" for node in layers)
    reference = copy.deepcopy(model)
    return model, reference


def test_all_ops_torchscript():
    model, reference = _all_ops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(scripted(x), reference(x))


def test_all_ops_export_and_training_step():
    model, reference = _all_ops()
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.equal(exported.module()(x), reference(x))
    model.train()  # drop_path and the batch norms in training mode; one SGD step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in model.parameters())
