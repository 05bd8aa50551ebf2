"""Block bodies that fork and join (issue 16): `from`, `when`, `repeat`, split/concat/add/mul.

Expected values come from torch (shapes, parameter counts, MACs by torch.utils.flop_counter,
whether a forward pass runs at all), from timm's own code (Res2Net's loop) and from first
principles (the arithmetic in each error).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from resgen.build import analyse, build_module, generate
from resgen.diagnostics import SpecError
from resgen.resolve import Loader

RES2NET = """
import std.res2net
network small {
    input 3x32x32
    stem { conv1 = conv(64, 3, padding=1, bias=false) }
    stage layer1 = 2 x Bottle2neck(16, base_width=26, scale=4)
    stage layer2 = 1 x Bottle2neck(32, stride=2, base_width=26, scale=3)
    head { pool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }
}
"""


def _load(tmp_path, text: str):
    path = tmp_path / "spec.arch"
    path.write_text(text)
    return Loader().load(path)


def _errors(tmp_path, text: str):
    try:
        spec = _load(tmp_path, text)
    except SpecError as err:
        return err.diagnostics
    return analyse(spec).errors


def _block(body: str, input_shape: str = "8x16x16") -> str:
    return f"""
block B() {{
    main {{
{body}
    }}
}}
network n {{
    input {input_shape}
    stage s = 1 x B()
}}
"""


def test_res2net_keeps_timms_modulelists_and_loop(tmp_path):
    """timm's Bottle2neck: ModuleLists `convs` and `bns`, a loop over them in forward()."""
    source = generate(_load(tmp_path, RES2NET))
    assert "self.convs = nn.ModuleList(" in source
    assert "for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):" in source
    assert "spo.append(sp)" in source


def test_res2net_counts_and_shapes_match_torch(tmp_path):
    spec = _load(tmp_path, RES2NET)
    analysis = analyse(spec)
    assert analysis.ok
    model = build_module(tmp_path / "spec.arch").eval()
    x = torch.randn(1, 3, 32, 32)
    assert analysis.params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as flops:
        model(x)
    assert analysis.macs == flops.get_total_flops() // 2
    keys = list(model.state_dict())
    assert keys.index("layer1.0.convs.2.weight") < keys.index("layer1.0.bns.0.weight")


def test_res2net_scripts_and_exports(tmp_path):
    _load(tmp_path, RES2NET)
    model = build_module(tmp_path / "spec.arch").eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(scripted(x), expected)
        assert torch.equal(exported.module()(x), expected)


@pytest.mark.parametrize(
    ("body", "code", "line", "words"),
    [
        ("        s = split(3)\n        c = concat from s", "channels", 4, "8 = 3 * 2 + 2"),
        (
            "        a = conv(8, 3, stride=2, padding=1)\n        c = concat from x, a",
            "join-mismatch",
            5,
            "8x16x16 and 8x8x8",
        ),
        ("        s = split(2)\n        c = conv(4, 1)", "bundle", 5, "bundle of 2"),
        ("        s = split(2)\n        c = conv(8, 1) from s[2]", "bundle", 5, "-2 to 1"),
        ("        c = conv(8, 1) from nothing", "unknown-name", 4, "`nothing`"),
        (
            "        r = repeat i < 0 { c = conv(8, 1) }\n        d = conv(8, 1)",
            "bad-argument",
            4,
            "at least 1",
        ),
        ("        s = split(2)", "bundle", 4, "ends with a bundle of 2"),
        (
            "        a = conv(4, 1)\n        m = add from x, a",
            "join-mismatch",
            5,
            "channels 8 and 4",
        ),
    ],
)
def test_branch_errors_are_located_with_their_arithmetic(tmp_path, body, code, line, words):
    errors = _errors(tmp_path, _block(body))
    assert errors, body
    first = errors[0]
    assert (str(first.code), first.span.line) == (code, line), first.message
    assert words in first.message


# ---------------------------------------------------------------------------------------------
# Random multi-branch blocks against torch: a split into parallel paths (each its own kernel,
# dilation and stride), joined by concat or summed, optionally gated by CBAM's spatial gate.


@st.composite
def _branchy(draw):
    chunks = draw(st.integers(1, 3))
    width = draw(st.integers(1, 3)) * chunks
    kernels = [draw(st.sampled_from([1, 3, 5])) for _ in range(chunks)]
    strides = [draw(st.sampled_from([1, 2])) for _ in range(chunks)]
    dilations = [draw(st.integers(1, 2)) for _ in range(chunks)]
    join = draw(st.sampled_from(["concat", "add"])) if chunks > 1 else "concat"
    gate = draw(st.booleans())
    size = draw(st.integers(3, 12))
    return chunks, width, kernels, strides, dilations, join, gate, size


def _branchy_spec(chunks, width, kernels, strides, dilations, join, gate, size) -> str:
    paths = "\n".join(
        f"        p{i} = conv(4, {k}, stride={s}, padding={d * (k - 1) // 2}, dilation={d}) "
        f"from xs[{i}]"
        for i, (k, s, d) in enumerate(zip(kernels, strides, dilations, strict=True))
    )
    names = ", ".join(f"p{i}" for i in range(chunks))
    lines = [f"        xs = split({chunks})", paths, f"        j = {join} from {names}"]
    if gate:
        lines += [
            "        mean = channel_mean from j",
            "        peak = channel_max from j",
            "        both = concat from mean, peak",
            "        g = conv(1, 3, padding=1)",
            "        sg = sigmoid",
            "        gated = mul from j, sg",
        ]
    return _block("\n".join(lines), f"{width}x{size}x{size}")


@settings(max_examples=25, deadline=None)
@given(_branchy())
def test_random_branchy_blocks_match_torch(tmp_path_factory, case):
    tmp_path = tmp_path_factory.mktemp("branchy")
    text = _branchy_spec(*case)
    path = tmp_path / "spec.arch"
    path.write_text(text)
    analysis = analyse(Loader().load(path))
    chunks, width, *_, size = case
    try:
        model = build_module(path).eval() if analysis.ok else None
    except SpecError:
        model = None
    # torch is the oracle for whether the block runs: build the same graph by hand.
    reference = _reference(*case)
    x = torch.randn(1, width, size, size)
    try:
        with torch.no_grad():
            expected = reference(x)
    except RuntimeError:
        expected = None
    assert analysis.ok == (expected is not None), (text, [d.message for d in analysis.errors])
    if expected is None:
        return
    assert model is not None
    model.load_state_dict({f"s.{k}": v for k, v in reference[0].state_dict().items()})
    with FlopCounterMode(display=False) as flops:
        out = model(x)
    assert out.shape[1:] == expected.shape[1:] == analysis.output
    assert torch.allclose(out, expected, atol=1e-5)
    assert analysis.params == sum(p.numel() for p in model.parameters())
    assert analysis.macs == flops.get_total_flops() // 2


def _reference(chunks, width, kernels, strides, dilations, join, gate, size):
    """The block written by hand in torch (keys s.0.p0.weight, as the stage holds it)."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, (k, s, d) in enumerate(zip(kernels, strides, dilations, strict=True)):
                conv = torch.nn.Conv2d(width // chunks, 4, k, s, d * (k - 1) // 2, d)
                self.add_module(f"p{i}", conv)
            if gate:
                self.g = torch.nn.Conv2d(2, 1, 3, padding=1)

        def forward(self, x):
            xs = torch.chunk(x, chunks, 1)
            ys = [getattr(self, f"p{i}")(xs[i]) for i in range(chunks)]
            j = torch.cat(ys, 1) if join == "concat" else sum(ys[1:], ys[0])
            if gate:
                both = torch.cat([j.mean(1, keepdim=True), j.amax(1, keepdim=True)], 1)
                j = j * torch.sigmoid(self.g(both))
            return j

    return torch.nn.Sequential(torch.nn.Sequential(Block())).eval()


def test_input_sizes_follow_joins(tmp_path):
    """A 3x3 stride-2 conv gives ceil(n / 2), a 2x2 average pool floor(n / 2): concatenated,
    only even sizes fit, and torch agrees size by size."""
    text = _block(
        "        a = conv(8, 3, stride=2, padding=1) from x\n"
        "        b = avgpool(2) from x\n"
        "        c = concat from a, b"
    )
    sizes = analyse(_load(tmp_path, text)).input_sizes
    pool, conv = torch.nn.AvgPool2d(2), torch.nn.Conv2d(8, 8, 3, 2, 1)
    for n in range(2, 12):
        x = torch.randn(1, 8, n, n)
        fits = conv(x).shape == pool(x).shape
        assert sizes.accepts(n, n) == fits, n
