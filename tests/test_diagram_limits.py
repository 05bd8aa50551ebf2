"""Diagrams within bounds (issue 12, item 13): a legal network too big to draw is refused with a
hint naming the details that fit, `build` skips its picture rather than hang, and `dot` itself is
stopped after DOT_SECONDS."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resgen import diagram
from resgen.cli import main

NEEDS_DOT = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")


def _stage(tmp_path: Path, blocks: int, stages: int = 1) -> Path:
    lines = "\n".join(
        f"    stage layer{i} = {blocks} x BasicBlock(8)" for i in range(1, stages + 1)
    )
    path = tmp_path / "big.arch"
    path.write_text(
        "import std.resnet\nnetwork big {\n    input 3x16x16\n"
        f"    stem {{ c = conv(8, 3, padding=1) }}\n{lines}\n}}\n"
    )
    return path


def test_an_800_block_stage_is_refused_at_layer_detail_with_a_hint(tmp_path):
    """The issue's example: five minutes in dot before. Now refused at once, as its own process
    (a hang would be stopped by the timeout)."""
    spec = _stage(tmp_path, 800)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "resgen", "diagram", "--detail", "layers", str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "5,603 nodes" in result.stderr and "--detail blocks (803 nodes)" in result.stderr
    assert not list(tmp_path.glob("big.layers.*"))
    assert time.monotonic() - start < 120


def test_the_limit_counts_what_each_detail_draws(tmp_path, monkeypatch, capsys):
    spec = _stage(tmp_path, 40)
    monkeypatch.setattr(diagram, "MAX_DRAWN_NODES", 50)
    capsys.readouterr()
    out = str(tmp_path / "x.dot")
    assert main(["diagram", str(spec), "--detail", "blocks", "--format", "dot", "-o", out]) == 0
    assert main(["diagram", str(spec), "--detail", "layers", "--format", "dot", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "layers diagram would draw" in err and "--detail blocks (43 nodes)" in err


def test_build_skips_a_diagram_too_big_to_draw(tmp_path, monkeypatch, capsys):
    """The module is what `build` is for: the picture is skipped with one line, exit 0."""
    spec = _stage(tmp_path, 1, stages=12)
    monkeypatch.setattr(diagram, "MAX_DRAWN_NODES", 10)
    capsys.readouterr()
    assert main(["build", "-o", str(tmp_path / "out"), str(spec)]) == 0
    err = capsys.readouterr().err
    assert "not drawn" in err and "stages diagram would draw 15 nodes" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["big.py"]


@NEEDS_DOT
def test_dot_is_stopped_after_its_time(tmp_path, monkeypatch, capsys):
    spec = _stage(tmp_path, 30)
    monkeypatch.setattr(diagram, "DOT_SECONDS", 0.01)
    capsys.readouterr()
    start = time.monotonic()
    status = main(["diagram", "--detail", "layers", str(spec), "-o", str(tmp_path / "x.svg")])
    err = capsys.readouterr().err
    assert status == 2 and "dot took longer than 0.01 s" in err and "Traceback" not in err
    assert not (tmp_path / "x.svg").exists() and time.monotonic() - start < 60
    # build keeps the .dot and says why the .svg is missing
    assert main(["build", "-o", str(tmp_path / "out"), str(spec)]) == 0
    assert "dot took longer" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["big.dot", "big.py"]
