"""The standard library (resgen/stdlib/*.arch): each module loads on its own, and all of them
import into one file together, so a spec can mix blocks of several families: no two modules
define a block of the same name (that would be a duplicate-name error at the second import)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

import resgen

MODULES = sorted(
    entry.name.removesuffix(".arch")
    for entry in resources.files("resgen.stdlib").iterdir()
    if entry.name.endswith(".arch")
)


@pytest.mark.parametrize("module", MODULES)
def test_module_loads(tmp_path, module):
    spec = tmp_path / "one.arch"
    spec.write_text(f"import std.{module}\n")
    assert resgen.load(spec).network is None


def test_all_modules_import_together(tmp_path):
    spec = tmp_path / "all.arch"
    spec.write_text("".join(f"import std.{module}\n" for module in MODULES))
    assert resgen.load(spec).network is None


def test_readme_lists_every_module():
    """README's import table has a row for each module."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert [m for m in MODULES if f"| `std.{m}` |" not in readme] == []
