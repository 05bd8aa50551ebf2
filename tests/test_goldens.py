"""generated/ holds the code and the stages diagram (DOT) of every spec in specs/, up to date.

The SVGs beside them depend on the installed Graphviz version, so only their presence is checked.

Regenerate with `resgen build specs/*.arch` from the repository root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen import diagram, shapes
from resgen.build import generate
from resgen.resolve import load

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.arch"))
REGENERATE = "regenerate with `resgen build specs/*.arch` from the repository root"


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # headers name specs by their path from here


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_golden_is_current(spec):
    golden = ROOT / "generated" / f"{spec.stem}.py"
    assert golden.is_file(), f"{golden.relative_to(ROOT)} is missing; {REGENERATE}"
    expected = generate(f"specs/{spec.name}")
    assert golden.read_text(encoding="utf-8") == expected, (
        f"{golden.relative_to(ROOT)} is out of date; {REGENERATE}"
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_golden_diagram_is_current(spec):
    golden = ROOT / "generated" / f"{spec.stem}.dot"
    assert golden.is_file(), f"{golden.relative_to(ROOT)} is missing; {REGENERATE}"
    loaded = load(f"specs/{spec.name}")
    expected = diagram.to_dot(loaded, shapes.analyse(loaded))
    assert golden.read_text(encoding="utf-8") == expected, (
        f"{golden.relative_to(ROOT)} is out of date; {REGENERATE}"
    )
    assert golden.with_suffix(".svg").is_file()


def test_no_stale_goldens():
    modules = {p.stem for p in (ROOT / "generated").glob("*.py")} - {"__init__"}
    assert modules == {p.stem for p in SPECS}, f"generated/ and specs/ differ; {REGENERATE}"


def test_golden_imports_from_the_repository_root():
    torch = pytest.importorskip("torch")
    from generated.resnet50 import resnet50

    with torch.no_grad():
        assert resnet50()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
