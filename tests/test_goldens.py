"""generated/ holds the code for every spec in specs/, and it is up to date.

Regenerate with `resgen build specs/*.arch` from the repository root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen.build import generate

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
        f"{golden.relative_to(ROOT)} is out of date; {REGENERATE}")


def test_no_stale_goldens():
    modules = {p.stem for p in (ROOT / "generated").glob("*.py")} - {"__init__"}
    assert modules == {p.stem for p in SPECS}, f"generated/ and specs/ differ; {REGENERATE}"


def test_golden_imports_from_the_repository_root():
    torch = pytest.importorskip("torch")
    from generated.resnet50 import resnet50

    with torch.no_grad():
        assert resnet50()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
