"""User templates (`build --templates DIR`) render in jinja2's sandbox (issue 12, items 3 and 10).

A template gets plain data, may loop, test and interpolate, may include other templates of its
own folder and resgen's shipped ones, and nothing else: each attack below would run code, read a
file or hang resgen without the sandbox and its bounds (resgen/render.py). A broken templates
folder is one line and exit 2.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from resgen import build, render
from resgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "templates").glob("*.jinja"))
NET = (
    "import std.resnet\nnetwork net {\n    input 3x16x16\n    stem { conv1 = conv(8, 3, "
    "padding=1) bn1 = batchnorm relu = relu(inplace=true) }\n    stage layer1 = 1 x "
    "BasicBlock(8)\n    head { pool = adaptive_avgpool(1) flatten = flatten fc = linear(3) }\n}\n"
)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


@pytest.fixture
def setup(tmp_path):
    """(spec, templates folder with copies of the shipped templates, output folder)."""
    spec = tmp_path / "net.arch"
    spec.write_text(NET)
    templates = tmp_path / "templates"
    templates.mkdir()
    for path in SHIPPED:
        (templates / path.name).write_text(path.read_text())
    return spec, templates, tmp_path / "out"


def _build(capsys, spec, templates, out) -> tuple[int, str]:
    status, _out, err = _run(
        capsys, "build", "--no-diagram", "--templates", str(templates), "-o", str(out), str(spec)
    )
    return status, err


def test_copies_of_the_shipped_templates_give_the_same_module(setup, capsys):
    spec, templates, out = setup
    assert _build(capsys, spec, templates, out)[0] == 0
    assert (out / "net.py").read_text() == build.generate(spec)


# Each would run a command, read a file or reach Python's internals in a plain Environment.
# PWNED is replaced by a path that must not come to exist.
ESCAPES = {
    "cycler-globals": '{{ cycler.__init__.__globals__.os.system("touch PWNED") }}',
    "joiner-globals": '{{ joiner.__init__.__globals__.os.system("touch PWNED") }}',
    "namespace-globals": '{{ namespace.__init__.__globals__.os.system("touch PWNED") }}',
    "lipsum-globals": '{{ lipsum.__globals__["os"].system("touch PWNED") }}',
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "self-context": "{{ self._TemplateReference__context }}",
    "string-format": '{{ "{0.__class__.__init__.__globals__}".format(module) }}',
    "format-filter": '{{ "%s"|format(module.__class__) }}',
    "attr-filter": '{{ module|attr("__class__") }}',
    "loop-internals": "{% for x in [1] %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "code-tree": "{{ module.network.layers[0].build._code }}",
    "list-append": "{{ module.blocks.append(1) }}",
    "dict-update": '{{ module.update({"x": 1}) }}',
    "parent-include": '{% include "../../../../../../etc/passwd" %}',
    "packaged-escape": '{% include "../resgen/cli.py" %}',
    "absolute-include": '{% include "/etc/passwd" %}',
    "import-os": '{% import "os" as os %}',
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_a_template_cannot_escape_the_sandbox(case, setup, capsys):
    spec, templates, out = setup
    pwned = out.parent / "PWNED"
    (templates / "module.py.jinja").write_text(ESCAPES[case].replace("PWNED", str(pwned)) + "\n")
    status, err = _build(capsys, spec, templates, out)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "module.py.jinja" in err, err
    assert not pwned.exists() and not out.exists()


def test_the_view_is_plain_data(setup):
    """Dicts, lists, strings, numbers, booleans and None: no object with methods of its own
    (a Path with read_text, a dataclass) reaches a template."""
    spec, _templates, _out = setup
    seen = []

    def walk(value):
        seen.append(type(value))
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    captured = {}
    real_render = render.render

    def spy(template, view, directory=None):
        captured["view"] = render.plain(view)
        return real_render(template, view, directory)

    import resgen.codegen

    original = resgen.codegen.render
    resgen.codegen.render = spy
    try:
        build.generate(spec)
    finally:
        resgen.codegen.render = original
    walk(captured["view"])
    assert set(seen) <= {dict, list, str, render.CodeText, int, float, bool, type(None)}
    assert render.CodeText in seen  # code arrives as text


def test_a_template_link_out_of_its_folder_is_not_read(setup, capsys, tmp_path):
    """A symbolic link in the templates folder to a secret: included into a comment of valid
    Python, the AST guard would not see it."""
    spec, templates, out = setup
    secret = tmp_path / "secret.jinja"
    secret.write_text("hunter2")
    (templates / "leak.jinja").symlink_to(secret)
    module = (templates / "module.py.jinja").read_text()
    (templates / "module.py.jinja").write_text(module + '# {% include "leak.jinja" %}\n')
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and "leak.jinja" in err and "hunter2" not in err
    assert not out.exists()


def test_a_fifo_template_does_not_hang(setup, capsys):
    spec, templates, out = setup
    os.unlink(templates / "macros.jinja")
    os.mkfifo(templates / "macros.jinja")
    start = time.monotonic()
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and "regular file" in err and time.monotonic() - start < 30


@pytest.mark.parametrize(
    "text, words",
    [
        ('{{ "x" * 10000000000 }}', "product"),
        ("{{ 10 ** 10 ** 10 }}", "power"),
        ('{{ "x"|center(10000000000) }}', "argument"),
        ('{{ "x".ljust(10000000000) }}', "argument"),
        ('{{ "%10000000000d" % 1 }}', "width"),
        ('{{ "{:>10000000000}".format(1) }}', "width"),
        ('{{ "%10000000000d"|format(1) }}', "width"),
        ("{{ range(10000000000)|list }}", "argument"),
        (
            "{% set n = namespace(x=3) %}{% for i in range(100) %}{% set n.x = n.x * n.x %}"
            "{% endfor %}{{ n.x }}",
            "number",
        ),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recurse"),
    ],
    ids=[
        "repeat",
        "power",
        "center",
        "ljust",
        "percent",
        "str-format",
        "format-filter",
        "range",
        "squaring",
        "recursion",
    ],
)
def test_a_template_cannot_exhaust_memory(text, words, setup, capsys):
    spec, templates, out = setup
    (templates / "module.py.jinja").write_text(text + "\n")
    start = time.monotonic()
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and words in err, err
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    "text",
    [
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        # No call, no arithmetic, no output inside the loops: only the timer stops it.
        "{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}",
    ],
    ids=["calls", "no-calls"],
)
def test_a_template_cannot_hang(text, setup, capsys, monkeypatch):
    monkeypatch.setattr(render, "TEMPLATE_SECONDS", 1.0)
    spec, templates, out = setup
    (templates / "module.py.jinja").write_text(text + "\n")
    start = time.monotonic()
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and "longer than 1 s" in err, err
    assert time.monotonic() - start < 20


def test_a_template_output_is_bounded(setup, capsys, monkeypatch):
    monkeypatch.setattr(render, "TEMPLATE_OUTPUT_CHARS", 100_000)
    spec, templates, out = setup
    (templates / "module.py.jinja").write_text(
        "{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}\n"
    )
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and "100,000 characters" in err, err


# ---------------------------------------------------------------------------------------------
# A broken templates folder (item 10)


def test_a_missing_templates_folder(setup, capsys, tmp_path):
    spec, _templates, out = setup
    status, err = _build(capsys, spec, tmp_path / "nowhere", out)
    assert status == 2 and "no such directory" in err and len(err.splitlines()) == 1


def test_a_file_as_templates_folder(setup, capsys):
    spec, _templates, out = setup
    status, err = _build(capsys, spec, spec, out)
    assert status == 2 and "not a directory" in err and len(err.splitlines()) == 1


def test_an_unreadable_templates_folder(setup, capsys, monkeypatch):
    """As root a folder's mode does not stop reading, so the refusal is simulated."""
    spec, templates, out = setup
    real_listdir = os.listdir

    def listdir(path="."):
        if Path(path) == templates:
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and "permission denied" in err and len(err.splitlines()) == 1


def test_an_unreadable_template(setup, capsys, monkeypatch):
    spec, templates, out = setup
    real_open = os.open

    def open_(path, flags, *args, **kw):
        if str(path).endswith("block.py.jinja"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", open_)
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and "block.py.jinja" in err and "Permission denied" in err


@pytest.mark.parametrize(
    "text, where",
    [
        ("{% if %}\n", "module.py.jinja:1"),
        ("line one\n{{ nothing_of_the_kind }}\n", "module.py.jinja:2"),
        ("{{ 1 + 'a' }}\n", "module.py.jinja:1"),
        ("{% include 'missing.jinja' %}\n", "missing.jinja"),
    ],
    ids=["syntax", "undefined", "type", "missing-include"],
)
def test_a_broken_template_is_one_located_line(text, where, setup, capsys):
    spec, templates, out = setup
    (templates / "module.py.jinja").write_text(text)
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and where in err and len(err.strip().splitlines()) == 1, err


def test_a_template_that_is_not_utf8(setup, capsys):
    spec, templates, out = setup
    (templates / "block.py.jinja").write_bytes(b"\xff\xfe broken")
    status, err = _build(capsys, spec, templates, out)
    assert status == 2 and "UTF-8" in err


def test_an_empty_templates_folder_inherits_everything_with_a_warning(setup, capsys, tmp_path):
    spec, _templates, out = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    status, err = _build(capsys, spec, empty, out)
    assert status == 0 and "warning" in err and "no .jinja files" in err
    assert (out / "net.py").read_text() == build.generate(spec)


def test_one_overridden_template_inherits_the_rest(setup, capsys, tmp_path):
    spec, _templates, out = setup
    mine = tmp_path / "mine"
    mine.mkdir()
    block = (ROOT / "templates" / "block.py.jinja").read_text()
    (mine / "block.py.jinja").write_text(
        block.replace("        return out", "        return out  # mine")
    )
    status, err = _build(capsys, spec, mine, out)
    assert status == 0, err
    assert "return out  # mine" in (out / "net.py").read_text()
