"""(h, w) strides and dilations: an integer compared with a pair stands for (n, n), as torch
reads `stride=2` of nn.Conv2d, so every standard-library block takes pairs (OCR trunks stride
(2, 1): the width is the text line).

Expected values come from torch: torchvision's own BasicBlock and Bottleneck built with the same
pair, a pair (n, n) behaving exactly as the integer n (same state_dict, same outputs), and output
sizes from PyTorch's window formula."""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen import expr as E
from resgen import spec as S
from resgen.build import analyse, build_module, load
from resgen.diagnostics import Span, SpecError

SPAN = Span("<test>", 1, 1, 1, 1)


def _int(v):
    return S.Int(span=SPAN, value=v)


def _pair(h, w):
    return S.Pair(span=SPAN, h=_int(h), w=_int(w))


def _ref(name):
    return S.Ref(span=SPAN, name=name)


def _cmp(op, left, right):
    return S.BinOp(span=SPAN, op=op, left=left, right=right)


@pytest.mark.parametrize(
    ("value", "expected"), [((2, 1), True), ((1, 1), False), ((1, 2), True), (1, False)]
)
def test_pair_and_integer_compare_as_torch_broadcasts(value, expected):
    env = {"stride": value}
    assert E.evaluate(_cmp("!=", _ref("stride"), _int(1)), env) is expected
    assert E.evaluate(_cmp("==", _int(1), _ref("stride")), env) is not expected
    # the generated Python computes the same, for an int or a pair at run time
    text = E.to_python(_cmp("!=", _ref("stride"), _int(1)), pairs={"stride"}.__contains__)
    assert eval(text, {}, env) is expected  # noqa: S307 - our own expression text
    both = E.to_python(_cmp("==", _ref("stride"), _ref("other")), pairs={"stride"}.__contains__)
    assert eval(both, {}, {**env, "other": 1}) is not expected  # noqa: S307


def test_plain_comparisons_keep_their_python():
    """Names that never hold a pair compare as before: torchvision's code stays byte-identical."""
    text = E.to_python(_cmp("!=", _ref("stride"), _int(1)))
    assert text == "stride != 1"
    assert (
        E.to_python(_cmp("==", _ref("s"), _pair(2, 1)), pairs={"s"}.__contains__) == "s == (2, 1)"
    )


def _net(tmp_path, module: str, block: str, args: str, size=(16, 16)) -> S.Spec:
    text = f"""import std.{module}
network n {{
    input 16x{size[0]}x{size[1]}
    stem {{ b = {block}({args}) }}  # a layer, not a stage: stages set dilation themselves
}}
"""
    path = tmp_path / f"{block}.arch"
    path.write_text(text)
    return load(path)


# Each standard-library block with a stride parameter, the planes that fit an input of 16
# channels, and whether it has a dilation parameter.
STD_BLOCKS = [
    ("resnet", "BasicBlock", "16", True),
    ("resnet", "Bottleneck", "4", True),
    ("resnet", "BottleneckV1", "4", True),
    ("timm", "BasicBlockD", "16", False),
    ("timm", "BottleneckD", "4", False),
    ("cifar", "CifarBasicBlockA", "16", False),
    ("cifar", "CifarBasicBlockB", "16", False),
    ("preact", "PreActBlock", "16", False),
    ("preact", "PreActBottleneck", "4", False),
]


def test_every_stride_block_of_the_library_takes_a_pair_or_says_so(tmp_path):
    """The blocks above take (h, w) strides. The others follow timm's get_padding arithmetic
    (`(stride - 1 + kernel - 1) // 2`), which timm computes on integers: given a pair they give
    a located error (a `type` error at the arithmetic), never a traceback."""
    import resgen.stdlib

    library = Path(resgen.stdlib.__file__).parent
    listed = {b for _, b, _, _ in STD_BLOCKS}
    found = set()
    for path in sorted(library.glob("*.arch")):
        spec = load(path)
        for name, block in spec.blocks.items():
            if block.param("stride") is None:
                continue
            found.add(name)
            if name in listed:
                continue
            required = [p.name for p in block.params if p.default is None and p.name != "stride"]
            args = ", ".join([*(f"{r}=16" for r in required), "stride=(2, 1)"])
            try:
                diagnostics = analyse(_net(tmp_path, path.stem, name, args)).diagnostics
            except SpecError as err:
                diagnostics = err.diagnostics
            errors = [d for d in diagnostics if d.severity == "error"]
            assert all(d.span.line >= 1 for d in errors), (name, errors)
    assert listed <= found


def _outputs(model, x):
    import torch
    from batchnorms import randomise_batchnorms

    randomise_batchnorms(model)
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(("module", "block", "planes", "dilation"), STD_BLOCKS)
def test_std_blocks_take_pair_strides_and_dilations(tmp_path, module, block, planes, dilation):
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    variants = [("stride=2", "stride=(2, 2)"), ("stride=1", "stride=(1, 1)")]
    if dilation:
        variants.append(("dilation=2", "dilation=(2, 2)"))
    for integer, pair in variants:  # (n, n) is n: same modules, same keys, same outputs
        torch.manual_seed(0)
        a = build_module(_net(tmp_path, module, block, f"{planes}, {integer}"))
        b = build_module(_net(tmp_path, module, block, f"{planes}, {pair}"))
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.equal(_outputs(a, x), _outputs(b, x)), (block, pair)
    args = f"{planes}, stride=(2, 1)" + (", dilation=(1, 2)" if dilation else "")
    spec = _net(tmp_path, module, block, args)
    analysis = analyse(spec)
    assert analysis.ok, analysis.diagnostics
    model = build_module(spec)
    # (2, 1) is not 1: the block has its projection
    assert (getattr(model.b, "downsample", None) or getattr(model.b, "shortcut", None)) is not None
    out = _outputs(model, x)
    # 3x3 padding 1 (or dilation d with padding d) at stride (2, 1): H halves, W stays
    assert tuple(out.shape[2:]) == (8, 16) == tuple(analysis.output[1:])


@pytest.mark.parametrize("kind", ["BasicBlock", "Bottleneck"])
def test_pair_strides_match_torchvision(tmp_path, kind):
    """torchvision's blocks pass the stride and dilation to nn.Conv2d as they are: a pair works
    there, and the generated block computes the same."""
    torch = pytest.importorskip("torch")
    resnet = pytest.importorskip("torchvision.models.resnet")
    from batchnorms import randomise_batchnorms

    planes = 16 if kind == "BasicBlock" else 4
    extra = {"dilation": (1, 2)} if kind == "Bottleneck" else {}
    args = f"{planes}, stride=(2, 1)" + (", dilation=(1, 2)" if extra else "")
    model = build_module(_net(tmp_path, "resnet", kind, args))
    downsample = torch.nn.Sequential(
        resnet.conv1x1(16, 16, stride=(2, 1)), torch.nn.BatchNorm2d(16)
    )
    block = getattr(resnet, kind)(16, planes, stride=(2, 1), downsample=downsample, **extra)
    randomise_batchnorms(block)
    model.load_state_dict({f"b.{k}": v for k, v in block.state_dict().items()}, strict=True)
    model.eval()
    block.eval()
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), block(x), rtol=0, atol=1e-6)
