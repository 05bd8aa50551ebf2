"""`check` ok means `build` ok: what the generator cannot write is a check error, and what check
accepts is generated, run in torch and verified. The cases are the kinds found in the generator's
refusals: a flatten inside a block (a head block's flatten then linear; a block that ends in
flatten), module-level names that would collide, and a stage whose blocks grow with a repeat
count that is a network parameter."""

from __future__ import annotations

import pytest

from resgen.cli import main

HEAD_BLOCK = """block Head(n) { main { f = flatten  drop = dropout  fc = linear(n) } }
network p { input 3x8x8  stem { c = conv(4, 3, stride=2, padding=1) } head { h = Head(10) } }
"""
FLAT_BLOCK = """block Flat() { main { p = avgpool(2)  f = flatten } }
network p { input 3x8x8  stem { c = conv(4, 3, padding=1) } head { h = Flat()  fc = linear(10) } }
"""
MLP_AFTER = """block Head(n) { main { f = flatten  fc = linear(n)  mlp = Mlp(n) } }
block Mlp(n) { main { fc = linear(in_channels)  act = relu } }
network p { input 3x8x8  stem { c = conv(4, 3, stride=2, padding=1) } head { h = Head(6) } }
"""

REFUSED = {
    "stage block with flatten": (
        """block Head(n) { main { f = flatten  fc = linear(n) } }
network p { input 3x8x8  stage s = 1 x Head(5) }
""",
        "flatten-in-block",
    ),
    "flatten in a nested block": (
        """block Head(n) { main { f = flatten  fc = linear(n) } }
block Outer() { main { c = conv(4, 1)  h = Head(10) } }
network p { input 3x8x8  head { o = Outer() } }
""",
        "flatten-in-block",
    ),
    "block named like a helper class": (
        """block PadChannels() { main { c = conv(4, 1) } }
network n { input 3x8x8 stem { b = PadChannels()  p = pad_channels(8) } }
""",
        "codegen",
    ),
    "block named like the network's class": (
        """block ResNet() { main { c = conv(4, 1) } }
network net { class ResNet  input 3x8x8 stem { b = ResNet() } }
""",
        "duplicate-name",
    ),
    "growing blocks, repeats a parameter": (
        """block Grow(g) { main { c = conv(in_channels + g, 1) } }
network n { input 3x8x8 param n = 2  stage s = n x Grow(4) }
""",
        "codegen",
    ),
}


def _run(tmp_path, text: str, capsys) -> tuple[int, int, str]:
    path = tmp_path / "net.arch"
    path.write_text(text)
    checked = main(["check", str(path)])
    built = main(["build", "--no-diagram", "-o", str(tmp_path / "out"), str(path)])
    return checked, built, capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_what_build_refuses_check_refuses(tmp_path, capsys, kind):
    text, code = REFUSED[kind]
    checked, built, err = _run(tmp_path, text, capsys)
    assert (checked, built) == (1, 1), err
    assert f"[{code}]" in err


@pytest.mark.parametrize(
    ("text", "features"),
    [(HEAD_BLOCK, 4 * 4 * 4), (FLAT_BLOCK, 4 * 4 * 4), (MLP_AFTER, 4 * 4 * 4)],
    ids=["head block", "block ending in flatten", "block after flatten"],
)
def test_flatten_inside_a_network_level_block_builds(tmp_path, capsys, text, features):
    """The flattened size comes from the analysis of each instance; torch agrees: the first
    linear takes C x H x W features (4 channels at 4x4 from first principles) and the model
    computes fc(flatten(...)) as written."""
    torch = pytest.importorskip("torch")
    from resgen.build import build_module, load

    checked, built, err = _run(tmp_path, text, capsys)
    assert (checked, built) == (0, 0), err
    assert main(["verify", str(tmp_path / "net.arch")]) == 0
    model = build_module(load(tmp_path / "net.arch")).eval()
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear.in_features == features
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        if text is FLAT_BLOCK:
            expected = model.fc(torch.flatten(torch.nn.functional.avg_pool2d(model.c(x), 2), 1))
        elif text is HEAD_BLOCK:
            expected = model.h.fc(torch.flatten(model.c(x), 1))
        else:
            expected = model.h.mlp(model.h.fc(torch.flatten(model.c(x), 1)))
        torch.testing.assert_close(model(x), expected)
