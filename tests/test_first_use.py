"""First-use friction (issue 13): located notes and hints that lead somewhere, 3-D inputs said to
be out of scope, a layout warning for H x W x C inputs, diagram formats from the file name,
`--version`, and the Python API returning what the commands print."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import resgen
from resgen.cli import main
from resgen.shapes import analyse

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "net") -> Path:
    path = tmp_path / f"{name}.arch"
    path.write_text(text)
    return path


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


# ---------------------------------------------------------------------------------------------
# 12: a merge mismatch notes the culprit layer at its own line

WIDE = """block WideKernel(planes) {
    expansion 1
    main {
        conv1 = conv(planes, 3, padding=1, bias=false)
        bn1 = batchnorm
        conv2 = conv(planes, 5, padding=1, bias=false)
    }
    merge add
}
network variant { input 64x56x56  stage layer1 = 2 x WideKernel(64) }
"""


def test_merge_mismatch_notes_the_culprit_layer(tmp_path):
    """conv2: (56 + 2*1 - 5) / 1 + 1 = 54 (torch's formula); the note points at conv2."""
    path = _write(tmp_path, WIDE)
    [error] = analyse(resgen.load(path)).errors
    assert error.code == "merge-mismatch"
    assert "conv2: (56 + 2*1 - 5) / 1 + 1 = 54" in error.message
    culprit = [note for note in error.notes if "conv2" in note[1]]
    assert [n[1] for n in culprit] == ["`conv2` gives 64x54x54 here"]
    assert culprit[0][0].line == _line_of(WIDE, "conv2 = conv")


# ---------------------------------------------------------------------------------------------
# 13: hints that lead somewhere


def test_a_duplicate_stateful_layer_is_not_told_to_apply_it_again(tmp_path):
    text = (
        "network v { input 3x16x16  stem { norm = batchnorm c = conv(3, 1) norm = batchnorm } }\n"
    )
    [error] = resgen.check(_write(tmp_path, text))
    assert error["code"] == "duplicate-name"
    assert "apply it again" not in error["hint"] and "`norm2 = ...`" in error["hint"]
    # following either way of the hint works: a second norm, or the same one applied again
    # (one module, its weights shared: the input has the channels it was built for)
    fixed = text.replace("c = conv(3, 1) norm = batchnorm", "c = conv(3, 1) norm2 = batchnorm")
    assert resgen.check(_write(tmp_path, fixed, "fixed")) == []
    reused = text.replace("c = conv(3, 1) norm = batchnorm", "c = conv(3, 1) norm")
    assert resgen.check(_write(tmp_path, reused, "reused")) == []
    stateless = "network v { input 3x16x16  stem { r = relu c = conv(3, 1) r = relu } }\n"
    [error] = resgen.check(_write(tmp_path, stateless, "stateless"))
    assert error["hint"] == "write just `r` to apply it again"


@pytest.mark.parametrize("use", ["stage s = 1 x Bottleneck(16)", "stem { b = Bottleneck(16) }"])
def test_a_library_block_without_its_import_gets_the_import(tmp_path, use):
    text = f"network v {{ input 64x16x16  {use} }}\n"
    [error] = resgen.check(_write(tmp_path, text))
    assert error["hint"] == "`Bottleneck` is in the standard library: add `import std.resnet`"
    # following the hint works
    assert resgen.check(_write(tmp_path, "import std.resnet\n" + text, "fixed")) == []


def test_an_input_that_looks_like_h_w_c_is_a_warning(tmp_path):
    """torch takes N x C x H x W: 256x128x3 is 256 channels of 128 x 3 pixels."""
    path = _write(tmp_path, "network v { input 3x16x16  stem { c = conv(8, 3, padding=1) } }\n")
    [warning] = analyse(resgen.load(path), (256, 128, 3)).warnings
    assert warning.code == "input-layout"
    assert "256 channels of 128 x 3 pixels" in warning.message and "3x256x128" in warning.hint
    assert analyse(resgen.load(path), (3, 256, 128)).diagnostics == []


# ---------------------------------------------------------------------------------------------
# 11: 3-D inputs are out of scope, and said so


def test_a_four_size_input_says_3d_is_out_of_scope(tmp_path, capsys):
    path = _write(tmp_path, "network v { input 3x16x16  stem { c = conv(8, 3) } }\n")
    with pytest.raises(SystemExit):
        main(["check", str(path), "--input", "3x16x112x112"])
    assert "3-D (video) inputs, C x T x H x W, are out of scope" in capsys.readouterr().err
    text = "network v {\n    input 3x16x112x112\n    stem { c = conv(8, 3) }\n}\n"
    [error] = resgen.check(_write(tmp_path, text, "video"))
    assert error["code"] == "syntax" and (error["line"], error["column"]) == (
        2,
        19,
    )  # the third `x`
    assert "out of scope" in error["hint"]


# ---------------------------------------------------------------------------------------------
# 14: the diagram format follows the file name


def test_diagram_format_from_the_extension(tmp_path, capsys):
    spec = _write(tmp_path, "network v { input 3x16x16  stem { c = conv(8, 3) } }\n")
    dot = tmp_path / "v.dot"
    assert main(["diagram", str(spec), "-o", str(dot)]) == 0
    assert dot.read_text().startswith("digraph")
    jpg = tmp_path / "v.jpg"
    assert main(["diagram", str(spec), "-o", str(jpg)]) == 2  # SVG inside a .jpg: refused
    assert not jpg.exists()
    assert main(["diagram", str(spec), "-o", str(tmp_path / "v.png"), "--format", "svg"]) == 2
    err = capsys.readouterr().err
    assert "is not a diagram file resgen writes" in err and "pass --format png" in err


# ---------------------------------------------------------------------------------------------
# 15: --version and the Python API


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"resgen {version('resgen')}"
    assert resgen.__version__ == version("resgen")


def test_api_returns_what_the_commands_print(tmp_path, capsys):
    spec_path = ROOT / "specs" / "resnet50.arch"
    spec = resgen.load(spec_path, params={"groups": 32, "width_per_group": 4}, input=(3, 320, 320))
    assert resgen.check(spec) == []
    data = resgen.summary(spec)
    assert data["params"] == 25_028_904  # torchvision's resnext50_32x4d
    assert data["input"] == [3, 320, 320]
    argv = ["summary", str(spec_path), "--json", "--input", "3x320x320"]
    argv += ["--param", "groups=32", "--param", "width_per_group=4"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == data
    analysis = resgen.analyse(spec_path, input=(128, 96))
    assert analysis.input == (3, 128, 96) and analysis.output == (1000,)
    bad = _write(tmp_path, "network v { input 3x4x4  stem { c = conv(8, 7) } }\n")
    assert main(["check", "--json", str(bad)]) == 1
    assert resgen.check(bad) == json.loads(capsys.readouterr().out)
    with pytest.raises(ValueError):
        resgen.load(spec_path, params={"groups": "32"})


def test_import_resgen_and_the_torch_free_api_stay_light():
    code = (
        "import sys, resgen\n"
        "heavy = ('torch', 'jinja2', 'graphviz', 'lark', 'networkx')\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in heavy], 'import'\n"
        f"resgen.summary({str(ROOT / 'specs' / 'resnet18.arch')!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'jinja2', 'graphviz'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
