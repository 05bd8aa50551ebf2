"""Parameter, buffer and MAC counts against torchvision 0.29.1, and per-layer output shapes
against torch forward hooks (torch is the oracle here; resgen itself never imports it)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from resgen.resolve import Loader
from resgen.shapes import MAC_CONVENTION, analyse

SPECS = Path(__file__).resolve().parents[1] / "specs"

# torchvision 0.29.1 at 224x224: parameters and GMACs as published (num_params, GFLOPS).
REFERENCE = {
    "resnet18": (11_689_512, "1.814"),
    "resnet34": (21_797_672, "3.664"),
    "resnet50": (25_557_032, "4.089"),
    "resnet101": (44_549_160, "7.801"),
    "resnet152": (60_192_808, "11.514"),
    "resnext50_32x4d": (25_028_904, "4.23"),
    "resnext101_32x8d": (88_791_336, "16.414"),
    "resnext101_64x4d": (83_455_272, "15.46"),
    "wide_resnet50_2": (68_883_240, "11.398"),
    "wide_resnet101_2": (126_886_696, "22.753"),
}


def load(name: str):
    return Loader().load(SPECS / f"{name}.arch")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_and_macs_match_the_published_table(name):
    params, gmacs = REFERENCE[name]
    analysis = analyse(load(name))
    assert analysis.ok
    assert analysis.params == params
    decimals = len(gmacs.split(".")[1])
    assert f"{analysis.macs / 1e9:.{decimals}f}" == gmacs
    assert sum(layer.params for layer in analysis.layers) == params
    assert sum(stage.params for stage in analysis.stages) == params
    assert sum(stage.macs for stage in analysis.stages) == analysis.macs


def test_mac_convention_is_named():
    assert "conv + linear" in MAC_CONVENTION and "torchvision" in MAC_CONVENTION


def test_only_conv_and_linear_count_macs():
    analysis = analyse(load("resnet18"))
    for layer in analysis.layers:
        if layer.op not in ("conv", "linear"):
            assert layer.macs == 0, layer
    fc = next(layer for layer in analysis.layers if layer.name == "fc")
    assert fc.macs == 512 * 1000 and fc.params == 512 * 1000 + 1000


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_and_buffers_match_torchvision_itself(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no memory for the weights, no init time
        model = getattr(torchvision.models, name)()
    analysis = analyse(load(name))
    assert analysis.params == sum(p.numel() for p in model.parameters())
    assert analysis.buffers == sum(b.numel() for b in model.buffers())


def _hooked_shapes(model, input_shape):
    """Output shape of every leaf module call, in call order, keyed by module path."""
    import torch

    seen: dict[str, list[tuple]] = defaultdict(list)
    handles = []
    for path, module in model.named_modules():
        if path and not list(module.children()):
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, path=path: seen[path].append(tuple(out.shape[1:]))
                )
            )
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape, device="meta"))
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {}),
        ("resnet50", {}),
        ("resnet50_dilated", {"replace_stride_with_dilation": [False, True, True]}),
    ],
)
def test_layer_shapes_match_torch_forward_hooks(name, kwargs):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes propagate through meta tensors without any compute
        model = getattr(torchvision.models, name.replace("_dilated", ""))(**kwargs)
    shape = (3, 200, 320)  # non-square, not a multiple of 32
    observed = _hooked_shapes(model, shape)
    analysis = analyse(load(name), shape)
    assert analysis.ok
    predicted: dict[str, list[tuple]] = defaultdict(list)
    for layer in analysis.layers:
        if layer.module is not None:  # merges are not modules
            predicted[layer.module].append(layer.out)
    # torchvision flattens with torch.flatten (a function), resgen with an nn.Flatten module
    assert set(predicted) - set(observed) == {"flatten"}
    assert set(observed) <= set(predicted)
    for path, shapes in observed.items():
        assert predicted[path] == shapes, path
    out = model.eval()(torch.zeros(1, *shape, device="meta"))
    assert analysis.output == tuple(out.shape[1:])
