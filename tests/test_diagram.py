"""Diagrams (issue 5): the three levels of detail checked in the rendered SVG, broken specs drawn
in red, identical DOT for identical input, and what happens without Graphviz's `dot`."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from resgen import diagram, ops
from resgen.cli import main
from resgen.diagnostics import Diagnostic, Span
from resgen.resolve import load
from resgen.shapes import analyse

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
SVG = "{http://www.w3.org/2000/svg}"
RED = diagram.RED

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot not installed")

# A variant that breaks: the 5x5 conv with padding 1 makes the main path 2 pixels smaller than
# the identity shortcut, so the merge in layer1.0 cannot add them.
BROKEN = """\
block Wide(planes, stride = 1) {
    expansion 1
    main {
        conv1 = conv(planes, 3, stride=stride, padding=1, bias=false)
        bn1 = batchnorm
        relu = relu(inplace=true)
        conv2 = conv(planes, 5, padding=1, bias=false)
        bn2 = batchnorm
    }
    shortcut downsample when stride != 1 or in_channels != planes {
        conv(planes, 1, stride=stride, bias=false)
        batchnorm
    }
    merge add
    post { relu }
}

network broken {
    input 3x64x64
    stem {
        conv1 = conv(16, 3, padding=1, bias=false)
        bn1 = batchnorm
        relu = relu(inplace=true)
    }
    stage layer1 = 2 x Wide(16)
    stage layer2 = 2 x Wide(32, stride=2)
    head {
        avgpool = adaptive_avgpool(1)
        flatten = flatten
        fc = linear(10)
    }
}
"""


@pytest.fixture(scope="module")
def resnet50():
    spec = load(SPECS / "resnet50.arch")
    return spec, analyse(spec)


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.arch"
    path.write_text(BROKEN)
    return path


class Svg:
    """The parts of dot's SVG the tests read: nodes and edges by <title>, with their text."""

    def __init__(self, data: bytes):
        self.root = ET.fromstring(data)
        self.nodes = self._items("node")
        self.edges = self._items("edge")

    def _items(self, kind: str) -> dict[str, ET.Element]:
        items = {}
        for g in self.root.iter(f"{SVG}g"):
            if g.get("class") == kind:
                title = g.find(f"{SVG}title").text
                assert title not in items, f"two {kind}s titled {title}"
                items[title] = g
        return items

    @staticmethod
    def text(g: ET.Element) -> str:
        """The text of an element, whitespace collapsed (dot splits labels into pieces)."""
        return " ".join(" ".join(t.text or "" for t in g.iter(f"{SVG}text")).split())

    @staticmethod
    def strokes(g: ET.Element) -> set[str]:
        return {e.get("stroke") for e in g.iter() if e.get("stroke") not in (None, "none")}

    @staticmethod
    def dashed(g: ET.Element) -> bool:
        return any(e.get("stroke-dasharray") for e in g.iter(f"{SVG}path"))

    @staticmethod
    def width(g: ET.Element) -> float:
        return max(float(e.get("stroke-width", 1)) for e in g.iter(f"{SVG}path"))


def svg_of(spec, analysis, detail: str) -> Svg:
    return Svg(diagram.render(diagram.to_dot(spec, analysis, detail), "svg"))


def edge_title(u: str, v: str) -> str:
    return f"{u}->{v}"


def shape(s) -> str:
    return "×".join(map(str, s))


# ---------------------------------------------------------------------------------------------
# The three levels, rendered


@needs_dot
def test_stages_level_draws_one_node_per_stage_with_counts(resnet50):
    spec, analysis = resnet50
    svg = svg_of(spec, analysis, "stages")
    assert list(svg.nodes) == [
        "input",
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "head",
        "output",
    ]
    layer3 = Svg.text(svg.nodes["layer3"])
    for part in (
        "layer3",
        "Bottleneck ×6",
        "512→1024 ch",
        "stride 2",
        "28×28→14×14",
        "params 7.10M",
        "MACs 1.46G",
    ):
        assert part in layer3, part
    assert "3×224×224 → 64×56×56" in Svg.text(svg.nodes["stem"])
    # Every edge carries the tensor shape; the ones leaving a downsampling stage are bold, "/2".
    expected = {
        ("input", "stem"): "3×224×224",
        ("stem", "layer1"): "64×56×56 /4",
        ("layer1", "layer2"): "256×56×56 ◆ feature 1: layer1 · reduction 4",
        ("layer2", "layer3"): "512×28×28 /2 ◆ feature 2: layer2 · reduction 8",
        ("layer3", "layer4"): "1024×14×14 /2 ◆ feature 3: layer3 · reduction 16",
        ("layer4", "head"): "2048×7×7 /2 ◆ feature 4: layer4 · reduction 32",
        ("head", "output"): "1000",
    }
    assert set(svg.edges) == {edge_title(*k) for k in expected}
    for (u, v), label in expected.items():
        edge = svg.edges[edge_title(u, v)]
        assert Svg.text(edge) == label
        assert (Svg.width(edge) > 1.5) == ("/" in label)
    # the stem's feature (timm's act1) is inside the collapsed stem: marked on its node
    assert "◆ feature 0: relu · reduction 2" in Svg.text(svg.nodes["stem"])
    legend = Svg.text(svg.root)
    assert "legend" in legend and "resolution divided by n" in legend
    assert "25.6M params" in legend and "4.09G MACs" in legend


@needs_dot
def test_blocks_level_draws_every_block_and_the_projection_shortcuts(resnet50):
    spec, analysis = resnet50
    svg = svg_of(spec, analysis, "blocks")
    blocks = [b for s in analysis.stages for b in s.blocks]
    shortcuts = [f"layer{i}.0.downsample" for i in range(1, 5)]
    assert len(blocks) == 16
    assert set(svg.nodes) == {"input", "stem", "head", "output", *blocks, *shortcuts}
    for name in shortcuts:
        block = name.rsplit(".", 1)[0]
        into = [t for t in svg.edges if t.endswith("->" + name)]
        assert len(into) == 1 and Svg.dashed(svg.edges[into[0]])  # input of the block
        assert Svg.dashed(svg.edges[edge_title(name, block)])  # into the block's merge
    assert "256→512 ch · 56×56→28×28" in Svg.text(svg.nodes["layer2.0"])
    assert "conv 1×1 s2 → batchnorm" in Svg.text(svg.nodes["layer2.0.downsample"])
    # Stages are clusters labelled with their block type, repeats, params and MACs.
    clusters = [Svg.text(g) for g in svg.root.iter(f"{SVG}g") if g.get("class") == "cluster"]
    assert any("layer3 · Bottleneck ×6 · params 7.10M · MACs 1.46G" in c for c in clusters)
    assert "512×28×28 /2" in Svg.text(svg.edges["layer2.0->layer2.1"])


@needs_dot
def test_layers_level_draws_exactly_the_shape_graph(resnet50):
    """One drawn node per node of the shape graph: every entry of `analysis.layers` (modules and
    merge nodes, reused modules once per use) plus `input` and `output`; nothing else. One drawn
    edge per graph edge, labelled with the shape of the tensor it carries."""
    spec, analysis = resnet50
    graph = analysis.graph
    svg = svg_of(spec, analysis, "layers")
    assert sorted(svg.nodes) == sorted(graph.nodes)  # titles are unique (Svg checks)
    assert len(svg.nodes) == len(analysis.layers) + 2 == 177
    assert {layer.name for layer in analysis.layers} == set(graph) - {"input", "output"}
    assert set(svg.edges) == {edge_title(u, v) for u, v in graph.edges}
    for u, v, data in graph.edges(data=True):
        edge = svg.edges[edge_title(u, v)]
        assert Svg.text(edge).split()[0] == shape(analysis.shapes[u].out_shape)
        role = data["role"]
        assert Svg.dashed(edge) == (role != "main"), (u, v)
        if role == "shortcut":
            assert diagram.SHORTCUT_BLUE in Svg.strokes(edge)
        if role == "skip":
            assert diagram.SKIP_GREY in Svg.strokes(edge)
    roles = [d["role"] for _, _, d in graph.edges(data=True)]
    assert roles.count("skip") == 12 and roles.count("shortcut") == 4 * 3
    # Layer parameters, stride-2 edges and merges as their own (circle) nodes.
    assert "conv 3×3 s2 p1" in Svg.text(svg.nodes["layer2.0.conv2"])
    assert "conv 7×7 s2 p3" in Svg.text(svg.nodes["conv1"])
    assert "/2" in Svg.text(svg.edges["layer2.0.conv2->layer2.0.bn2"])
    assert "/2" not in Svg.text(svg.edges["layer2.0.conv1->layer2.0.bn1"])
    assert next(svg.nodes["layer1.0.add"].iter(f"{SVG}ellipse"), None) is not None
    assert "relu (again)" in Svg.text(svg.nodes["layer1.0.relu#2"])


# ---------------------------------------------------------------------------------------------
# Broken specs


@needs_dot
@pytest.mark.parametrize("detail", diagram.DETAILS)
def test_a_broken_variant_is_drawn_with_its_error_in_red(broken, tmp_path, capsys, detail):
    out = tmp_path / f"out.{detail}.svg"
    assert main(["diagram", str(broken), "--detail", detail, "-o", str(out)]) == 1
    assert "merge-mismatch" in capsys.readouterr().err  # the diagnostics are printed too
    svg = Svg(out.read_bytes())
    # Red: exactly what holds a node with an error. Shapes after layer1.0's merge are tainted
    # (carried on from the main path), so that merge is the only error: the root cause.
    analysis = analyse(load(broken))
    graph = analysis.graph
    failing = [n for n in graph if analysis.shapes[n].error]
    assert failing == ["layer1.0.add"] and len(analysis.errors) == 1
    expected = {
        "layers": failing,
        "blocks": [analysis.nodes[n].block for n in failing],
        "stages": [analysis.nodes[n].stage for n in failing],
    }[detail]
    red = sorted(n for n, g in svg.nodes.items() if RED in Svg.strokes(g))
    assert red == sorted(set(expected))
    text = Svg.text(svg.nodes[expected[0]])
    assert "main path gives 16x62x62 but the identity gives 16x64x64" in text
    assert "(broken.arch:14)" in text  # the `merge add` line
    for red_node in red:
        into = [g for t, g in svg.edges.items() if t.endswith("->" + red_node)]
        assert into and all(RED in Svg.strokes(g) for g in into)
    title = Svg.text(svg.root)
    assert "1 error " in title
    # Parameters follow the channels, which the size mismatch keeps (and the global pool fixes
    # the linear layer's input): exact. MACs after the error follow made-up sizes: partial.
    assert "84.2k params ·" in title and "MACs (partial: the spec has errors)" in title
    # No "/n" from tainted sizes: only the untainted stem/layer1 entry could carry one.
    marks = [t for t, g in svg.edges.items() if "/" in Svg.text(g)]
    assert all(
        not analysis.shapes[t.split("->")[0]].tainted for t in marks if t.split("->")[0] in graph
    )
    if detail == "layers":  # both sides of the disagreement, with their shapes
        assert Svg.text(svg.edges["layer1.0.bn2->layer1.0.add"]).split()[0] == "16×62×62"
        assert Svg.text(svg.edges["relu->layer1.0.add"]).split()[0] == "16×64×64"
        assert "conv 5×5 p1" in Svg.text(svg.nodes["layer1.0.conv2"])


def test_error_text_and_names_are_escaped(resnet50):
    spec, _ = resnet50
    analysis = analyse(spec)
    hostile = 'a <b>tag</b> & "quotes" \\N back\\slash ]> \x01 > end'
    shapes = analysis.shapes
    shapes["layer1.0.conv2"] = dataclasses.replace(shapes["layer1.0.conv2"], error=hostile)
    shapes["layer2.0.add"] = dataclasses.replace(shapes["layer2.0.add"], error="<<table>>")
    source = diagram.to_dot(spec, analysis, "layers")
    assert "<b>tag</b>" not in source and "&lt;b&gt;tag&lt;/b&gt;" in source
    assert "\x01" not in source
    if shutil.which("dot"):
        svg = Svg(diagram.render(source, "svg"))
        text = Svg.text(svg.nodes["layer1.0.conv2"])
        assert 'a <b>tag</b> & "quotes" \\N back\\slash ]>' in text
        assert "<<table>>" in Svg.text(svg.nodes["layer2.0.add"])


def test_an_error_that_belongs_to_no_node_is_drawn_apart(resnet50):
    spec, _ = resnet50
    analysis = analyse(spec)
    span = Span(str(SPECS / "resnet50.arch"), 12, 5, 12, 9)
    analysis.diagnostics.append(Diagnostic(span, "test", "stage <x> is odd", layer="layer9"))
    source = diagram.to_dot(spec, analysis, "blocks")
    assert '"(errors)" [label=<<b>errors</b>' in source
    assert "stage &lt;x&gt; is odd (resnet50.arch:12)" in source
    assert "1 error</b>" in source


# ---------------------------------------------------------------------------------------------
# Determinism and speed


def test_same_input_gives_identical_dot(resnet50):
    spec, analysis = resnet50
    for detail in diagram.DETAILS:
        first = diagram.to_dot(spec, analysis, detail)
        assert first == diagram.to_dot(
            load(SPECS / "resnet50.arch"), analyse(load(SPECS / "resnet50.arch")), detail
        )


def test_dot_is_identical_across_hash_seeds(tmp_path):
    outputs = set()
    for seed in ("0", "1", "4242"):
        out = tmp_path / f"seed{seed}.dot"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "resgen",
                "diagram",
                str(SPECS / "resnext50_32x4d.arch"),
                "--detail",
                "layers",
                "--format",
                "dot",
                "-o",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.add(out.read_bytes())
    assert len(outputs) == 1


def test_resnet152_layers_dot_has_every_edge():
    """The layers-level DOT of a big network (its speed is in tests/benchmark.py: tests do not
    assert timings, which move with the machine's load)."""
    spec = load(SPECS / "resnet152.arch")
    analysis = analyse(spec)
    assert analysis.graph  # built on first use
    source = diagram.to_dot(spec, analysis, "layers")
    assert source.count("->") == analysis.graph.number_of_edges()


def test_no_torch_import():
    code = (
        "import sys; from resgen import diagram; from resgen.resolve import load; "
        "from resgen.shapes import analyse; s = load('specs/resnet18.arch'); "
        "diagram.to_dot(s, analyse(s), 'layers'); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------------------------------------
# Files, the command line and a missing `dot`


def run_without_dot(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m resgen ...` with a PATH on which there is no `dot`."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": str(empty)}
    return subprocess.run(
        [sys.executable, "-m", "resgen", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def test_without_dot_the_dot_file_is_written_and_only_images_fail(tmp_path):
    spec = str(SPECS / "resnet18.arch")
    proc = run_without_dot(tmp_path, "diagram", spec, "--format", "svg")
    assert proc.returncode == 2
    assert not (tmp_path / "resnet18.stages.svg").exists()
    assert (tmp_path / "resnet18.stages.dot").read_text().startswith("digraph resnet18 {")
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "apt-get install graphviz" in lines[0]
    assert "resnet18.stages.dot" in lines[0]

    (tmp_path / "resnet18.stages.dot").unlink()
    proc = run_without_dot(tmp_path, "diagram", spec, "--format", "dot")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert (tmp_path / "resnet18.stages.dot").exists()


def test_build_diagrams_without_dot_give_the_dot_and_do_not_fail(
    tmp_path, monkeypatch, capsys, resnet50
):
    spec, analysis = resnet50
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    files = diagram.build_diagram_files(spec, analysis, tmp_path, "resnet50")
    assert files == [(tmp_path / "resnet50.dot", diagram.to_dot(spec, analysis).encode())]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "apt-get install graphviz" in err[0]


@needs_dot
def test_build_diagrams_give_dot_and_svg(tmp_path, resnet50):
    spec, analysis = resnet50
    files = diagram.build_diagram_files(spec, analysis, tmp_path, "resnet50")
    assert [path for path, _ in files] == [tmp_path / "resnet50.dot", tmp_path / "resnet50.svg"]
    assert "layer3" in Svg(files[1][1]).nodes
    assert not list(tmp_path.iterdir())  # the caller writes them


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_default_output_name_in_the_current_directory(tmp_path, monkeypatch, fmt, magic):
    monkeypatch.chdir(tmp_path)
    assert main(["diagram", str(SPECS / "resnet18.arch"), "--format", fmt]) == 0
    assert (tmp_path / f"resnet18.stages.{fmt}").read_bytes().startswith(magic)


def test_output_directory_and_input_override(tmp_path):
    assert (
        main(
            [
                "diagram",
                str(SPECS / "resnet18.arch"),
                "--format",
                "dot",
                "--detail",
                "blocks",
                "--rankdir",
                "LR",
                "--input",
                "512x384",
                "-o",
                str(tmp_path),
            ]
        )
        == 0
    )
    source = (tmp_path / "resnet18.blocks.dot").read_text()
    assert "rankdir=LR" in source and "3×512×384" in source and "512×16×12" in source


def test_usage_errors(tmp_path, capsys):
    spec = str(SPECS / "resnet18.arch")
    # an extension that disagrees with --format (without it, the extension decides: issue 13)
    assert main(["diagram", spec, "-o", str(tmp_path / "x.png"), "--format", "svg"]) == 2
    assert "--format png" in capsys.readouterr().err
    assert main(["diagram", spec, "-o", str(tmp_path / "x.jpg")]) == 2  # not a format we write
    assert main(["diagram", str(tmp_path / "missing.arch")]) == 2
    assert main(["diagram", spec, "--format", "dot", "-o", str(tmp_path / "no/dir/x.dot")]) == 2
    assert not list(tmp_path.iterdir())


def test_a_file_without_a_network_is_a_spec_error(tmp_path, capsys):
    path = tmp_path / "blocks.arch"
    path.write_text("import std.resnet\n")
    assert main(["diagram", str(path), "--format", "dot", "-o", str(tmp_path / "x.dot")]) == 1
    assert "no-network" in capsys.readouterr().err


@pytest.mark.parametrize(
    "op, args, text",
    [
        ("conv", {"kernel": 3, "stride": 2, "padding": 1}, "conv 3×3 s2 p1"),
        (
            "conv",
            {"kernel": (1, 7), "padding": (0, 3), "groups": 32, "dilation": 2},
            "conv 1×7 p0×3 d2 g32",
        ),
        ("conv", {"kernel": 1}, "conv 1×1"),
        ("maxpool", {"kernel": 3, "padding": 1}, "maxpool 3×3 s3 p1"),
        ("avgpool", {"kernel": 2, "stride": 1}, "avgpool 2×2"),
        ("adaptive_avgpool", {"size": (1, 1)}, "adaptive avgpool to 1×1"),
        ("linear", {"features": 10}, "linear 10"),
        ("dropout", {"p": 0.2}, "dropout p=0.2"),
        ("batchnorm", {}, "batchnorm"),
    ],
)
def test_op_label(op, args, text):
    """An op's label, as diagrams and summaries show it (defaults filled in as lowered)."""
    declared = ops.lookup(op)
    assert declared.label(declared.with_defaults(args)) == text


def test_diagram_never_replaces_a_foreign_file_without_force(tmp_path):
    mine = tmp_path / "mine.svg"
    mine.write_text("<svg>my own drawing</svg>")
    spec = str(ROOT / "specs" / "resnet18.arch")
    assert main(["diagram", spec, "-o", str(mine)]) == 2
    assert mine.read_text() == "<svg>my own drawing</svg>"
    assert main(["diagram", spec, "-o", str(mine), "--force"]) == 0
    assert main(["diagram", spec, "-o", str(mine)]) == 0  # now it is resgen's: replaced freely


def test_tainted_stages_get_no_stride_and_the_title_counts_checks_errors(tmp_path):
    # conv2 with padding 0: layer1.0's merge fails; every size after it is the main path's,
    # carried on for the drawing. Before: "10 errors" (one per instance) against check's 1,
    # and stage strides such as "stride 4×3" made from broken sizes.
    path = tmp_path / "padding0.arch"
    path.write_text(
        BROKEN.replace(
            "conv2 = conv(planes, 5, padding=1", "conv2 = conv(planes, 3, padding=0"
        ).replace("input 3x64x64", "input 3x48x64")
    )
    spec = load(path)
    analysis = analyse(spec)
    assert len(analysis.errors) == 1
    for detail in diagram.DETAILS:
        source = diagram.to_dot(spec, analysis, detail)
        assert "1 error</b>" in source and "errors</b>" not in source
    stages = diagram.to_dot(spec, analysis, "stages")
    layer2 = next(line for line in stages.splitlines() if line.strip().startswith("layer2 ["))
    assert "stride 2 ·" not in layer2 and "16→32 ch · " in layer2
    assert not re.search(r"<b>/\d", stages)  # no untainted downsampling in this net
    layers = diagram.to_dot(spec, analysis, "layers")
    assert not re.search(r"<b>/\d", layers)
    # Parameters follow channels only; MACs follow the made-up sizes.
    assert "params (partial" not in stages and "MACs (partial: the spec has errors)" in stages


def test_a_healthy_spec_marks_strides(resnet50):
    spec, analysis = resnet50
    stages = diagram.to_dot(spec, analysis, "stages")
    assert "stride 2 ·" in stages and "<b>/2</b>" in stages and "partial" not in stages
