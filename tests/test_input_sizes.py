"""Which input sizes a network takes, and which input rows it reads, against torch.

- Accepted sizes (resgen.sizes) take every constraint of the graph into account: a linear layer
  after flatten built for one size, a fixed-kernel pool head, merges that floor. The expected set
  is found by running the generated model in torch at every size of a range.
- Rows and columns no path reads (the `unread-input` warning): the expected count is the number of
  input positions whose gradient is exactly zero in torch, with max pools made average pools and
  ReLUs removed, so every position a window reads gets a nonzero gradient.
- check warns when sizes above the smallest accepted one fail, naming the layers; a merge that
  fails because a pool floors gets the ceil_mode hint; a squeeze-excite gate of the wrong width
  gets a channel hint.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from resgen.resolve import Loader
from resgen.shapes import analyse

ROOT = Path(__file__).resolve().parents[1]


def _load(tmp_path: Path, text: str, name: str = "net"):
    path = tmp_path / f"{name}.arch"
    path.write_text(text)
    return Loader().load(path)


def _warnings(analysis, code):
    return [d for d in analysis.diagnostics if d.code == code and d.severity == "warning"]


# A ResNet-D bottleneck whose shortcut pool floors (no ceil_mode): main and shortcut agree only
# when the stage input is even.
RESNET_D_FLOOR = """
block BD(planes, stride = 1) {
    main {
        conv1 = conv(planes, 1, bias=false)
        bn1 = batchnorm
        act1 = relu(inplace=true)
        conv2 = conv(planes, 3, stride=stride, padding=1, bias=false)
        bn2 = batchnorm
    }
    shortcut downsample when stride != 1 or in_channels != planes {
        avgpool(stride, stride=stride)
        conv(planes, 1, bias=false)
        batchnorm
    }
    merge add
    post { act3 = relu(inplace=true) }
}
network d {
    input 3x64x64
    stem { conv1 = conv(8, 7, stride=2, padding=3) maxpool = maxpool(3, stride=2, padding=1) }
    stage layer1 = 1 x BD(8)
    stage layer2 = 1 x BD(16, stride=2)
    stage layer3 = 1 x BD(16, stride=2)
    head { pool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }
}
"""

# The issue's examples, at sizes small enough to scan: a linear after flatten (its in_features
# follows the analysed input) and a fixed-kernel average pool before it.
FLATTEN_LINEAR = """network p {
    input 3x32x32
    stem { c = conv(8, 3, stride=2) }
    head { f = flatten  fc = linear(10) }
}
"""
POOL_HEAD = """network p {
    input 3x64x64
    stem { c = conv(8, 3, stride=2, padding=1) }
    head { p = avgpool(7)  f = flatten  fc = linear(10, in_features=8*4*4) }
}
"""
MERGE = """block B() {
    main { c = conv(in_channels, 3, stride=2, padding=1) }
    shortcut s { conv(in_channels, 2, stride=2) }
    merge add
}
network m { input 3x24x24 stem { b = B() } }
"""

SCANNED = {"resnet_d_floor": RESNET_D_FLOOR, "flatten_linear": FLATTEN_LINEAR,
           "pool_head": POOL_HEAD, "merge": MERGE}  # fmt: skip


def _torch_accepts(model, channels: int, height: int, width: int) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(SCANNED))
def test_accepted_sizes_match_a_torch_scan(tmp_path, name):
    """Each height 1..80 with the width as analysed, and each width with the height as analysed,
    run through the generated model: torch's set is resgen's."""
    torch = pytest.importorskip("torch")
    from resgen.build import build_module

    spec = _load(tmp_path, SCANNED[name], name)
    analysis = analyse(spec)
    assert analysis.ok, analysis.diagnostics
    sizes = analysis.input_sizes
    c, h, w = analysis.input
    model = build_module(spec).eval()
    torch.set_num_threads(1)
    # Where a merge's paths give 2 and 1 rows, torch's `out += identity` broadcasts the 1: a
    # mismatch torch hides and resgen refuses. The scan starts where no path is that small.
    start = {"merge": 4, "resnet_d_floor": 32}.get(name, 1)
    scanned = range(start, 101)
    heights = {n for n in scanned if _torch_accepts(model, c, n, w)}
    widths = {n for n in scanned if _torch_accepts(model, c, h, n)}
    assert heights == {n for n in scanned if sizes.accepts(n, w)}
    assert widths == {n for n in scanned if sizes.accepts(h, n)}
    if start == 1:
        assert sizes.smallest == (min(heights), min(widths))


def test_descriptions_of_the_accepted_sizes(tmp_path):
    """First principles. flatten_linear: (n - 3) // 2 + 1 must be 15, so n is 31 or 32.
    pool_head: (n + 2 - 3) // 2 + 1 = m and (m - 7) // 7 + 1 = 4 give m in 28..34, n in 55..68.
    resnet_d_floor: the stage inputs of layer2 and layer3 must be even: the input n satisfies
    ceil(n / 4) even and ceil(n / 8) even, which is n mod 16 in {0, 13, 14, 15}."""
    expected = {
        "flatten_linear": ("only 31, 32", True),
        "pool_head": ("only 55 to 68", True),
        "resnet_d_floor": ("n mod 16 in {0, 13, 14, 15} (from 13)", False),
        "merge": ("multiples of 2", False),
    }
    for name, (accepted, coupled) in expected.items():
        sizes = analyse(_load(tmp_path, SCANNED[name], name)).input_sizes
        assert sizes.accepted == (accepted, accepted), name
        assert sizes.coupled is coupled, name


def test_a_coupled_head_is_described_per_axis(tmp_path):
    """A flattened size fixes H' x W' together: a 3x32x48 input flattens to 8 x 15 x 23; with the
    width at 48 only heights 31, 32 keep 15 rows; with the height at 32 widths 47, 48."""
    text = FLATTEN_LINEAR.replace("3x32x32", "3x32x48")
    sizes = analyse(_load(tmp_path, text)).input_sizes
    assert sizes.accepted == ("only 31, 32", "only 47, 48")
    assert sizes.accepts(32, 48) and sizes.accepts(31, 47)
    # 48x32 flattens to 8 x 23 x 15: the same count, so torch's linear takes it too
    assert sizes.accepts(48, 32) and not sizes.accepts(32, 32)


def test_check_warns_when_sizes_above_the_smallest_fail(tmp_path):
    analysis = analyse(_load(tmp_path, RESNET_D_FLOOR))
    [warning] = _warnings(analysis, "input-sizes")
    assert "n mod 16 in {0, 13, 14, 15}" in warning.message
    # the first failing size above 13 is 17: layer2's input is ceil(17 / 4) = 5, odd
    assert "17 fails at the merge of layer2.0" in warning.message
    assert "conv2: (5 + 2*1 - 3) / 2 + 1 = 3" in warning.message
    assert "downsample.0: (5 + 2*0 - 2) / 2 + 1 = 2" in warning.message
    assert "ceil_mode=true" in warning.hint and "downsample.0" in warning.hint
    # pointed at the pool that floors
    line = RESNET_D_FLOOR.splitlines().index("        avgpool(stride, stride=stride)") + 1
    assert warning.span.line == line
    # with ceil_mode every size works and check says nothing
    fixed = RESNET_D_FLOOR.replace(
        "avgpool(stride, stride=stride)", "avgpool(stride, stride=stride, ceil_mode=true)"
    )
    analysis = analyse(_load(tmp_path, fixed))
    assert analysis.diagnostics == []
    assert analysis.input_sizes.accepted[0] == "any size >= 1"


def test_flatten_head_warns_with_the_pool_hint(tmp_path):
    analysis = analyse(_load(tmp_path, FLATTEN_LINEAR))
    [warning] = _warnings(analysis, "input-sizes")
    assert "only 31, 32" in warning.message and "33 fails at `fc`" in warning.message
    assert "f: 8 x 16 x 15 = 1920 features" in warning.message  # 33 rows: (33 - 3) // 2 + 1
    assert "adaptive_avgpool" in warning.hint


def test_library_specs_accept_every_size_above_the_smallest():
    for path in sorted((ROOT / "specs").glob("*.arch")):
        analysis = analyse(Loader().load(path))
        assert not _warnings(analysis, "input-sizes"), path.name


def test_merge_mismatch_from_a_floor_suggests_ceil_mode(tmp_path):
    analysis = analyse(_load(tmp_path, RESNET_D_FLOOR), (None, 17, 17))
    [error] = [d for d in analysis.diagnostics if d.code == "merge-mismatch"]
    assert "ceil_mode=true" in error.hint and "downsample.0" in error.hint


def test_a_gate_of_the_wrong_width_gets_a_channel_hint(tmp_path):
    text = """block SE() {
    main { pool = adaptive_avgpool(1) fc1 = conv(4, 1) act = relu fc2 = conv(8, 1) gate = sigmoid }
    merge mul
}
network s { input 16x8x8 stem { se = SE() } }
"""
    analysis = analyse(_load(tmp_path, text))
    [error] = [d for d in analysis.diagnostics if d.code == "merge-mismatch"]
    assert "16 channels" in error.hint and "K=2P+1" not in error.hint


# ---------------------------------------------------------------------------------------------
# Rows no path reads


def _unread_positions(module, channels: int, height: int, width: int) -> int:
    """Input positions (over H x W) whose gradient is exactly zero: no path reads them. ReLUs
    become identities and max pools average pools, so a read position always gets a gradient."""
    import torch

    module = module.eval()
    for name, child in list(module.named_modules()):
        parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        if isinstance(child, torch.nn.ReLU):
            setattr(parent, name.rpartition(".")[2], torch.nn.Identity())
        elif isinstance(child, torch.nn.MaxPool2d):
            pool = torch.nn.AvgPool2d(child.kernel_size, child.stride, child.padding)
            setattr(parent, name.rpartition(".")[2], pool)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, height, width, generator=generator, requires_grad=True)
    out = module(x)
    (out * torch.randn(out.shape, generator=generator)).sum().backward()
    return int((x.grad[0].abs().sum(dim=0) == 0).sum())


STRIDED_BLOCKS = [
    ("resnet", "BasicBlock", 16),
    ("resnet", "Bottleneck", 4),
    ("resnet", "BottleneckV1", 4),
    ("timm", "BasicBlockD", 16),
    ("timm", "BottleneckD", 4),
    ("timm", "SEBottleneck", 4),
    ("cifar", "CifarBasicBlockA", 16),
    ("cifar", "CifarBasicBlockB", 16),
    ("preact", "PreActBlock", 16),
    ("preact", "PreActBottleneck", 4),
]


@pytest.mark.parametrize(("module", "block", "planes"), STRIDED_BLOCKS)
def test_unread_rows_of_each_library_block_match_torch(tmp_path, module, block, planes):
    """Each downsampling block of the standard library at stride 2 on a 16x16 input: resgen's
    unread count is the number of positions torch gives no gradient. ResNet v1 (BottleneckV1)
    and CIFAR option A (a 1x1 max pool subsamples the shortcut while the 3x3 reads everything)
    differ: only v1 skips rows on every path."""
    pytest.importorskip("torch")
    from resgen.build import build_module

    text = (
        f"import std.{module}\n"
        f"network n {{ input 16x16x16 stem {{ b = {block}({planes}, stride=2) }} }}\n"
    )
    spec = _load(tmp_path, text, block)
    analysis = analyse(spec)
    unread = _unread_positions(build_module(spec).b, 16, 16, 16)
    warnings = _warnings(analysis, "unread-input")
    if unread == 0:
        assert warnings == [], block
    else:
        [warning] = warnings
        assert warning.message.startswith(f"{Fraction(unread, 16 * 16)} of the network input")


def test_the_issue_example_and_resnet_v1(tmp_path):
    """A 1x1 at stride 3 reads rows 0, 3, ..., 54 of 56: 19 rows, 19 columns, 361 of 3136."""
    pytest.importorskip("torch")
    from resgen.build import build_module

    text = "network p { input 8x56x56  stem { c = conv(8, 1, stride=3) } }\n"
    spec = _load(tmp_path, text)
    analysis = analyse(spec)
    [warning] = _warnings(analysis, "unread-input")
    assert "2,775 of 3,136 positions (88%) of the network input" in warning.message
    assert "c (conv 1x1 s3) reads 19 of 56 rows and 19 of 56 columns" in warning.message
    assert _unread_positions(build_module(spec), 8, 56, 56) == 3136 - 19 * 19
    assert analysis.input_sizes.no_dropped_rows[0].startswith("none")
    # ResNet v1: three quarters of each downsampling block's input; v1.5 reads everything
    v1 = analyse(Loader().load(ROOT / "specs" / "resnet50_v1.arch"))
    [warning] = _warnings(v1, "unread-input")
    assert warning.message.startswith("3/4 of the input of layer2.0 (256x56x56)")
    assert "conv1 (conv 1x1 s2)" in warning.message and "downsample.0" in warning.message
    assert not _warnings(analyse(Loader().load(ROOT / "specs" / "resnet50.arch")), "unread-input")
