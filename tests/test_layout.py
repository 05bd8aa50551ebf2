"""Module layout (issue 14): containers, named blocks, stage layers, named seq and shortcut layers,
shortcut-first registration and `input` expressions. Keys are the module paths the constructs
define (first principles); torch builds the generated module, runs it, and reports the same
tree. timm's own trees are checked family by family in tests/test_timm_manifest.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from resgen.build import build_module, import_source  # noqa: E402
from resgen.codegen import generate  # noqa: E402
from resgen.diagnostics import SpecError  # noqa: E402
from resgen.resolve import load  # noqa: E402
from resgen.shapes import analyse  # noqa: E402

BLOCK = """
block ConvBlock(planes, stride = 1) {
    shortcut shortcut when stride != 1 or in_channels != planes {
        conv = conv(planes, 1, stride=stride, bias=false)
        bn = batchnorm
    }
    main {
        conv1 = conv(planes, 3, stride=stride, padding=1, bias=false)
        bn1 = batchnorm
    }
    merge add
    post { act = relu(inplace=true) }
}
"""

NETWORK = (
    BLOCK
    + """
network layouts {
    param in_chans = 3
    input in_chans x 32 x 32
    stem { stem = seq { conv = conv(8, 3, padding=1, bias=false)  bn = batchnorm  act = relu } }
    stage s1 = 2 x ConvBlock(8) named "b{index + 1}"
    stage stages.0 = 2 x ConvBlock(16, stride=2)
    stage stages.1 = 1 x ConvBlock(16) in blocks { norm = batchnorm }
    stage trunk.block1 = 2 x ConvBlock(32, stride=2) named "block1-{index}"
    head { head = seq { pool = adaptive_avgpool(1)  flatten = flatten  fc = linear(10) } }
}
"""
)


def _weights(prefix: str, shortcut: bool) -> list[str]:
    """A ConvBlock's keys: its shortcut first (written first), then its main path."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = [f"{prefix}shortcut.conv.weight", *(f"{prefix}shortcut.bn.{k}" for k in bn)]
    main = [f"{prefix}conv1.weight", *(f"{prefix}bn1.{k}" for k in bn)]
    return (keys if shortcut else []) + main


def _spec(tmp_path, text: str, name: str = "net.arch"):
    path = tmp_path / name
    path.write_text(text)
    return load(path)


def test_the_layout_constructs_give_the_keys_their_paths_say(tmp_path):
    spec = _spec(tmp_path, NETWORK)
    analysis = analyse(spec)
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    model = build_module(spec).eval()
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = [
        "stem.conv.weight",
        *(f"stem.bn.{k}" for k in bn),
        *_weights("s1.b1.", False),
        *_weights("s1.b2.", False),
        *_weights("stages.0.0.", True),
        *_weights("stages.0.1.", False),
        *(f"stages.1.norm.{k}" for k in bn),
        *_weights("stages.1.blocks.0.", False),
        *_weights("trunk.block1.block1-0.", True),
        *_weights("trunk.block1.block1-1.", False),
        "head.fc.weight",
        "head.fc.bias",
    ]
    assert list(model.state_dict()) == expected
    # torch's own tree: the containers are modules called once, in the order written
    assert [name for name, _ in model.named_children()] == ["stem", "s1", "stages", "trunk", "head"]
    assert isinstance(model.stages, torch.nn.Sequential) and len(model.stages) == 2
    assert list(dict(model.trunk.block1.named_children())) == ["block1-0", "block1-1"]
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    # the stage's own layer runs before its blocks: stages.1 = norm, then blocks
    assert list(dict(model.stages[1].named_children())) == ["norm", "blocks"]


def test_in_chans_is_an_argument_of_the_generated_model(tmp_path):
    spec = _spec(tmp_path, NETWORK)
    gray = build_module(spec, in_chans=1)
    assert gray.stem.conv.weight.shape == (8, 1, 3, 3)
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    source = generate(spec)
    assert "in_chans: int = 3," in source
    assert "conv=nn.Conv2d(in_chans, 8, kernel_size=3, padding=1, bias=False)" in source


def test_generated_layout_code_is_plain_pytorch(tmp_path):
    source = generate(_spec(tmp_path, NETWORK))
    assert "from collections import OrderedDict\n" in source
    assert "\nfrom torch import Tensor, nn\n" in source
    assert 'OrderedDict([(f"b{index + 1}", ConvBlock(8, 8)) for index in range(2)])' in source
    assert '[("block1-0", ConvBlock(16, 32, stride=2)), ("block1-1", ConvBlock(32, 32))]' in source
    assert "self.stages = nn.Sequential(stage0, stage1)" in source
    module = import_source(source, "layouts")
    assert module.layouts()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def _error(tmp_path, text: str):
    path = tmp_path / "bad.arch"
    path.write_text(text)
    try:
        spec = load(path)
    except SpecError as err:
        return err.diagnostics[0]
    errors = analyse(spec).errors
    assert errors, "no error"
    return errors[0]


NET = "import std.resnet\nnetwork n {{\n    input 3x32x32\n{}\n}}\n"


@pytest.mark.parametrize(
    "lines, code, line, column, words",
    [
        (
            "    stage a = 1 x BasicBlock(8)\n    stage a = 1 x BasicBlock(8)",
            "duplicate-name",
            5,
            11,
            "stage `a` is already defined",
        ),
        (
            "    stage a = 1 x BasicBlock(8)\n    stage a.b = 1 x BasicBlock(8)",
            "duplicate-name",
            5,
            11,
            "`a` is a stage (its blocks are its children), so it cannot also hold stage `a.b`",
        ),
        (
            "    stage s.0 = 1 x BasicBlock(8)\n    stage t = 1 x BasicBlock(8)\n"
            "    stage s.1 = 1 x BasicBlock(8)",
            "duplicate-name",
            6,
            11,
            "container `s` is one module, called once, but stage `t` runs between its stages",
        ),
        (
            "    stem { stages = conv(8, 1) }\n    stage stages.0 = 1 x BasicBlock(8)",
            "duplicate-name",
            5,
            11,
            "`stages` is already a layer of network `n`",
        ),
        (
            "    stage s = 1 x BasicBlock(8) { norm = batchnorm }",
            "missing-argument",
            4,
            11,
            "name it with `in NAME`",
        ),
        (
            "    stage s = 1 x BasicBlock(8) in norm { norm = batchnorm }",
            "duplicate-name",
            4,
            36,
            "`norm` is already a layer of stage `s`",
        ),
        (
            '    stage s = 2 x BasicBlock(8) named "b"',
            "bad-name",
            4,
            39,
            "blocks 0 and 1 would both be `b`",
        ),
        (
            '    stage s = 2 x BasicBlock(8) named "b.{index}"',
            "bad-name",
            4,
            40,
            "`b.` in a name pattern",
        ),
        (
            '    stage s = 2 x BasicBlock(8) named "b{index + }"',
            "syntax",
            4,
            48,
            "not an expression in braces",
        ),
        (
            '    stage s = 2 x BasicBlock(8) named "b{count}"',
            "unknown-name",
            4,
            42,
            "unknown name `count`",
        ),
        (
            "    stem { s = seq { a = conv(8, 1)  batchnorm } }",
            "unnamed-item",
            4,
            38,
            "the layers of seq `s` are all named or all unnamed",
        ),
        (
            "    stem { s = seq { a = conv(8, 1)  a = batchnorm } }",
            "duplicate-name",
            4,
            38,
            "layer `a` is already declared",
        ),
        (
            "    param c = 0\n    input c x 8 x 8",
            "bad-input",
            4,
            11,
            "input channels is a whole number of at least 1, not 0 (`c`)",
        ),
    ],
    ids=[
        "duplicate-stage",
        "stage-in-stage",
        "interrupted-container",
        "container-is-a-layer",
        "stage-layers-need-in",
        "in-name-taken",
        "pattern-repeats",
        "pattern-text",
        "pattern-syntax",
        "pattern-name",
        "half-named-seq",
        "seq-name-twice",
        "input-param-zero",
    ],
)
def test_layout_mistakes_are_located_errors(tmp_path, lines, code, line, column, words):
    text = NET.format(lines)
    if "input c" in lines:
        text = text.replace("    input 3x32x32\n", "")
    error = _error(tmp_path, text)
    assert (error.code, error.span.line, error.span.column) == (code, line, column), error
    assert words in error.message
