"""Well-formed specs: what the parser and resolver build from them."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from resgen import expr as E
from resgen import resolve
from resgen import spec as S
from resgen.diagnostics import Span, SpecError
from resgen.parser import parse_text
from resgen.resolve import Loader, load

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.arch"))
STDLIB = Path(str(resources.files("resgen.stdlib").joinpath("resnet.arch")))


def _input(net) -> tuple:
    """A network's `input C x H x W`, evaluated (each dimension is an expression)."""
    return tuple(E.evaluate(d, {}) for d in net.input.dims())


def let_value(source: str) -> S.Expr:
    """The expression of `let a = SOURCE`, as parsed (nothing substituted or folded)."""
    return parse_text(f"let a = {source}\n").lets[0].value


# ---- the shipped specs ------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_loads(path):
    spec = load(path)
    assert spec.network is not None and spec.network.name == path.stem
    assert spec.network.input is not None and spec.network.stages
    for stage in spec.network.stages:
        assert all(block in spec.blocks for block in stage.blocks)


def test_torchvision_specs():
    for depth in (18, 34, 50, 101, 152):
        net = load(ROOT / "specs" / f"resnet{depth}.arch").network
        assert _input(net) == (3, 224, 224) and net.python_class == "ResNet"
        assert [s.name for s in net.stages] == ["layer1", "layer2", "layer3", "layer4"]
        assert {b for s in net.stages for b in s.blocks} == {
            "BasicBlock" if depth < 50 else "Bottleneck"
        }


def test_stdlib_loads_and_parses():
    spec = load(STDLIB)
    assert spec.network is None
    bottleneck = spec.blocks["Bottleneck"]
    assert [p.name for p in bottleneck.params] == [
        "planes",
        "stride",
        "groups",
        "base_width",
        "dilation",
    ]
    assert [layer.name for layer in bottleneck.main] == [
        "conv1",
        "bn1",
        "relu",
        "conv2",
        "bn2",
        "relu",
        "conv3",
        "bn3",
    ]
    assert [layer.kind for layer in bottleneck.main][5] == "reuse"
    assert bottleneck.merge == "add" and [layer.kind for layer in bottleneck.post] == ["reuse"]
    assert bottleneck.shortcut.name == "downsample"
    assert [layer.callee for layer in bottleneck.shortcut.layers] == ["conv", "batchnorm"]
    assert E.source_text(bottleneck.shortcut.condition) == (
        "(stride != 1) or (in_channels != (planes * expansion))"
    )


def test_resolved_arguments_are_named():
    spec = load(ROOT / "specs" / "resnet50.arch")
    conv1 = spec.network.stem[0]
    assert conv1.kind == "op"
    assert {a.name: E.source_text(a.value) for a in conv1.args} == {
        "channels": "64",
        "kernel": "7",
        "stride": "2",
        "padding": "3",
        "bias": "false",
    }
    layer2 = spec.network.stages[1]
    assert [a.name for a in layer2.runs[0].args] == ["planes", "stride", "groups", "base_width"]


def test_derived_network():
    spec = load(ROOT / "specs" / "resnext50_32x4d.arch")
    net = spec.network
    assert net.name == "resnext50_32x4d" and net.python_class == "ResNet"
    assert net.base.callee == "resnet50"
    defaults = {p.name: E.source_text(p.default) for p in net.params}
    assert defaults == {"num_classes": "1000", "groups": "32", "width_per_group": "4"}
    assert len(net.stages) == 4 and net.span.file.endswith("resnext50_32x4d.arch")


# ---- spans ------------------------------------------------------------------------------------

SPAN_SOURCE = """\
block B(planes, stride = 1) {
    main {
        conv1 = conv(planes, 3, stride=stride)
        relu = relu
    }
}
network n {
    input 3x224x320
    stage layer1 = 2 x B(64)
}
"""


def test_spans():
    parsed = parse_text(SPAN_SOURCE, "f.arch")
    block = parsed.blocks[0]
    assert block.span == Span("f.arch", 1, 1, 6, 2)
    assert block.params[1].span == Span("f.arch", 1, 17, 1, 27)  # `stride = 1`
    conv1 = block.main[0]
    assert conv1.span == Span("f.arch", 3, 9, 3, 47)
    assert conv1.callee_span == Span("f.arch", 3, 17, 3, 21)
    assert conv1.args[2].span == Span("f.arch", 3, 33, 3, 46)  # `stride=stride`
    assert conv1.args[2].value.span == Span("f.arch", 3, 40, 3, 46)
    network = parsed.networks[0]
    assert network.input.span == Span("f.arch", 8, 5, 8, 20)
    assert _input(network) == (3, 224, 320)  # not square
    stage = network.stages[0]
    assert stage.span == Span("f.arch", 9, 5, 9, 29)
    assert stage.runs[0].block_span == Span("f.arch", 9, 24, 9, 25)
    assert stage.runs[0].repeats.span == Span("f.arch", 9, 20, 9, 21)


def test_expression_span_covers_brackets():
    value = let_value("(1 + 2) * 3")
    assert (value.span.column, value.span.end_column) == (9, 20)
    assert (value.left.span.column, value.left.span.end_column) == (10, 15)


# ---- expressions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "tree"),
    [
        ("1 + 2 * 3", "1 + (2 * 3)"),
        ("(1 + 2) * 3", "(1 + 2) * 3"),
        ("a - b - c", "(a - b) - c"),
        ("a - (b - c)", "a - (b - c)"),
        ("a / b // c * d", "((a / b) // c) * d"),
        ("-a * b", "-a * b"),
        ("-(a * b)", "-(a * b)"),
        ("a + 1 == b * 2", "(a + 1) == (b * 2)"),
        ("not a == b", "not (a == b)"),
        ("not a and b or c", "((not a) and b) or c"),
        ("a or b and c", "a or (b and c)"),
        ("stride != 1 or c != p * e", "(stride != 1) or (c != (p * e))"),
        ("(3, 5)", "(3, 5)"),
        ("(k, k + 2)", "(k, k + 2)"),
        ("a + 1 if b or c else d * 2", "(a + 1) if (b or c) else (d * 2)"),
        ("a if b else c if d else e", "a if b else (c if d else e)"),  # Python's: to the right
        ("(a if b else c) + 1", "(a if b else c) + 1"),
    ],
)
def test_precedence(source, tree):
    value = let_value(source)
    assert _explicit(value) == tree


def _explicit(expr) -> str:
    """Like source_text, but brackets every operand that is itself an operation."""
    if isinstance(expr, S.UnaryOp):
        inner = _explicit(expr.operand)
        inner = f"({inner})" if isinstance(expr.operand, S.BinOp | S.UnaryOp | S.Cond) else inner
        return f"not {inner}" if expr.op == "not" else f"-{inner}"
    if isinstance(expr, S.BinOp):
        sides = [
            _explicit(s) if not isinstance(s, S.BinOp | S.UnaryOp | S.Cond) else f"({_explicit(s)})"
            for s in (expr.left, expr.right)
        ]
        if isinstance(expr.left, S.UnaryOp) and expr.left.op == "-":
            sides[0] = _explicit(expr.left)
        return f"{sides[0]} {expr.op} {sides[1]}"
    if isinstance(expr, S.Pair):
        return f"({_explicit(expr.h)}, {_explicit(expr.w)})"
    if isinstance(expr, S.Cond):
        parts = [
            _explicit(s) if not isinstance(s, S.BinOp | S.UnaryOp | S.Cond) else f"({_explicit(s)})"
            for s in (expr.then, expr.test, expr.other)
        ]
        return f"{parts[0]} if {parts[1]} else {parts[2]}"
    return E.source_text(expr)


@pytest.mark.parametrize(
    ("source", "python"),
    [
        ("1 + 2 * 3", "1 + 2 * 3"),
        ("(a + b) * c", "(a + b) * c"),
        ("a - (b - c)", "a - (b - c)"),
        ("a / b", "a // b"),  # exact division: resgen checked it divides
        ("a // b", "a // b"),
        ("-(a + b)", "-(a + b)"),
        ("not (a and b)", "not (a and b)"),
        ("(a < b) == c", "(a < b) == c"),  # not the chain `a < b == c`
        ("a == (b < c)", "a == (b < c)"),
        ("(2, k)", "(2, k)"),
        ("true and false", "True and False"),
        ("1.5e-3 * a", "0.0015 * a"),
        ("1.0 if i == 0 else r", "1.0 if i == 0 else r"),
        ("(a if t else b) * 2", "(a if t else b) * 2"),
        ("a if (b if t else f) else c", "a if (b if t else f) else c"),
        ("f(a if t else b)", "f(a if t else b)"),
    ],
)
def test_to_python(source, python):
    assert E.to_python(let_value(source)) == python


def test_to_python_renames():
    assert E.to_python(let_value("planes * e"), lambda n: f"self.{n}") == "self.planes * self.e"


_ENV = {"a": 6, "b": 3, "c": 2, "t": True, "f": False}
_atoms = st.sampled_from(["a", "b", "c", "1", "2", "7", "t", "f", "true", "false"])


def _exprs():
    def extend(inner):
        binary = st.tuples(
            inner,
            st.sampled_from(["+", "-", "*", "/", "//", "==", "!=", "<", ">=", "and", "or"]),
            inner,
        )
        return (
            binary.map(lambda t: f"{t[0]} {t[1]} {t[2]}")
            | binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})")
            | inner.map(lambda s: f"-{s}")
            | inner.map(lambda s: f"not {s}")
            | inner.map(lambda s: f"({s})")
            | st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} if {t[1]} else {t[2]}")
            | st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})")
        )

    return st.recursive(_atoms, extend, max_leaves=8)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_exprs())
def test_to_python_round_trip(source):
    """Python evaluates `to_python(e)` to what resgen evaluates `e` to, whenever resgen can."""
    try:
        value = let_value(source)
    except SpecError:  # `a < b < c` and `-not a` are not .arch
        assume(False)
    try:
        expected = E.evaluate(value, _ENV)
    except E.EvalError:
        return
    python_env = {k: v for k, v in _ENV.items()}
    assert eval(E.to_python(value), {}, python_env) == expected  # noqa: S307 - test oracle
    reparsed = let_value(E.source_text(value))  # and source_text parses back to the same tree
    assert E.source_text(reparsed) == E.source_text(value)


def test_exact_division():
    assert E.evaluate(let_value("planes * 64 / 64 * 2"), {"planes": 3}) == 6
    assert E.evaluate(let_value("7 // 2"), {}) == 3
    with pytest.raises(E.EvalError) as info:
        E.evaluate(let_value("7 / 2"), {})
    assert info.value.code == "inexact-division"
    assert "remainder of 1" in info.value.message and "`//`" in info.value.hint
    assert (info.value.span.line, info.value.span.column) == (1, 9)
    # A fraction divides as Python's `/`, and generated code writes `/` for it (`//` only
    # where both sides are integers: the division resgen checked to be exact).
    assert E.evaluate(let_value("7.0 / 2"), {}) == 3.5
    assert E.to_python(let_value("7.0 / 2")) == "7.0 / 2"
    assert E.to_python(let_value("rate * i / (n - 1)"), floats={"rate"}.__contains__) == (
        "rate * i / (n - 1)"
    )
    assert E.to_python(let_value("planes * 64 / 64")) == "planes * 64 // 64"
    assert E.evaluate(let_value("7.0 * 0.5"), {}) == 3.5
    with pytest.raises(E.EvalError) as info:
        E.evaluate(let_value("a // (b - 3)"), {"a": 1, "b": 3})
    assert info.value.code == "division-by-zero"


def test_pairs():
    spec = parse_text("block B() {\n    main { c = conv(8, (3, 5), padding=(1, 2)) }\n}\n")
    kernel = spec.blocks[0].main[0].args[1].value
    assert isinstance(kernel, S.Pair) and E.evaluate(kernel, {}) == (3, 5)
    with pytest.raises(E.EvalError, match="a pair holds integers"):
        E.evaluate(let_value("(1, true)"), {})


def test_file_lets_are_substituted_and_folded(tmp_path):
    path = tmp_path / "lets.arch"
    path.write_text(
        "let base = 16\nlet wide = base * 4\nblock B() {\n    main { c = conv(wide + 1, 3) }\n}\n"
    )
    conv = load(path).blocks["B"].main[0]
    assert conv.arg("channels") == S.Int(span=conv.arg("channels").span, value=65)


# ---- syntax details ---------------------------------------------------------------------------


def test_comments_anywhere():
    source = """# leading comment
let a = 1 # after a let
block B( # inside parameters
    planes, # between parameters
    stride = 1 # before the closing bracket
) { # after the brace
    # before main
    main { # inside main
        c = conv( # inside a call
            planes, # between arguments
            3)
        r = relu # after a layer
    }
    merge add # after merge
    shortcut d when stride != 1 # before the brace
    { conv(planes, 1) }
}
# trailing comment without a newline"""
    block = parse_text(source).blocks[0]
    assert [p.name for p in block.params] == ["planes", "stride"]
    assert [layer.name for layer in block.main] == ["c", "r"]
    assert block.merge == "add" and block.shortcut.name == "d"


def test_keywords_are_names_where_a_name_is_expected():
    # The contextual lexer reserves a keyword only where it can appear.
    spec = parse_text(
        "block B(input, stage) {\n    main { class = conv(input, 1)\n        head = relu }\n}\n"
    )
    assert [layer.name for layer in spec.blocks[0].main] == ["class", "head"]


def test_seq_layers(tmp_path):
    path = tmp_path / "seq.arch"
    path.write_text(
        "network n {\n    input 3x32x32\n    stem {\n"
        "        conv1 = seq { conv(8, 3) batchnorm relu(inplace=true) }\n"
        "        act = relu\n    }\n}\n"
    )
    conv1, act = load(path).network.stem
    assert conv1.kind == "seq" and conv1.name == "conv1"
    assert [(i.kind, i.name, i.callee) for i in conv1.items] == [
        ("op", None, "conv"),
        ("op", None, "batchnorm"),
        ("op", None, "relu"),
    ]
    assert conv1.items[2].arg("inplace").value is True
    assert act.kind == "op"


def test_block_as_layer_and_network_sections(tmp_path):
    path = tmp_path / "se.arch"
    path.write_text("""\
block SE(reduction = 4) {
    main {
        pool = adaptive_avgpool(1)
        fc = conv(in_channels // reduction, 1)
        gate = sigmoid
    }
}
block B(planes) {
    expansion 2
    let width = planes * expansion
    main {
        c = conv(width, 3, padding=1)
        se = SE(reduction=8)
    }
    shortcut down when in_channels != width { conv(width, 1) }
    merge mul
}
network n {
    class MyNet
    input 1x28x28
    param width = 8
    let w2 = width * 2
    stem { c = conv(w2, 3) }
    stage layer1 = 2 x B(w2)
    head { f = flatten }
}
""")
    spec = load(path)
    b = spec.blocks["B"]
    assert [layer.kind for layer in b.main] == ["op", "block"]
    assert b.main[1].arg("reduction").value == 8
    assert b.merge == "mul" and E.source_text(b.expansion) == "2"
    assert [let.name for let in b.lets] == ["width"]
    net = spec.network
    assert net.python_class == "MyNet" and _input(net) == (1, 28, 28)
    assert [p.name for p in net.params] == ["width"] and [x.name for x in net.lets] == ["w2"]


# ---- imports ----------------------------------------------------------------------------------


def test_imports_are_relative_to_the_importing_file(tmp_path, monkeypatch):
    (tmp_path / "nets" / "lib").mkdir(parents=True)
    (tmp_path / "nets" / "main.arch").write_text(
        'import "lib/a.arch"\nnetwork n {\n    input 3x8x8\n    stage s = 1 x Deep(4)\n}\n'
    )
    (tmp_path / "nets" / "lib" / "a.arch").write_text('import "b.arch"\n')  # lib/b.arch
    (tmp_path / "nets" / "lib" / "b.arch").write_text(
        "block Deep(planes) {\n    main { c = conv(planes, 1) }\n}\n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = load(tmp_path / "nets" / "main.arch")
    assert spec.blocks["Deep"].source_file.endswith("b.arch")
    assert spec.network.stages[0].blocks == ("Deep",)


def test_import_path_with_hash_is_not_a_comment(tmp_path):
    (tmp_path / "a#b.arch").write_text("block H() {\n    main { r = relu }\n}\n")
    (tmp_path / "main.arch").write_text('import "a#b.arch" # a real comment\n')
    assert "H" in load(tmp_path / "main.arch").blocks


def test_diamond_imports_load_once(tmp_path, monkeypatch):
    (tmp_path / "base.arch").write_text("block Base() {\n    main { r = relu }\n}\n")
    (tmp_path / "left.arch").write_text('import "base.arch"\n')
    (tmp_path / "right.arch").write_text('import "./base.arch"\nimport std.resnet\n')
    (tmp_path / "main.arch").write_text(
        'import "left.arch"\nimport "right.arch"\nimport std.resnet\n'
    )
    parsed = []

    def counting_parse(text, path):
        parsed.append(Path(path).name)
        return parse_text(text, path)

    monkeypatch.setattr(resolve, "parse_text", counting_parse)
    loader = Loader()
    spec = loader.load(tmp_path / "main.arch")
    # The standard library is parsed at most once per process (an earlier test may have done it).
    assert parsed.count("resnet.arch") <= 1
    assert sorted(p for p in parsed if p != "resnet.arch") == [
        "base.arch",
        "left.arch",
        "main.arch",
        "right.arch",
    ]
    assert {"Base", "BasicBlock", "Bottleneck"} <= set(spec.blocks)
    assert len(loader.sources) == 5  # every file's text is kept, to quote in messages


# ---- the language reference -------------------------------------------------------------------


def _readme_examples() -> list[tuple[str | None, str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = readme.split("<!-- language reference below -->", 1)[1]
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"^```arch(?: file=(\S+))?\n(.*?)^```$", reference, re.M | re.S)
    ]


def test_reference_has_examples():
    assert len(_readme_examples()) >= 5


def test_reference_examples_load(tmp_path):
    """Every ```arch block of the language reference is a complete file that loads.

    ```arch file=NAME blocks are written as NAME first, so the others can import them."""
    examples = _readme_examples()
    for name, text in examples:
        if name:
            (tmp_path / name).write_text(text)
    for i, (name, text) in enumerate(examples):
        path = tmp_path / (name or f"example{i}.arch")
        path.write_text(text)
        load(path)


def test_reference_fragments_parse():
    """```arch-fragment blocks are layer lines or network items: they parse in one of those."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = readme.split("<!-- language reference below -->", 1)[1]
    fragments = re.findall(r"^```arch-fragment\n(.*?)^```$", reference, re.M | re.S)
    assert fragments
    for text in fragments:
        contexts = [f"block F() {{\nmain {{\n{text}\n}}\n}}\n", f"network F {{\n{text}\n}}\n"]
        errors = []
        for source in contexts:
            try:
                parse_text(source)
                break
            except SpecError as err:
                errors.append(err)
        else:
            raise AssertionError(f"fragment does not parse: {errors}")


# ---- functions in expressions -----------------------------------------------------------------


@pytest.mark.parametrize(
    "source, env, value",
    [
        ("int(64 * m)", {"m": 0.75}, 48),
        ("int(-2.5)", {}, -2),  # Python's int: towards zero
        ("round(2.5)", {}, 2),  # Python's round: half to even, as the generated code computes
        ("round(96 * m)", {"m": 1.5}, 144),
        ("max(8, int(64 * m + 4) // 8 * 8)", {"m": 0.1}, 8),  # timm's make_divisible
        ("max(8, int(64 * m + 4) // 8 * 8)", {"m": 0.75}, 48),
        ("min(a, b, 3)", {"a": 5, "b": 4}, 3),
        ("1.0 if i == 0 else 2.25", {"i": 0}, 1.0),  # timm's first-block bottle ratio
        ("1.0 if i == 0 else 2.25", {"i": 3}, 2.25),
        ("a if i > 0 else a // i", {"a": 5, "i": 1}, 5),  # only the chosen side is evaluated
    ],
)
def test_functions_evaluate_like_python(source, env, value):
    expr = let_value(source)
    assert E.evaluate(expr, env) == value
    assert eval(E.to_python(expr), {}, dict(env)) == value  # the generated code agrees
    assert E.evaluate(let_value(E.source_text(expr)), env) == value  # messages quote it right


@pytest.mark.parametrize(
    "source, message",
    [
        ("int(1, 2)", "`int` takes 1 argument"),
        ("max(1)", "`max` takes two or more arguments"),
        ("round(true)", "`round` needs numbers, got a boolean"),
        ("1 if 2 else 3", "`if` needs a boolean, got an integer"),
    ],
)
def test_function_misuse_is_located(source, message):
    with pytest.raises(E.EvalError, match=re.escape(message)) as info:
        E.evaluate(let_value(source), {})
    assert info.value.span.line == 1 and info.value.span.column >= 9


def test_unknown_function_suggests_the_known_ones(tmp_path):
    path = tmp_path / "f.arch"
    path.write_text("network n {\n    input 3x8x8\n    let w = rund(7.5)\n}\n")
    with pytest.raises(SpecError) as info:
        load(path)
    (diag,) = info.value.diagnostics
    assert (diag.code, diag.span.line, diag.span.column) == ("unknown-function", 3, 13)
    assert "did you mean `round`?" in diag.message


def test_int_of_a_huge_number_is_a_limit_error():
    with pytest.raises(E.EvalError) as info:
        E.evaluate(let_value("int(1e300)"), {})
    assert info.value.code == "limit" and "integer limit" in info.value.message
