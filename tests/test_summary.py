"""`resgen summary` and `resgen check` end to end (in process, through resgen.cli.main)."""

from __future__ import annotations

import json
from pathlib import Path

from resgen.cli import main
from resgen.report import human, rows
from resgen.resolve import Loader
from resgen.shapes import analyse

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
RESNET50 = str(SPECS / "resnet50.arch")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary_table_is_collapsed_per_stage(capsys):
    code, out, _ = run(capsys, "summary", RESNET50)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "resnet50"
    for stage, op, shape in (
        ("stem", "4 layers", "64x56x56"),
        ("layer1", "3 x Bottleneck", "256x56x56"),
        ("layer3", "6 x Bottleneck", "1024x14x14"),
        ("layer4", "3 x Bottleneck", "2048x7x7"),
        ("head", "3 layers", "1000"),
    ):
        row = next(line for line in lines if line.startswith(stage + " "))
        assert op in row and shape in row
    assert "layer1.0" not in out
    assert "25,557,032" in out
    assert "4.089 G" in out and "torchvision convention: conv + linear multiply-accumulates" in out
    assert "53,173" in out  # buffers
    assert "Input:" in out and "3x224x224" in out
    assert "Output stride:    32" in out and "Receptive field:  427" in out
    assert "multiples of 32" in out


def test_summary_depth_expands(capsys):
    _, out2, _ = run(capsys, "summary", RESNET50, "--depth", "2")
    assert "layer1.0 " in out2 and "  conv1 " in out2 and "layer1.0.conv1" not in out2
    _, out3, _ = run(capsys, "summary", RESNET50, "--depth", "3")
    assert "layer1.0.conv1" in out3 and "conv 3x3 s2 p1" in out3
    assert "layer1.0.downsample.0" in out3 and "layer1.0.add" in out3


def test_summary_json_schema(capsys):
    code, out, _ = run(capsys, "summary", RESNET50, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["network"] == "resnet50"
    assert data["input"] == [3, 224, 224] and data["output"] == [1000]
    assert data["params"] == 25_557_032 and data["macs"] == 4_089_184_256
    assert "conv + linear" in data["mac_convention"]
    assert data["input_sizes"]["exact"] == ["multiples of 32", "multiples of 32"]
    layers = data["layers"]
    assert {"name", "op", "out", "params", "macs"} <= set(layers[0])
    assert layers[0] == {
        **layers[0],
        "name": "conv1",
        "op": "conv",
        "out": [64, 112, 112],
        "params": 9408,
        "macs": 118_013_952,
    }
    assert sum(layer["params"] for layer in layers) == data["params"]
    assert sum(layer["macs"] for layer in layers) == data["macs"]
    assert [s["name"] for s in data["stages"]][:2] == ["stem", "layer1"]


def test_input_override_applies_to_summary(capsys):
    _, out, _ = run(capsys, "summary", RESNET50, "--json", "--input", "3x512x384")
    data = json.loads(out)
    assert data["input"] == [3, 512, 384]
    layer4 = next(s for s in data["stages"] if s["name"] == "layer4")
    assert layer4["out"] == [2048, 16, 12]
    _, out, _ = run(capsys, "summary", RESNET50, "--input", "320x320")
    assert "3x320x320" in out


def test_summary_of_a_broken_spec_reports_and_fails(capsys, tmp_path):
    path = tmp_path / "bad.arch"
    path.write_text("""network bad {
    input 3x32x32
    stem { conv1 = conv(64, 3, padding=1) bn1 = batchnorm(32) }
}
""")
    code, out, err = run(capsys, "summary", str(path))
    assert code == 1
    assert "bad.arch:3:" in err and "[channels]" in err and "[bn1]" in err
    assert "bad" in out  # the table is still printed


def test_check_all_reference_specs(capsys):
    specs = sorted(str(p) for p in SPECS.glob("*.arch"))
    code, out, err = run(capsys, "check", *specs)
    assert code == 0, err
    assert out.count(": ok") == len(specs)


def test_check_json_for_a_shape_error(capsys, tmp_path):
    path = tmp_path / "bad.arch"
    path.write_text("""network bad {
    input 3x32x32
    stem { pool = maxpool(3, stride=2, padding=2) }
}
""")
    code, out, _ = run(capsys, "check", "--json", str(path))
    assert code == 1
    [record] = json.loads(out)
    assert record["line"] == 3 and record["column"] == 40 and record["layer"] == "pool"
    assert record["code"] == "padding-too-large" and record["severity"] == "error"


def test_rows_nest_stage_block_layer():
    analysis = analyse(Loader().load(SPECS / "resnet18.arch"))
    depth1 = rows(analysis, 1)
    assert [r.name for r in depth1] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    layer2 = depth1[2]
    assert layer2.params == sum(s.params for s in analysis.stages if s.name == "layer2")
    assert layer2.out == (128, 28, 28)
    depth2 = [r for r in rows(analysis, 2) if r.depth == 2]
    assert "layer2.0" in [r.name for r in depth2] and "conv1" in [r.name for r in depth2]
    assert human(4_089_184_256) == "4.09G" and human(9408) == "9.41K" and human(999) == "999"


def test_seresnet50_summary_reports_stride_and_field_through_the_gates(capsys):
    code, out, _ = run(capsys, "summary", str(SPECS / "seresnet50.arch"))
    assert code == 0
    assert "Output stride:    32 (after layer4)" in out
    assert "layer1 4/35, layer2 8/91, layer3 16/267, layer4 32/427" in out
    _, out, _ = run(capsys, "summary", str(SPECS / "seresnet50.arch"), "--json")
    data = json.loads(out)
    assert data["output_stride"] == [32, 32] and data["receptive_field"] == [427, 427]
    assert data["params_exact"] and data["macs_exact"]


def test_mac_column_follows_one_rule(capsys):
    _, out, _ = run(capsys, "summary", str(SPECS / "seresnet50.arch"), "--depth", "4")
    lines = out.splitlines()
    se_fc1 = next(line for line in lines if line.strip().startswith("layer1.0.se.fc1 "))
    se = next(line for line in lines if line.strip().startswith("layer1.0.se "))
    assert se_fc1.split()[-1] == "4.10K" and se.split()[-1] == "8.19K"  # was 4096 and 8192
    head = rows(analyse(Loader().load(SPECS / "seresnet50.arch")), 4)
    for row in head:
        text = human(row.macs)
        assert (text.isdigit() and row.macs < 1000) or (text[-1] in "KMG" and row.macs >= 1000)


def test_summary_of_a_broken_spec_marks_counts_as_partial(capsys, tmp_path):
    path = tmp_path / "bad.arch"
    path.write_text("""network bad {
    input 3x32x32
    stem { conv1 = conv(64, 3, padding=1) bn1 = batchnorm(32) }
    head { pool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }
}
""")
    code, out, _ = run(capsys, "summary", str(path))
    assert code == 1
    params = next(line for line in out.splitlines() if line.startswith("Params:"))
    assert params.endswith("(partial: the spec has errors)")
    _, out, _ = run(capsys, "summary", str(path), "--json")
    data = json.loads(out)
    assert data["params_exact"] is False and data["macs_exact"] is False
    # A healthy spec says nothing of the kind.
    _, out, _ = run(capsys, "summary", RESNET50)
    assert "partial" not in out
