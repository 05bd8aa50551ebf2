"""`resgen sweep`: grids, ranges, seeded samples, --where, --sort, CSV/JSON (against the
schema), plots, errors per variant, and the fast path against the full analysis.

Expected counts come from torchvision's published tables (ResNeXt-50 32x4d: 25,028,904
parameters) or from resgen.shapes.analyse, whose counts tests/test_counts.py checks against torch.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from resgen import cli
from resgen.diagnostics import Span
from resgen.resolve import Loader
from resgen.shapes import analyse
from resgen.spec import Network, Param
from resgen.sweep import Sweep, space
from resgen.sweep.evaluate import count, with_params

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
SCHEMA = ROOT / "resgen" / "schemas" / "sweep.schema.json"

VARIANT = """import std.resnet

network v {
    input 3x64x64
    param width = 64
    param depth = 2
    param stride = 2
    param kernel = 3
    stem { conv1 = conv(width, kernel, padding=1, bias=false) bn1 = batchnorm relu = relu }
    stage layer1 = depth x BasicBlock(width)
    stage layer2 = depth x BasicBlock(width * 2 / 3, stride=stride)
    head { avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }
}
"""


@pytest.fixture
def variant(tmp_path):
    path = tmp_path / "v.arch"
    path.write_text(VARIANT)
    return path


def run_json(capsys, *argv) -> list[dict]:
    assert cli.main(["sweep", *map(str, argv), "--json", "--jobs", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def test_grid_of_lists_and_ranges(capsys):
    records = run_json(
        capsys,
        SPECS / "resnet50.arch",
        "--param",
        "groups=1,32",
        "--param",
        "width_per_group=4..8:4",
    )
    combos = [(r["params"]["groups"], r["params"]["width_per_group"]) for r in records]
    assert combos == [(1, 4), (1, 8), (32, 4), (32, 8)]  # the first param varies slowest
    resnext = records[2]
    assert resnext["param_count"] == 25_028_904  # torchvision's resnext50_32x4d
    assert resnext["valid"] and resnext["error"] is None and resnext["output_stride"] == 32
    for r in records:
        values = r["params"]
        params = (f"groups={values['groups']}", f"width_per_group={values['width_per_group']}")
        reference = analyse(Loader(params=params).load(str(SPECS / "resnet50.arch")))
        assert (r["param_count"], r["macs"]) == (reference.params, reference.macs)


def network_with(*names: str) -> Network:
    span = Span("f", 1, 1, 1, 1)
    return Network(span=span, name="n", params=tuple(Param(span=span, name=n) for n in names))


def test_value_lists_keep_pairs_whole():
    (axis,) = space.parse_axes(["kernel=3,(1, 7),(7, 1)"], network_with("kernel"), {})
    assert axis.grid() == [3, (1, 7), (7, 1)]


def test_ranges_are_exact_multiples_of_their_step():
    net = network_with("wm")
    (axis,) = space.parse_axes(["wm=2..3:0.25"], net, {})
    assert axis.grid() == [2.0, 2.25, 2.5, 2.75, 3.0]
    (axis,) = space.parse_axes(["wm=2..2.5:0.1"], net, {})
    assert axis.grid() == [2.0, 2.1, 2.2, 2.3, 2.4, 2.5]  # not 2.3000000000000003


def test_sampling_is_reproducible_and_follows_the_documented_draws(variant, capsys):
    argv = [variant, "--sample", "40", "--param", "width=8..64:8~log", "--param", "depth=1..4"]
    first = run_json(capsys, *argv, "--seed", "7")
    again = run_json(capsys, *argv, "--seed", "7")
    other = run_json(capsys, *argv, "--seed", "8")
    assert first == again and first != other
    # The module docstring's recipe, written out: one random() per param per variant.
    rng = random.Random(7)
    expected = []
    for _ in range(40):
        u = rng.random()
        floor = 8 - min(8, 8 / 2)
        f = math.exp(math.log(floor) + u * (math.log(64) - math.log(floor)))
        width = 8 * math.ceil(f / 8)
        depth = 1 + int(rng.random() * 4)
        expected.append((width, depth))
    assert [(r["params"]["width"], r["params"]["depth"]) for r in first] == expected
    assert all(r["params"]["width"] % 8 == 0 and 8 <= r["params"]["width"] <= 64 for r in first)


def test_errors_per_variant_are_located(variant, capsys):
    records = run_json(
        capsys, variant, "--param", "width=16,24", "--param", "kernel=7", "--input", "64x64,4x4"
    )
    bad = [r for r in records if r["params"]["width"] == 16 and r["input"] == [3, 64, 64]]
    assert [r["valid"] for r in records] == [False, False, True, False]
    for r in bad:  # 16 * 2 / 3 leaves a remainder: the spec's line 11, at `width * 2 / 3`
        assert r["error"]["code"] == "inexact-division"
        assert (r["error"]["file"], r["error"]["line"], r["error"]["column"]) == (
            str(variant),
            11,
            39,
        )
        assert r["param_count"] is None and r["macs"] is None
    small = records[3]  # width 24 at 4x4: the 7x7 stem gives 0x0, at the stem's conv
    assert small["error"]["code"] == "too-small"
    assert (small["error"]["line"], small["error"]["column"]) == (9, 12)


def test_where_and_sort(variant, capsys):
    records = run_json(
        capsys,
        variant,
        "--param",
        "width=12..48:12",
        "--param",
        "depth=1,2",
        "--where",
        "valid and macs <= 2e8 and depth == 2",
        "--sort",
        "params:desc",
    )
    assert records and all(r["valid"] and r["macs"] <= 2e8 for r in records)
    assert all(r["params"]["depth"] == 2 for r in records)
    counts = [r["param_count"] for r in records]
    assert counts == sorted(counts, reverse=True)


def test_where_names_are_checked_and_metrics_reserved(tmp_path, capsys):
    spec = tmp_path / "m.arch"
    spec.write_text(VARIANT.replace("param kernel = 3", "param kernel = 3\n    param macs = 1"))
    assert cli.main(["sweep", str(spec), "--where", "macs > 1"]) == 2
    err = capsys.readouterr().err
    assert "--where:1:13: error:" in err and "metric names are reserved" in err
    assert cli.main(["sweep", str(spec), "--where", "depht > 1"]) == 2
    assert "(did you mean `depth`?)" in capsys.readouterr().err
    assert cli.main(["sweep", str(spec), "--where", "width + 1"]) == 2
    assert "true or false" in capsys.readouterr().err


def test_bad_param_options_are_usage_errors(variant, capsys):
    for option, message in [
        ("widht=8", "has no param `widht` (did you mean `width`?)"),
        ("width=8,,16", "an empty value"),
        ("width=64..8", "is empty"),
        ("width=8..64~cauchy", "not a distribution"),
        ("width=2.0..3.0,4", "without a STEP can only be sampled"),
        ("width=2.0..3.0", "needs a STEP to be listed"),
    ]:
        code = cli.main(["sweep", str(variant), "--param", option])
        assert code == 2, option
        assert message in capsys.readouterr().err, option


def test_json_follows_the_schema_and_csv_its_header(variant, tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    records = run_json(capsys, variant, "--param", "width=12,16", "--param", "kernel=3,(3, 1)")
    jsonschema.validate(records, json.loads(SCHEMA.read_text()))
    out = tmp_path / "s.csv"
    assert cli.main(["sweep", str(variant), "--param", "width=12,16", "--csv", str(out)]) == 0
    import csv

    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and rows[0]["variant"] == "0" and rows[1]["valid"] == "false"
    assert rows[1]["error_code"] == "inexact-division" and rows[1]["error_line"] == "11"


def test_csv_and_plot_follow_the_overwrite_rules(variant, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    mine.write_text("a,b\n1,2\n")
    assert cli.main(["sweep", str(variant), "--csv", str(mine)]) == 2
    assert "not overwriting" in capsys.readouterr().err and mine.read_text() == "a,b\n1,2\n"
    ours = tmp_path / "ours.csv"
    for _ in range(2):  # resgen's own CSV is replaced
        assert cli.main(["sweep", str(variant), "--csv", str(ours)]) == 0
    assert cli.main(["sweep", str(variant), "--csv", str(mine), "--force"]) == 0
    assert mine.read_text().startswith("variant,")
    picture = tmp_path / "mine.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\nnot mine to replace")
    assert cli.main(["sweep", str(variant), "--plot", str(picture)]) == 2
    assert cli.main(["sweep", str(variant), "--plot", str(tmp_path / "p.jpg")]) == 2


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_is_a_valid_image(variant, tmp_path, suffix, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / f"plot{suffix}"
    argv = [
        "sweep",
        str(variant),
        "--param",
        "width=12..48:4",
        "--param",
        "depth=1..3",
        "--plot",
        str(out),
        "--colour",
        "depth",
    ]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # its own plot is replaced
    if suffix == ".png":
        from PIL import Image

        with Image.open(out) as image:
            image.verify()
            assert image.size[0] > 400
    else:
        import xml.etree.ElementTree as ET

        assert ET.parse(out).getroot().tag.endswith("svg")


def test_pareto_front():
    from resgen.sweep.plot import pareto_front

    points = [(10, 5), (20, 5), (15, 9), (30, 8), (5, 1), (40, 20)]
    # most params for the MACs: (5,1), then (20,5) beats (10,5), (30,8), (40,20)
    assert pareto_front(points) == [(5, 1), (20, 5), (30, 8), (40, 20)]


def test_jobs_give_the_same_records(variant, capsys):
    argv = [
        variant,
        "--param",
        "width=12..96:4",
        "--param",
        "depth=1..4",
        "--param",
        "stride=1,2",
        "--input",
        "64x64,32x32",
    ]
    assert cli.main(["sweep", *map(str, argv), "--json", "--jobs", "2"]) == 0
    parallel = json.loads(capsys.readouterr().out)
    assert len(parallel) > 128 and parallel == run_json(capsys, *argv)


def test_exit_codes(tmp_path, variant, capsys):
    broken = tmp_path / "broken.arch"
    broken.write_text("network n { input 3x8x8 stem { c = conv(4, 3 } }")
    assert cli.main(["sweep", str(broken)]) == 1
    assert cli.main(["sweep", str(tmp_path / "missing.arch")]) == 2
    assert cli.main(["sweep", str(variant), "--param", "width=16"]) == 0  # all invalid: data


SPEC_FILES = (
    sorted(SPECS.glob("*.arch"))
    + sorted((SPECS / "timm").glob("*.arch"))
    + sorted((SPECS / "regnet").glob("*.arch"))
    + [Path(__file__).parent / "data" / "all_ops.arch"]  # every op, a shared conv applied twice
)


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_fast_path_agrees_with_the_analysis(path):
    """Validity, parameters, MACs and output stride of the graph-free path equal resgen.shapes'
    at several input sizes and random param values (a variant the fast path calls invalid is
    re-analysed, so only its valid answers need checking, and that it misses no error)."""
    sweep = Sweep.load(str(path))
    rng = random.Random(path.stem)
    params = {p.name: sweep.defaults()[p.name] for p in sweep.network.params}
    tries = [{}]
    for _ in range(3):
        values = {}
        for name, value in params.items():
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                values[name] = max(1, value + rng.choice([-value // 2, -1, 0, 1, value]))
        tries.append(values)
    for values in tries:
        plan = with_params(sweep.plan, values)
        spec = sweep.spec.model_copy(update={"network": plan.network})
        for size in (None, (None, 64, 48), (None, 17, 17), (None, 3, 3)):
            fast = count(plan, size, {})
            full = analyse(spec, size, plan)
            assert (fast is not None) == full.ok, (values, size)
            if fast is not None:
                assert (fast.params, fast.macs, fast.output_stride) == (
                    full.params,
                    full.macs,
                    full.output_stride,
                ), (values, size)


def test_progress_bar_only_on_a_terminal(variant, monkeypatch, capsys):
    import io
    import sys

    from resgen.sweep import command

    monkeypatch.setattr(command, "PROGRESS_DELAY", 0)  # the bar waits a second by default
    argv = ["sweep", str(variant), "--param", "width=12..96:12", "--jobs", "1"]
    assert cli.main(argv) == 0
    assert "variant" not in capsys.readouterr().err  # not a terminal: no bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(argv) == 0
    # tqdm redraws at most every 0.1 s, so how far it got depends on the machine: the bar of
    # 8 variants is there
    assert "/8 [" in terminal.getvalue() and "variant" in terminal.getvalue()
