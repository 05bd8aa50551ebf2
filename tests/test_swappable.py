"""Swappable layers (issue 15): parameters whose value is an op (torchvision's `norm_layer`,
timm's `act_layer`) and per-block schedules over `block_index` / `num_blocks` (timm's
drop_path_rate). Expected values: torch's own modules, and timm's schedule rate * i / (N - 1)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from resgen.build import build_module  # noqa: E402
from resgen.codegen import generate  # noqa: E402
from resgen.diagnostics import SpecError  # noqa: E402
from resgen.resolve import load  # noqa: E402
from resgen.shapes import analyse  # noqa: E402

SPEC = """
block Basic(planes, stride = 1, norm_layer = batchnorm, act_layer = relu(inplace=true),
            drop_rate = 0.0) {
    main {
        conv1 = conv(planes, 3, stride=stride, padding=1, bias=false)
        bn1 = norm_layer
        act1 = act_layer
        conv2 = conv(planes, 3, padding=1, bias=false)
        bn2 = norm_layer
        drop = dropout(drop_rate * block_index / max(num_blocks - 1, 1))
    }
    shortcut downsample when stride != 1 or in_channels != planes {
        conv(planes, 1, stride=stride, bias=false)
        norm_layer
    }
    merge add
    post { act2 = act_layer }
}

network net {
    input 3x32x32
    param norm_layer = batchnorm
    param act_layer = relu(inplace=true)
    param drop_rate = 0.0
    param depth = 3
    stem {
        conv1 = conv(16, 3, padding=1, bias=false)
        bn1 = norm_layer
        act1 = act_layer
    }
    stage layer1 = 2 x Basic(16, norm_layer=norm_layer, act_layer=act_layer, drop_rate=drop_rate)
    stage layer2 = depth x Basic(32, stride=2, norm_layer=norm_layer, act_layer=act_layer,
                                 drop_rate=drop_rate)
    head { pool = adaptive_avgpool(1)  flatten = flatten  fc = linear(10) }
}
"""

DERIVED = """
import "net.arch"

network net_variant = net(norm_layer=batchnorm(eps=0.001), act_layer=sigmoid, drop_rate=0.2)
"""


@pytest.fixture
def specs(tmp_path):
    (tmp_path / "net.arch").write_text(SPEC)
    (tmp_path / "variant.arch").write_text(DERIVED)
    return load(tmp_path / "net.arch"), load(tmp_path / "variant.arch")


def _types(model, suffix: str) -> set[type]:
    return {type(m) for name, m in model.named_modules() if name.endswith(suffix)}


def test_the_default_ops_build_torchvision_style_code(specs):
    base, _ = specs
    source = generate(base)
    assert "norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d," in source
    assert "act_layer: Callable[..., nn.Module] = relu_inplace," in source
    assert "def relu_inplace(**kwargs) -> nn.Module:" in source
    assert "self.bn1 = norm_layer(planes)" in source
    assert "self.act1 = act_layer()" in source
    model = build_module(base)
    assert _types(model, "bn2") == {nn.BatchNorm2d} and _types(model, "act1") == {nn.ReLU}
    assert model.act1.inplace and model.layer1[0].act2.inplace
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_derived_network_swaps_the_ops_everywhere(specs):
    _, variant = specs
    analysis = analyse(variant)
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    source = generate(variant, analysis)
    # an op with bound arguments becomes a named factory, not a lambda
    assert "def batchnorm_eps_0_001(channels: int, **kwargs) -> nn.Module:" in source
    assert "return nn.BatchNorm2d(channels, eps=0.001, **kwargs)" in source
    model = build_module(variant)
    norms = [m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 + 2 * 5 + 1 and {m.eps for m in norms} == {0.001}  # downsamples too
    assert _types(model, "act1") == {nn.Sigmoid} and _types(model, "act2") == {nn.Sigmoid}
    # the factory's default can still be replaced at run time, as torchvision's norm_layer
    group = build_module(variant, norm_layer=lambda c: nn.GroupNorm(4, c))
    assert _types(group, "bn1") == {nn.GroupNorm}
    assert group(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_block_positions_give_timms_schedule(specs):
    """timm (resnet.py): rate_i = drop_path_rate * i / (N - 1) over all N blocks."""
    _, variant = specs
    model = build_module(variant)
    rates = [m.p for name, m in model.named_modules() if name.endswith(".drop")]
    blocks = 2 + 3
    assert rates == pytest.approx([0.2 * i / (blocks - 1) for i in range(blocks)])
    deeper = build_module(variant, depth=5)  # num_blocks follows the factory's depth
    rates = [m.p for name, m in deeper.named_modules() if name.endswith(".drop")]
    assert rates == pytest.approx([0.2 * i / (2 + 5 - 1) for i in range(2 + 5)])


@pytest.mark.parametrize(
    "network, code, words",
    [
        ("param norm_layer = 3", "type", "`norm_layer` is 3 here, not an op"),
        ("param norm_layer = relu", "channels", None),
        (
            "param norm_layer = batchnorm(eps=e)\n    param e = 0.1",
            "bad-argument",
            "an op used as a value takes constant arguments, not `e`",
        ),
        ("param norm_layer = batchnorm(groups=2)", "unknown-argument", "has no parameter"),
    ],
    ids=["not-an-op", "keeps-channels", "constant-arguments", "unknown-argument"],
)
def test_mistakes_with_op_values_are_located(tmp_path, network, code, words):
    text = SPEC.replace("    param norm_layer = batchnorm", "    " + network)
    if "norm_layer = relu" in network:
        # relu keeps the channels, so as a norm it is no channels error; but `bn1 = relu` then
        # `act1 = relu(inplace=true)` overwrites what the first ReLU saved for backward, which
        # torch refuses at loss.backward()
        (tmp_path / "net.arch").write_text(text)
        errors = analyse(load(tmp_path / "net.arch")).errors
        assert errors and {e.code for e in errors} == {"overwrites-saved"}, errors
        assert "`act1` (relu) overwrites its input in place" in errors[0].message
        return
    (tmp_path / "net.arch").write_text(text)
    try:
        errors = analyse(load(tmp_path / "net.arch")).errors
    except SpecError as err:
        errors = err.errors
    assert errors and errors[0].code == code, errors
    assert words in errors[0].message


def test_implicit_position_names_cannot_be_declared(tmp_path):
    (tmp_path / "b.arch").write_text("block B(block_index) {\n    main { c = conv(8, 1) }\n}\n")
    with pytest.raises(SpecError) as err:
        load(tmp_path / "b.arch")
    assert err.value.errors[0].code == "bad-name"
    assert "`block_index` is implicit" in err.value.errors[0].message
