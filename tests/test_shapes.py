"""Shape inference and shape checks (resgen.graph + resgen.shapes).

Each error case is a small .arch variant; the tests assert the diagnostic's code, its line and
column (found from a marker in the text, so the expectation cannot drift from the source), the
layer path and the numbers of the worked arithmetic in the message.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from resgen.diagnostics import Diagnostic
from resgen.ops.base import arithmetic, dropped_rows, window_out
from resgen.resolve import Loader
from resgen.shapes import analyse

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def run(tmp_path: Path, text: str, input_shape=None):
    path = tmp_path / "net.arch"
    path.write_text(text)
    return analyse(Loader().load(path), input_shape), str(path)


def where(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of `needle` in `text`."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def only(analysis, code: str, severity: str = "error") -> Diagnostic:
    found = [d for d in analysis.diagnostics if d.code == code and d.severity == severity]
    assert len(found) == 1, [(d.code, d.message) for d in analysis.diagnostics]
    return found[0]


def at(diag: Diagnostic, text: str, needle: str, nth: int = 0) -> None:
    assert (diag.span.line, diag.span.column) == where(text, needle, nth), diag


def block_net(
    main: str,
    *,
    shortcut: str = "",
    when: str = "stride != 1 or in_channels != planes",
    stages: str = "stage layer1 = 2 x B(64)\n    stage layer2 = 2 x B(128, stride=2)",
    input_: str = "3x56x56",
    stem: str = "conv1 = conv(64, 3, padding=1)",
    head: str = "avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(10)",
    merge: str = "merge add",
) -> str:
    shortcut_text = (
        f"    shortcut downsample when {when} {{\n        {shortcut}\n    }}\n" if shortcut else ""
    )
    return f"""block B(planes, stride = 1) {{
    expansion 1
    main {{
        {main}
    }}
{shortcut_text}    {merge}
}}
network net {{
    input {input_}
    stem {{ {stem} }}
    {stages}
    head {{ {head} }}
}}
"""


PROJECTION = "conv(planes, 1, stride=stride, bias=false) batchnorm"


# ---------------------------------------------------------------------------------------------
# The error cases (at least 15): location, layer path, numbers


def test_wrong_padding_breaks_the_identity_merge(tmp_path):
    text = block_net("conv1 = conv(planes, 3, padding=0) bn1 = batchnorm", shortcut=PROJECTION)
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "merge-mismatch")
    at(diag, text, "merge add")
    assert diag.layer == "layer1.0"
    assert "main path gives 64x54x54 but the identity gives 64x56x56" in diag.message
    assert "conv1: (56 + 2*0 - 3) / 1 + 1 = 54" in diag.message
    assert "K=2P+1 keep the size" in diag.hint
    assert not analysis.ok


def test_stride_without_projection(tmp_path):
    text = block_net(
        "conv1 = conv(planes, 3, stride=stride, padding=1) bn1 = batchnorm",
        shortcut=PROJECTION,
        when="in_channels != planes",
        stages="stage layer1 = 2 x B(64, stride=2)",
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "merge-mismatch")
    at(diag, text, "merge add")
    assert diag.layer == "layer1.0"
    assert "main path gives 64x28x28 but the identity gives 64x56x56" in diag.message
    assert "conv1: (56 + 2*1 - 3) / 2 + 1 = 28 (remainder 1 dropped)" in diag.message


def test_wrong_kernel_the_issue_example(tmp_path):
    text = block_net(
        "conv1 = conv(planes, 1) conv2 = conv(planes, 5, stride=stride, padding=1) bn2 = batchnorm",
        shortcut=PROJECTION,
        stages="stage layer2 = 2 x B(512, stride=2)",
        stem="conv1 = conv(256, 1)",
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "merge-mismatch")
    at(diag, text, "merge add")
    assert diag.layer == "layer2.0"
    assert diag.message.startswith("main path gives 512x27x27 but the shortcut gives 512x28x28")
    assert "conv2: (56 + 2*1 - 5) / 2 + 1 = 27 (remainder 1 dropped)" in diag.message
    assert "downsample.0: (56 + 2*0 - 1) / 2 + 1 = 28" in diag.message


def test_channels_differ_from_the_identity(tmp_path):
    text = block_net(
        "conv1 = conv(planes * 2, 3, padding=1) bn1 = batchnorm",
        shortcut=PROJECTION,
        stages="stage layer1 = 2 x B(64)",
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "merge-mismatch")
    at(diag, text, "merge add")
    assert diag.layer == "layer1.0"
    assert "main path gives 128x56x56 but the identity gives 64x56x56" in diag.message
    assert "conv1 makes 128 channels from 64" in diag.message
    assert "projection" in diag.hint


def test_shortcut_projection_with_wrong_stride(tmp_path):
    text = block_net(
        "conv1 = conv(planes, 3, stride=stride, padding=1) bn1 = batchnorm",
        shortcut="conv(planes, 1, bias=false) batchnorm",
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "merge-mismatch")
    at(diag, text, "merge add")
    assert diag.layer == "layer2.0"
    assert "main path gives 128x28x28 but the shortcut gives 128x56x56" in diag.message


def test_groups_do_not_divide_the_output_channels(tmp_path):
    text = """network net {
    input 3x32x32
    stem { conv1 = conv(64, 3, padding=1, groups=3) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "groups")
    at(diag, text, "groups=3")
    assert diag.layer == "conv1"
    assert "output channels 64 are not divisible by groups=3 (64 / 3 leaves 1)" in diag.message


def test_groups_in_a_block_instance_point_at_the_block_definition(tmp_path):
    text = block_net(
        "conv1 = conv(planes, 3, padding=1, groups=4) bn1 = batchnorm",
        shortcut=PROJECTION,
        stem="conv1 = conv(6, 3, padding=1)",
        stages="stage layer1 = 3 x B(64)",
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "groups")
    at(diag, text, "groups=4")
    assert diag.layer == "layer1.0.conv1"  # the instance where in_channels is 6
    assert "input channels 6 are not divisible by groups=4 (6 / 4 leaves 2)" in diag.message


def test_dilation_without_matching_padding(tmp_path):
    text = block_net(
        "conv1 = conv(planes, 3, padding=1, dilation=2) bn1 = batchnorm",
        shortcut=PROJECTION,
        stages="stage layer1 = 2 x B(64)",
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "merge-mismatch")
    at(diag, text, "merge add")
    assert diag.layer == "layer1.0"
    assert "64x54x54 but the identity gives 64x56x56" in diag.message
    assert "conv1: (56 + 2*1 - 2*(3-1) - 1) / 1 + 1 = 54" in diag.message


def test_input_too_small_for_the_kernel(tmp_path):
    text = """network net {
    input 3x64x64
    stem { conv1 = conv(8, 7) relu = relu }
}
"""
    analysis, _ = run(tmp_path, text, (None, 5, 9))
    diag = only(analysis, "too-small")
    at(diag, text, "conv1 = conv(8, 7)")
    assert diag.layer == "conv1"
    assert "output height (5 + 2*0 - 7) / 1 + 1 = -1 is below 1" in diag.message
    assert "3x5x9" in diag.message
    assert "smallest input this network accepts is 7x7" in diag.hint
    assert analysis.output is None


def test_too_small_deep_in_the_network_names_the_stage_layer(tmp_path):
    text = """block Plain(planes) {
    main { conv1 = conv(planes, 3) relu = relu }
}
network net {
    input 3x7x7
    stage layer1 = 2 x Plain(8)
    stage layer2 = 2 x Plain(16)
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "too-small")
    at(diag, text, "conv1 = conv(planes, 3)")
    assert diag.layer == "layer2.1.conv1"  # 7 -> 5 -> 3 -> 1 -> nothing
    assert "output height (1 + 2*0 - 3) / 1 + 1 = -1 is below 1" in diag.message
    assert "smallest input this network accepts is 9x9" in diag.hint


def test_batchnorm_channels_differ_from_its_input(tmp_path):
    text = """network net {
    input 3x32x32
    stem { conv1 = conv(64, 3, padding=1) bn1 = batchnorm(32) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "channels")
    at(diag, text, "32)")
    assert diag.layer == "bn1"
    assert "declared for 32 channels but its input 64x32x32 has 64" in diag.message


def test_linear_in_features_differ_from_the_flattened_size(tmp_path):
    text = """network net {
    input 3x32x32
    stem { conv1 = conv(64, 3, stride=2, padding=1) }
    head { pool = avgpool(2) flatten = flatten fc = linear(10, in_features=1024) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "in-features")
    at(diag, text, "in_features=1024")
    assert diag.layer == "fc"
    assert "in_features=1024 but its input has 4096 = 64 x 8 x 8 features" in diag.message


def test_pool_padding_over_half_the_kernel(tmp_path):
    text = """network net {
    input 3x32x32
    stem { conv1 = conv(8, 3, padding=1) pool = maxpool(3, stride=2, padding=2) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "padding-too-large")
    at(diag, text, "padding=2")
    assert diag.layer == "pool"
    assert "padding 2 is more than half the kernel 3 (at most 1)" in diag.message


def test_avgpool_padding_rule_uses_the_kernel(tmp_path):
    text = """network net {
    input 3x32x32
    stem { pool = avgpool(2, padding=2) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "padding-too-large")
    at(diag, text, "padding=2")
    assert "padding 2 is more than half the kernel 2 (at most 1)" in diag.message


def test_ceil_mode_pool_against_a_floor_projection(tmp_path):
    text = block_net(
        "pool = avgpool(2, stride=2, ceil_mode=true) conv1 = conv(planes, 1)",
        shortcut="conv(planes, 2, stride=2)",
        input_="3x57x57",
        stem="conv1 = conv(16, 1)",
        stages="stage layer1 = 1 x B(16)",
        when="true",
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "merge-mismatch")
    at(diag, text, "merge add")
    assert diag.layer == "layer1.0"
    assert "main path gives 16x29x29 but the shortcut gives 16x28x28" in diag.message
    assert "pool: ceil((57 + 2*0 - 2) / 2) + 1 = 29" in diag.message
    assert "downsample.0: (57 + 2*0 - 2) / 2 + 1 = 28 (remainder 1 dropped)" in diag.message


def test_inexact_division_in_a_block_let_is_located_in_the_library(tmp_path):
    text = """import std.resnet
network net {
    input 3x32x32
    stem { conv1 = conv(64, 3, padding=1) }
    stage layer1 = 2 x Bottleneck(10, base_width=4)
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "inexact-division")
    library = resources.files("resgen.stdlib").joinpath("resnet.arch").read_text()
    line, _ = where(library, "let width = planes * base_width / 64 * groups")
    assert diag.span.file == "<std>/resnet.arch" and diag.span.line == line
    assert diag.layer == "layer1.0"
    assert "40 / 64" in diag.message and "remainder of 40" in diag.message
    # reported once, not once per block instance, and nothing cascades from it
    assert len(analysis.errors) == 1


def test_bad_repeats_is_located(tmp_path):
    text = block_net(
        "conv1 = conv(planes, 3, padding=1)", shortcut=PROJECTION, stages="stage layer1 = 0 x B(64)"
    )
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "bad-repeats")
    at(diag, text, "0 x B")
    assert diag.layer == "layer1"


def test_argument_of_the_wrong_type(tmp_path):
    text = """network net {
    input 3x32x32
    stem { conv1 = conv(64, 3, stride=true) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "bad-argument")
    at(diag, text, "stride=true")
    assert diag.layer == "conv1"
    assert "`stride` of conv" in diag.message


def test_conv_after_flatten_and_linear_before_it(tmp_path):
    text = """network net {
    input 3x8x8
    stem { flatten = flatten conv1 = conv(4, 1) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "not-spatial")
    at(diag, text, "conv1 = conv(4, 1)")
    assert "flat 192" in diag.message
    text = """network net {
    input 3x8x8
    head { fc = linear(10) }
}
"""
    analysis, _ = run(tmp_path, text)
    diag = only(analysis, "not-flat")
    at(diag, text, "fc = linear(10)")
    assert "3x8x8" in diag.message


def test_a_block_error_repeating_in_every_instance_is_reported_once(tmp_path):
    text = block_net(
        "conv1 = conv(planes, 3, padding=0) bn1 = batchnorm",
        shortcut=PROJECTION,
        stages="stage layer1 = 8 x B(64)",
    )
    analysis, _ = run(tmp_path, text)
    assert len(analysis.errors) == 1
    assert analysis.shapes["layer1.0.add"].error


def test_dropped_rows_are_a_warning_not_an_error(tmp_path):
    text = """network net {
    input 3x56x56
    stem { conv1 = conv(16, 3, stride=2) }
}
"""
    analysis, _ = run(tmp_path, text)
    assert analysis.ok
    diag = only(analysis, "dropped-rows", "warning")
    at(diag, text, "conv1 = conv")
    assert "(56 + 2*0 - 3) / 2 + 1 = 27 (remainder 1 dropped)" in diag.message
    assert "last 1 input row of 56 is never read" in diag.message
    assert analysis.output == (16, 27, 27)


def test_check_json_reports_location_and_layer(tmp_path):
    text = block_net("conv1 = conv(planes, 3, padding=0) bn1 = batchnorm", shortcut=PROJECTION)
    path = tmp_path / "bad.arch"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "resgen", "check", "--json", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    import json

    records = json.loads(proc.stdout)
    record = next(r for r in records if r["code"] == "merge-mismatch")
    assert (record["line"], record["column"]) == where(text, "merge add")
    assert record["layer"] == "layer1.0" and record["severity"] == "error"
    assert {
        "file",
        "line",
        "column",
        "end_line",
        "end_column",
        "severity",
        "code",
        "message",
        "layer",
    } <= set(record)


# ---------------------------------------------------------------------------------------------
# The graph


def test_graph_node_ids_edges_and_attributes():
    analysis = analyse(Loader().load(SPECS / "resnet50.arch"))
    graph = analysis.graph
    nodes = list(graph.nodes)
    assert nodes[:6] == ["input", "conv1", "bn1", "relu", "maxpool", "layer1.0.conv1"]
    assert nodes[-1] == "output"
    for node in (
        "layer1.0.downsample.0",
        "layer1.0.downsample.1",
        "layer1.0.add",
        "layer1.0.relu#2",
        "layer1.0.relu#3",
        "layer4.2.conv3",
        "fc",
    ):
        assert node in graph
    assert "layer1.1.downsample.0" not in graph
    roles = {(u, v): d["role"] for u, v, d in graph.edges(data=True)}
    assert roles[("layer1.0.downsample.1", "layer1.0.add")] == "shortcut"
    assert roles[("layer1.0.bn3", "layer1.0.add")] == "main"
    assert roles[("layer1.0.relu#3", "layer1.1.add")] == "skip"
    conv2, result = analysis.nodes["layer2.0.conv2"], analysis.shapes["layer2.0.conv2"]
    assert graph.nodes["layer2.0.conv2"]["node"] is conv2
    assert conv2.op.name == "conv" and conv2.stage == "layer2"
    assert conv2.block == "layer2.0" and conv2.branch == "main"
    assert conv2.args["stride"] == 2 and conv2.args["groups"] == 1
    assert result.in_shape == (128, 56, 56) and result.out_shape == (128, 28, 28)
    assert conv2.span.file == "<std>/resnet.arch"
    assert analysis.nodes["layer1.0.relu#2"].module == "layer1.0.relu"
    assert analysis.nodes["layer1.0.downsample.0"].branch == "shortcut"
    assert analysis.nodes["layer1.0.relu#3"].branch == "post"
    assert analysis.shapes["bn1"].buffers == 2 * 64 + 1


def test_seq_items_nested_blocks_and_mul_broadcast(tmp_path):
    text = """block SE(reduce = 4) {
    main {
        pool = adaptive_avgpool(1)
        fc1 = conv(in_channels / reduce, 1)
        relu = relu
        fc2 = conv(in_channels, 1)
        gate = sigmoid
    }
    merge mul
}
block B(planes, stride = 1) {
    main {
        conv1 = conv(planes, 3, stride=stride, padding=1)
        se = SE()
    }
    shortcut downsample when stride != 1 or in_channels != planes {
        conv(planes, 1, stride=stride) batchnorm
    }
    merge add
}
network net {
    input 3x32x32
    stem { conv1 = seq { conv(16, 3, padding=1) batchnorm relu } }
    stage layer1 = 2 x B(32, stride=2)
    head { avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }
}
"""
    analysis, _ = run(tmp_path, text)
    assert analysis.ok, analysis.diagnostics
    graph = analysis.graph
    assert ["conv1.0", "conv1.1", "conv1.2"] == [n for n in graph if n.startswith("conv1.")]
    assert analysis.shapes["layer1.0.se.fc1"].out_shape == (8, 1, 1)
    assert analysis.shapes["layer1.0.se.mul"].out_shape == (32, 16, 16)
    assert analysis.nodes["layer1.0.se.fc1"].block == "layer1.0.se"
    assert analysis.block_types["layer1.0.se"] == "SE"
    assert analysis.output == (10,)


def test_input_override_and_spec_channels(tmp_path):
    spec = Loader().load(SPECS / "resnet50.arch")
    analysis = analyse(spec, (None, 512, 384))
    assert analysis.input == (3, 512, 384)
    assert analysis.shapes["layer4.2.relu#3"].out_shape == (2048, 16, 12)
    analysis = analyse(spec, (1, 64, 64))
    assert analysis.input == (1, 64, 64) and analysis.params == 25_557_032 - 2 * 64 * 49


# ---------------------------------------------------------------------------------------------
# Input analysis: output stride, receptive field, accepted sizes


@pytest.mark.parametrize(
    "name, stride, field",
    [
        ("resnet18", 32, 435),
        ("resnet50", 32, 427),
        ("resnet50_dilated", 8, 427),
        ("resnet101", 32, 971),
    ],
)
def test_output_stride_and_receptive_field(name, stride, field):
    analysis = analyse(Loader().load(SPECS / f"{name}.arch"))
    assert analysis.output_stride == (stride, stride)
    assert analysis.receptive_field == (field, field)
    stem = analysis.stages[0]
    assert stem.name == "stem" and stem.output_stride == (4, 4) and stem.receptive_field == (11, 11)
    assert [s.name for s in analysis.stages] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "head",
    ]
    assert analysis.stages[-1].receptive_field is None  # after the global pool


def test_accepted_input_sizes():
    sizes = analyse(Loader().load(SPECS / "resnet50.arch")).input_sizes
    assert sizes.smallest == (1, 1)
    assert sizes.accepted == ("any size >= 1", "any size >= 1")
    assert sizes.exact == ("multiples of 32", "multiples of 32")
    sizes = analyse(Loader().load(SPECS / "resnet50_dilated.arch")).input_sizes
    assert sizes.exact[0] == "multiples of 8"


def test_smallest_input_and_dropped_rows_without_padding(tmp_path):
    text = """network net {
    input 3x64x48
    stem { c1 = conv(8, 3, stride=2) c2 = conv(8, (3, 5)) }
}
"""
    analysis, _ = run(tmp_path, text)
    sizes = analysis.input_sizes
    # height: (n - 3) // 2 + 1 >= 3  ->  n >= 7;  width: (n - 3) // 2 + 1 >= 5  ->  n >= 11
    assert sizes.smallest == (7, 11)
    assert sizes.no_dropped_rows[0] == "2k + 1 (from 7)"
    assert sizes.accepted == ("any size >= 7", "any size >= 11")


def test_merge_constrains_accepted_sizes(tmp_path):
    # main: 3x3 stride 2 padding 1; shortcut: 2x2 stride 2. They agree only for even sizes.
    text = block_net(
        "conv1 = conv(planes, 3, stride=stride, padding=1) bn1 = batchnorm",
        shortcut="conv(planes, 2, stride=stride)",
        stages="stage layer1 = 1 x B(16, stride=2)",
        stem="conv1 = conv(16, 1)",
    )
    analysis, _ = run(tmp_path, text)
    assert analysis.ok
    assert analysis.input_sizes.accepted[0] == "multiples of 2"
    assert analysis.input_sizes.smallest == (2, 2)
    analysis, _ = run(tmp_path, text, (None, 57, 56))
    diag = only(analysis, "merge-mismatch")
    assert "main path gives 16x29x28 but the shortcut gives 16x28x28" in diag.message


# ---------------------------------------------------------------------------------------------
# Arithmetic against torch (tests may import torch; resgen must not)


def test_window_arithmetic_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for n in range(1, 14):
        x = torch.zeros(1, 1, n, 1)
        for k in (1, 2, 3, 4):
            for s in (1, 2, 3):
                for p in range(0, k // 2 + 1):
                    for ceil in (False, True):
                        expected = window_out(n, k, s, p, 1, ceil)
                        if expected < 1:
                            with pytest.raises(RuntimeError):
                                F.max_pool2d(x, (k, 1), (s, 1), (p, 0), ceil_mode=ceil)
                            continue
                        got = F.max_pool2d(x, (k, 1), (s, 1), (p, 0), ceil_mode=ceil)
                        assert got.shape[2] == expected, (n, k, s, p, ceil)
                        got = F.avg_pool2d(x, (k, 1), (s, 1), (p, 0), ceil_mode=ceil)
                        assert got.shape[2] == expected, (n, k, s, p, ceil)
                for d in (1, 2):
                    weight = torch.zeros(1, 1, k, 1)
                    expected = window_out(n, k, s, 1, d, False)
                    if expected >= 1:
                        out = F.conv2d(x, weight, stride=(s, 1), padding=(1, 0), dilation=(d, 1))
                        assert out.shape[2] == expected


def test_worked_arithmetic_text():
    assert arithmetic(56, 5, 2, 1, 1, False) == "(56 + 2*1 - 5) / 2 + 1 = 27 (remainder 1 dropped)"
    assert arithmetic(56, 3, 2, 1, 1, False) == "(56 + 2*1 - 3) / 2 + 1 = 28 (remainder 1 dropped)"
    assert arithmetic(28, 3, 1, 2, 2, False) == "(28 + 2*2 - 2*(3-1) - 1) / 1 + 1 = 28"
    assert arithmetic(5, 2, 2, 1, 1, True).startswith("ceil((5 + 2*1 - 2) / 2) + 1 = 3")
    assert "one fewer" in arithmetic(3, 2, 2, 1, 1, True)
    assert window_out(3, 2, 2, 1, 1, True) == 2
    assert dropped_rows(56, 3, 2, 1, 1) == 0  # only right padding is skipped
    assert dropped_rows(56, 3, 2, 0, 1) == 1
    assert dropped_rows(56, 1, 2, 0, 1) == 0  # a 1x1 stride-2 conv skips every other row anyway


# ---------------------------------------------------------------------------------------------
# Whole specs and speed


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.arch")), ids=lambda p: p.stem)
def test_reference_specs_have_no_diagnostics(path):
    analysis = analyse(Loader().load(path))
    # ResNet v1's strided 1x1s read a quarter of each downsampling block's input, faithfully
    # (tests/test_input_sizes.py checks the count against torch)
    expected = ["unread-input"] if path.stem == "resnet50_v1" else []
    assert analysis.ok and [d.code for d in analysis.diagnostics] == expected
    params = {p.name: p.default for p in Loader().load(path).network.params}
    if "num_classes" not in params:  # a backbone without a head: ResNet-50's C5 at 224 / 32
        assert path.stem == "resnet50_c3c5" and analysis.output == (2048, 7, 7)
        return
    assert analysis.output == (params["num_classes"].value,)  # 1000 for ImageNet, 10 for CIFAR


def test_torch_is_not_imported():
    code = (
        "import sys; from resgen.resolve import load; from resgen.shapes import analyse; "
        "from resgen import report; analyse(load('specs/resnet50.arch')); "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "False", proc.stderr


def test_ten_thousand_blocks_analyse(tmp_path):
    """A 10,000-block network is analysed in full (its speed is measured by tests/benchmark.py's
    scaling section: tests never assert timings, which move with the machine's load)."""
    stages = "\n".join(
        f"    stage layer{i + 1} = 2500 x BasicBlock({16 << i}{', stride=2' if i else ''})"
        for i in range(4)
    )
    text = f"""import std.resnet
network big {{
    input 3x64x64
    stem {{ conv1 = conv(16, 3, padding=1, bias=false) bn1 = batchnorm relu = relu }}
{stages}
    head {{ avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }}
}}
"""
    path = tmp_path / "big.arch"
    path.write_text(text)
    analysis = analyse(Loader().load(path))
    assert analysis.ok and len(analysis.graph) > 70_000


def test_shortcut_layers_thread_their_own_channels(tmp_path):
    # Review finding: every shortcut layer was lowered with the block input's channel count, so a
    # block used after a projection conv saw 8 channels instead of 16 and a false error followed.
    analysis, _ = run(
        tmp_path,
        """
block Gate() {
    main { c = conv(in_channels, 1) }
}
block B(planes) {
    main { c = conv(planes, 3, padding=1) }
    shortcut proj when in_channels != planes { conv(planes, 1) Gate() }
    merge add
}
network n {
    input 3x32x32
    stem { c = conv(8, 3, padding=1) }
    stage layer1 = 1 x B(16)
    head { p = adaptive_avgpool(1)  f = flatten  fc = linear(10) }
}
""",
    )
    assert analysis.ok, analysis.diagnostics
    node = analysis.shapes["layer1.0.proj.1.c"]
    assert node.in_shape == (16, 32, 32) and node.params == 16 * 16 + 16


def test_error_in_a_library_block_notes_the_stage_that_used_it(tmp_path, capsys):
    # The error sits in std.resnet's BasicBlock; the note points at the user's stage line.
    text = """import std.resnet
network n {
    input 3x64x64
    stem { conv1 = conv(16, 3, padding=1) }
    stage layer1 = 2 x BasicBlock(16)
    stage layer2 = 2 x BasicBlock(32, stride=true)
}
"""
    analysis, path = run(tmp_path, text)
    diag = next(d for d in analysis.diagnostics if d.layer == "layer2.0.conv1")
    assert diag.span.file == "<std>/resnet.arch"
    ((note_span, note),) = diag.notes
    assert (note_span.file, note_span.line, note_span.column) == (path, 6, 5)
    assert "stage `layer2` of BasicBlock blocks" in note
    from resgen.cli import main

    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:6:5: note: `layer2.0.conv1` comes from stage `layer2`" in err
    assert "    6 |     stage layer2 = 2 x BasicBlock(32, stride=true)" in err


# ---------------------------------------------------------------------------------------------
# Squeeze-excite gates keep stride and receptive field; errors report their cause only


def test_squeeze_excite_keeps_stride_and_receptive_field():
    se = analyse(Loader().load(SPECS / "seresnet50.arch"))
    plain = analyse(Loader().load(SPECS / "resnet50.arch"))
    assert se.ok and se.output_stride == (32, 32) and se.receptive_field == (427, 427)
    assert [(s.name, s.output_stride, s.receptive_field) for s in se.stages] == [
        (s.name, s.output_stride, s.receptive_field) for s in plain.stages
    ]
    assert se.stages[1].output_stride == (4, 4)  # layer1
    # The gate's own nodes are global (1x1 after the pool); the merge takes the spatial side.
    assert se.shapes["layer1.0.se.mul"].out_shape == (256, 56, 56)


BLOCK_PADDING_0 = """\
block MyBlock(planes, stride = 1) {
    expansion 1
    main {
        conv1 = conv(planes, 3, stride=stride, padding=1, bias=false)
        bn1 = batchnorm
        relu = relu(inplace=true)
        conv2 = conv(planes, 3, padding=0, bias=false)
        bn2 = batchnorm
    }
    shortcut downsample when stride != 1 or in_channels != planes * expansion {
        conv(planes * expansion, 1, stride=stride, bias=false)
        batchnorm
    }
    merge add
    post { relu }
}

network broken {
    input 3x192x256
    stem {
        conv1 = conv(96, kernel=7, stride=2, padding=3, bias=false)
        bn1 = batchnorm
        relu = relu(inplace=true)
        maxpool = maxpool(3, stride=2, padding=1)
    }
    stage layer1 = 2 x MyBlock(96)
    stage layer2 = 2 x MyBlock(128, stride=2)
    stage layer3 = 2 x MyBlock(256, stride=2)
    stage layer4 = 2 x MyBlock(512, stride=2)
    head {
        avgpool = adaptive_avgpool(1)
        flatten = flatten
        fc = linear(10)
    }
}
"""


def test_only_the_root_cause_is_reported_and_later_shapes_are_tainted(tmp_path):
    analysis, _ = run(tmp_path, BLOCK_PADDING_0)
    assert not analysis.ok
    # Before: layer4.1.conv2 "too small" (a consequence) came first. Now: the cause alone.
    assert [(d.code, d.layer) for d in analysis.errors] == [("merge-mismatch", "layer1.0")]
    assert "96x46x62 but the identity gives 96x48x64" in analysis.errors[0].message
    nodes = analysis.shapes
    assert [n for n in nodes if nodes[n].error] == ["layer1.0.add"]
    assert nodes["layer1.0.add"].tainted and not nodes["layer1.0.conv2"].tainted
    # Shapes go on from the main path, for the diagram and the summary, marked as tainted.
    assert nodes["layer1.0.add"].out_shape == (96, 46, 62)
    assert nodes["layer2.0.conv1"].out_shape is not None and nodes["layer2.0.conv1"].tainted
    assert all(
        nodes[n].tainted
        for n in nodes
        if n.startswith(("layer2", "layer3", "layer4", "avgpool", "fc", "output"))
    )
    assert not any(nodes[n].tainted for n in ("conv1", "maxpool", "layer1.0.bn2"))
    # layer4's sizes run out (no shape at all): what is counted is partial.
    assert not analysis.params_exact and not analysis.macs_exact


def test_a_merge_of_a_tainted_input_is_tainted(tmp_path):
    text = BLOCK_PADDING_0.replace("bn2 = batchnorm\n", "bn2 = batchnorm(7)\n").replace(
        "conv(planes * expansion, 1, stride=stride, bias=false)",
        "conv(planes * expansion, 1, stride=stride, groups=5, bias=false)",
    )
    analysis, _ = run(tmp_path, text)
    # bn2's error taints layer1.0's merge (its size mismatch is not reported on top) and so
    # everything after it, layer2.0's shortcut with groups=5 included.
    assert [(d.code, d.layer) for d in analysis.errors] == [("channels", "layer1.0.bn2")]
    nodes = analysis.shapes
    assert nodes["layer1.0.add"].tainted and nodes["layer1.0.add"].error is None
    assert nodes["layer2.0.downsample.0"].tainted
    assert not analysis.params_exact  # a channel error: counts after it are guesses


def test_errors_in_two_branches_of_one_block_are_both_reported(tmp_path):
    text = (
        BLOCK_PADDING_0.replace(
            "conv2 = conv(planes, 3, padding=0, bias=false)",
            "conv2 = conv(planes, 3, padding=1, bias=false)",
        )
        .replace("bn2 = batchnorm\n", "bn2 = batchnorm(7)\n")
        .replace(
            "conv(planes * expansion, 1, stride=stride, bias=false)",
            "conv(planes * expansion, 1, stride=stride, groups=5, bias=false)",
        )
        .replace("stage layer1 = 2 x MyBlock(96)", "stage layer1 = 2 x MyBlock(100)")
    )
    analysis, _ = run(tmp_path, text)
    # layer1.0 projects 96 -> 100 channels: the main path's batchnorm and the shortcut's conv
    # each have their own mistake, neither downstream of the other; the merge of the two
    # tainted inputs says nothing more.
    codes = sorted((d.code, d.layer) for d in analysis.errors)
    assert codes == [("channels", "layer1.0.bn2"), ("groups", "layer1.0.downsample.0")]
    assert analysis.shapes["layer1.0.add"].error is None
    assert analysis.shapes["layer1.0.add"].tainted


def test_params_stay_exact_when_only_sizes_are_wrong(tmp_path):
    text = BLOCK_PADDING_0.replace("stage layer3 = 2 x MyBlock(256, stride=2)\n", "").replace(
        "stage layer4 = 2 x MyBlock(512, stride=2)\n", ""
    )
    broken, _ = run(tmp_path, text)
    fixed, _ = run(tmp_path, text.replace("padding=0", "padding=1"))
    assert not broken.ok and fixed.ok
    # A 3x3 conv has 3x3 weights whatever its padding; the global pool fixes the linear input.
    assert broken.params == fixed.params and broken.params_exact
    assert not broken.macs_exact and fixed.macs_exact and fixed.params_exact


def test_an_independent_argument_error_after_a_size_error_is_still_reported(tmp_path):
    # Review finding: tainting hid a groups error in the head behind a size-only merge mismatch
    # in layer1; groups depend on channels, which that mismatch does not change.
    analysis, path = run(
        tmp_path,
        """
block B(planes) {
    main { conv1 = conv(planes, 3, stride=2, padding=1, bias=false) }
    merge add
}
network n {
    class Net
    input 3x64x64
    stem { conv1 = conv(64, kernel=3, padding=1, bias=false) }
    stage layer1 = 1 x B(64)
    head { conv2 = conv(60, kernel=1, groups=7) avgpool = adaptive_avgpool(1) }
}
""",
    )
    codes = sorted((d.code, d.layer) for d in analysis.errors)
    assert codes == [("groups", "conv2"), ("merge-mismatch", "layer1.0")]
    assert not analysis.params_exact  # torch cannot even build this conv
