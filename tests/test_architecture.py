"""The shape of the code base: each op is declared in one place, and resgen's modules import each
other without a cycle (issue 11)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

from resgen import ops

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resgen"
OP_DECLARATIONS = PACKAGE / "ops"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_op_name_is_compared_outside_the_op_declarations():
    """No string that is an op's (or a merge's) name appears in resgen's code or templates
    outside resgen/ops/: later stages ask the op, they never compare its name."""
    names = {op.name for op in ops.registered()}
    assert {"conv", "batchnorm", "relu", "linear", "flatten", "add", "mul"} <= names
    found = []
    for path in PACKAGE.rglob("*.py"):
        if OP_DECLARATIONS in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    alternatives = "|".join(map(re.escape, sorted(names)))
    quoted = re.compile(rf"""["']({alternatives})["']""")
    for path in (ROOT / "templates").glob("*.jinja"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if quoted.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The resgen modules `module` imports anywhere in its file (function-level imports too)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: from the module's package
                package = module.split(".")[: -node.level or None]
                base = ".".join([*package, node.module])
            for alias in node.names:  # `from resgen import codes` imports resgen.codes
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    return {t for t in targets if t in known and t != module}


def test_resgen_modules_import_each_other_without_a_cycle():
    sources = _sources()
    graph = nx.DiGraph()
    for module, path in sources.items():
        graph.add_node(module)
        graph.add_edges_from((module, target) for target in _imports(module, path, set(sources)))
    cycles = list(nx.simple_cycles(graph))
    assert cycles == []
    # The library does not reach for the command line: resgen.load() loads no argparse code.
    assert not nx.has_path(graph, "resgen.build", "resgen.cli")
    for module in ("resgen.summary", "resgen.diagram", "resgen.codegen", "resgen.shapes"):
        assert "resgen.cli" not in nx.descendants(graph, module), module


def test_readme_documents_every_diagnostic_code_and_builtin_op():
    """README's error tables list exactly the codes of resgen.codes, and its op table exactly
    the registered built-in ops, so neither can drift from the registries."""
    from resgen.codes import CODES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    errors = readme[readme.index("## Errors") : readme.index("## Adding ops")]
    documented = set()
    for line in errors.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z-]+)`", line.split("|")[1]))
    assert documented == set(CODES)
    table = readme[readme.index("### Built-in ops") : readme.index("## Networks")]
    rows = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert rows == {op.name for op in ops.BUILTIN}
