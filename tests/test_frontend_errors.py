"""Malformed specs: every error is located (file, line, column) and has a stable code.

Each case is (id, files, code, line, column, message fragment). `files` is the source of
`main.arch`, or a dict of file name -> source (str or bytes) with `main.arch` the one loaded.
The first diagnostic, in position order, is the one checked; all must be located in a real file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen import expr as E
from resgen import spec as S
from resgen.cli import main
from resgen.diagnostics import Span, SpecError
from resgen.resolve import UsageError, load

NET = "network n {{\n    input 3x32x32\n{body}\n}}\n"


def net(body: str, imports: str = "") -> str:
    """A network whose interesting part starts on line 3 (line 4 with `imports`)."""
    return imports + NET.format(body=body)


def block(body: str, params: str = "planes") -> str:
    """A block whose interesting part starts on line 2."""
    return f"block B({params}) {{\n{body}\n}}\n"


RESNET50 = (Path(__file__).resolve().parents[1] / "specs" / "resnet50.arch").read_text()

CASES = [
    # ---- syntax -------------------------------------------------------------------------------
    (
        "unexpected-token",
        net("    stem { conv1 = conv(8, 3) ) }"),
        "syntax",
        3,
        31,
        "unexpected `)`",
    ),
    (
        "missing-brace-before-next-item",
        "block B() {\n    main { r = relu }\n\nnetwork n { input 3x8x8 }\n",
        "syntax",
        4,
        1,
        "unexpected `network`; expected",
    ),
    (
        "missing-brace-at-eof",
        "block B() {\n    main { r = relu }\n\n\n",
        "unexpected-eof",
        2,
        21,
        "unexpected end of file; expected",
    ),
    ("eof-mid-expression", "let a = (1 +\n", "unexpected-eof", 1, 12, "end of file"),
    ("eof-after-crlf", "let a = 1\r\nlet b = (\r\n", "unexpected-eof", 2, 9, "end of file"),
    ("unterminated-string", 'import "blocks.arch\n', "syntax", 1, 8, "unterminated string"),
    ("bad-character", "let a = 3 $ 4\n", "syntax", 1, 11, "unexpected character '$'"),
    ("bad-character-unicode", "let a = 3 × 4\n", "syntax", 1, 11, "unexpected character '×'"),
    (
        "keyword-as-layer-name",
        net("    stem {\n        act = relu\n        import = relu\n    }"),
        "syntax",
        5,
        9,
        "`import` is a keyword here",
    ),
    ("input-needs-three-sizes", "network n {\n    input 3x224\n}\n", "syntax", 3, 1, "`x`"),
    (
        "positional-after-named",
        net("    stem { c = conv(8, kernel=3, 1) }"),
        "syntax",
        3,
        34,
        "positional argument cannot follow a named one",
    ),
    # ---- names ----------------------------------------------------------------------------------
    ("python-keyword-layer", net("    stem { if = relu }"), "bad-name", 3, 12, "Python keyword"),
    (
        "module-attribute-forward",
        net("    stem { forward = relu }"),
        "bad-name",
        3,
        12,
        "would replace nn.Module.forward",
    ),
    (
        "module-attribute-training",
        block("    main { training = relu }"),
        "bad-name",
        2,
        12,
        "nn.Module.training",
    ),
    (
        "dunder-parameter",
        block("    main { r = relu }", params="__x"),
        "bad-name",
        1,
        9,
        "underscore",
    ),
    (
        "python-keyword-block",
        "block class() {\n    main { r = relu }\n}\n",
        "bad-name",
        1,
        1,
        "`class` is a Python keyword",
    ),
    ("let-shadows-builtin", "let int = 3\n", "bad-name", 1, 1, "would shadow `int`"),
    (
        "in-channels-as-parameter",
        block("    main { r = relu }", params="in_channels, planes"),
        "bad-name",
        1,
        9,
        "`in_channels` is implicit",
    ),
    (
        "duplicate-layer",
        block("    main {\n        c = conv(planes, 3)\n        c = conv(planes, 3)\n    }"),
        "duplicate-name",
        4,
        9,
        "layer `c` is already declared",
    ),
    (
        "duplicate-block",
        "block B() {\n    main { r = relu }\n}\n" * 2,
        "duplicate-name",
        4,
        1,
        "block `B` is already defined",
    ),
    (
        "duplicate-parameter",
        block("    main { r = relu }", params="planes, planes"),
        "duplicate-name",
        1,
        17,
        "parameter `planes` appears twice",
    ),
    ("duplicate-file-let", "let a = 1\nlet a = 2\n", "duplicate-name", 2, 1, "already defined"),
    (
        "unknown-name-did-you-mean",
        block("    main { c = conv(plnes, 3) }"),
        "unknown-name",
        2,
        21,
        "did you mean `planes`",
    ),
    (
        "unknown-op-did-you-mean",
        net("    stem { conv1 = convv(8, 3) }"),
        "unknown-op",
        3,
        20,
        "unknown layer type `convv` (did you mean `conv`?)",
    ),
    (
        "unknown-block-did-you-mean",
        net("    stage layer1 = 2 x Bottlenek(8)", "import std.resnet\n"),
        "unknown-block",
        4,
        24,
        "did you mean `Bottleneck`",
    ),
    (
        "reuse-stateful",  # a block is one submodule with its own forward: applied once
        block("    main {\n        inner = C()\n        inner\n    }")
        + "block C() { main { c = conv(8, 1) } }\n",
        "reuse-stateful",
        4,
        9,
        "`inner` is (or holds) block `C`",
    ),
    (
        "reuse-undeclared",
        block("    main {\n        c = conv(planes, 3)\n        relu\n    }"),
        "unknown-name",
        4,
        9,
        "`relu` is not a layer declared earlier",
    ),
    (
        "recursive-block",
        "block A() {\n    main { a = A }\n}\n",
        "recursive-block",
        2,
        12,
        "contains itself",
    ),
    # a block in its own shortcut used to recurse until Python's stack ran out
    (
        "recursive-block-in-shortcut",
        "block A() {\n    main { c = conv(4, 1) }\n    shortcut s { A() }\n    merge add\n}\n",
        "recursive-block",
        3,
        18,
        "contains itself",
    ),
    # ---- arguments ------------------------------------------------------------------------------
    (
        "unknown-argument",
        net("    stem { r = relu(inplce=true) }"),
        "unknown-argument",
        3,
        21,
        "no parameter `inplce` (did you mean `inplace`?)",
    ),
    (
        "duplicate-argument",
        net("    stem { c = conv(8, 3, kernel=3) }"),
        "duplicate-argument",
        3,
        27,
        "`kernel` is given twice",
    ),
    (
        "missing-argument",
        net("    stem { c = conv(kernel=3) }"),
        "missing-argument",
        3,
        16,
        "`conv` needs `channels`",
    ),
    (
        "too-many-arguments",
        net("    stem { r = relu(true, false) }"),
        "too-many-arguments",
        3,
        27,
        "at most 1 positional argument",
    ),
    (
        "stage-missing-block-argument",
        net("    stage layer1 = 2 x BasicBlock(stride=2)", "import std.resnet\n"),
        "missing-argument",
        4,
        24,
        "needs `planes`",
    ),
    (
        "stage-sets-dilation",
        net("    stage layer1 = 2 x BasicBlock(8, dilation=2)", "import std.resnet\n"),
        "stage-sets-argument",
        4,
        38,
        "write `dilate=true`",
    ),
    (
        # A constructor argument `output_stride` would be silently ignored: the generated
        # network's dilations are fixed when it is written.
        "dilate-reads-a-param",
        net(
            "    param output_stride = 32\n"
            "    stage layer1 = 2 x BasicBlock(8, stride=2, dilate=(output_stride < 16))",
            "import std.resnet\n",
        ),
        "bad-dilate",
        5,
        56,
        "`dilate` reads `output_stride`",
    ),
    (
        "stage-sets-in-channels",
        net("    stage layer1 = 2 x BasicBlock(8, in_channels=3)", "import std.resnet\n"),
        "stage-sets-argument",
        4,
        38,
        "a stage sets `in_channels` itself",
    ),
    # ---- block and network structure -----------------------------------------------------------
    (
        "shortcut-without-merge",
        block("    main { r = relu }\n    shortcut down { identity }"),
        "shortcut-without-merge",
        3,
        5,
        "no `merge add`",
    ),
    (
        "unknown-merge",
        block("    main { r = relu }\n    merge cat"),
        "unknown-merge",
        3,
        11,
        "unknown merge `cat`",
    ),
    (
        "duplicate-main",
        block("    main { r = relu }\n    main { s = relu }"),
        "duplicate-section",
        3,
        5,
        "`main` appears twice in block `B` (first at line 2)",
    ),
    (
        "duplicate-input",
        "network n {\n    input 3x8x8\n    input 3x8x8\n}\n",
        "duplicate-section",
        3,
        5,
        "`input` appears twice",
    ),
    ("empty-block", "block B() {\n    expansion 1\n}\n", "empty-block", 1, 1, "no `main` layers"),
    (
        "network-without-input",
        "network n {\n    head { f = flatten }\n}\n",
        "missing-input",
        1,
        1,
        "needs an input shape",
    ),
    ("input-zero", "network n {\n    input 0x8x8\n}\n", "bad-input", 2, 5, "at least 1"),
    (
        "two-networks",
        "network a {\n    input 3x8x8\n}\nnetwork b {\n    input 3x8x8\n}\n",
        "multiple-networks",
        4,
        1,
        "`a` is already defined at line 1",
    ),
    # ---- imports and derived networks -----------------------------------------------------------
    (
        "import-not-found",
        'let a = 1\nimport "nope.arch"\n',
        "import-not-found",
        2,
        1,
        "cannot read",
    ),
    (
        "import-directory",
        {"main.arch": 'import "sub"\n', "sub/x.arch": ""},
        "import-not-found",
        1,
        1,
        "is a directory",
    ),
    (
        "unknown-std-module",
        "import std.resnt\n",
        "import-not-found",
        1,
        1,
        "no module `std.resnt` in the standard library (did you mean `resnet`?)",
    ),
    (
        "unknown-library",
        "import torchvision.models\n",
        "import-not-found",
        1,
        1,
        "the standard library is `std.resnet`",
    ),
    (
        "derived-unknown-base",
        {
            "main.arch": 'import "resnet50.arch"\nnetwork r = resnet51(groups=2)\n',
            "resnet50.arch": RESNET50,
        },
        "unknown-network",
        2,
        13,
        "unknown network `resnet51` (did you mean `resnet50`?)",
    ),
    (
        "derived-without-import",
        "network r = resnet50(groups=2)\n",
        "unknown-network",
        1,
        13,
        "import the file that defines it",
    ),
    (
        "derived-unknown-param",
        {
            "main.arch": 'import "resnet50.arch"\nnetwork r = resnet50(grups=32)\n',
            "resnet50.arch": RESNET50,
        },
        "unknown-argument",
        2,
        22,
        "no parameter `grups` (did you mean `groups`?)",
    ),
    (
        "same-block-from-two-imports",
        {
            "main.arch": 'import "one.arch"\nimport "two.arch"\n',
            "one.arch": "block X() {\n    main { r = relu }\n}\n",
            "two.arch": "block X() {\n    main { s = relu }\n}\n",
        },
        "duplicate-name",
        2,
        1,
        "is already imported from",
    ),
    (
        "error-in-imported-file",
        {"main.arch": 'import "lib.arch"\n', "lib.arch": "let a = 1\nlet b = $\n"},
        "syntax",
        2,
        9,
        "unexpected character",
    ),
    # ---- bytes ----------------------------------------------------------------------------------
    (
        "non-utf8",
        {"main.arch": b"let a = 1\nlet b = \xff\n"},
        "encoding",
        2,
        9,
        "byte 0xff is not valid UTF-8",
    ),
    (
        "non-utf8-column-counts-characters",
        {"main.arch": "# éé \udcff".encode("utf-8", "surrogateescape")},
        "encoding",
        1,
        6,
        "byte 0xff",
    ),
    ("nul-byte", {"main.arch": b"let a = 1\nlet\x00 b = 2\n"}, "encoding", 2, 4, "NUL byte"),
    # ---- limits (each of these crashed the front end before it was bounded) ---------------------
    (
        "nesting-limit",
        "let a = " + "(" * 70 + "1" + ")" * 70 + "\n",
        "limit",
        1,
        73,
        "nesting deeper than 64",
    ),
    (
        "long-operator-chain",
        "let a = " + " + ".join(["1"] * 5000) + "\n",
        "limit",
        1,
        9,
        "expression nested deeper than 100 operators",
    ),
    (
        "long-not-chain",
        "let a = " + "not " * 5000 + "true\n",
        "limit",
        1,
        409,
        "nested deeper than 100",
    ),
    (
        "huge-integer-literal",
        "let a = " + "9" * 5000 + "\n",
        "limit",
        1,
        9,
        "integer literal over the limit",
    ),
    (
        "huge-input-size",
        "network n {\n    input 3x" + "9" * 5000 + "x8\n}\n",
        "limit",
        2,
        13,
        "integer literal over the limit",
    ),
    ("huge-float-literal", "let a = 1e999\n", "limit", 1, 9, "too large for a number"),
    (
        "let-chain-blowup",
        "let a0 = 2\n" + "".join(f"let a{i} = a{i - 1} * a{i - 1}\n" for i in range(1, 30)),
        "limit",
        16,
        11,
        "expression too large once lets are substituted",
    ),
]


def _write(tmp_path: Path, files) -> Path:
    if not isinstance(files, dict):
        files = {"main.arch": files}
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
    return tmp_path / "main.arch"


def _errors(path: Path) -> list:
    with pytest.raises(SpecError) as info:
        load(path)
    return info.value.diagnostics


@pytest.mark.parametrize(
    ("files", "code", "line", "column", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_error_is_located(tmp_path, files, code, line, column, fragment):
    diags = _errors(_write(tmp_path, files))
    first = diags[0]
    assert (first.code, first.span.line, first.span.column) == (code, line, column), first
    assert fragment in first.message
    assert first.span.end_line >= first.span.line >= 1  # never -1, never 0
    for d in diags:
        assert Path(d.span.file).exists(), d


def test_case_count():
    assert len(CASES) >= 35
    assert len({c[0] for c in CASES}) == len(CASES)


def test_errors_in_imported_file_point_into_it(tmp_path):
    path = _write(
        tmp_path, {"main.arch": 'import "lib.arch"\n', "lib.arch": "let a = 1\nlet b = $\n"}
    )
    (diag,) = _errors(path)
    assert Path(diag.span.file).name == "lib.arch"


def test_import_cycle_is_located_at_the_import(tmp_path):
    path = _write(
        tmp_path,
        {
            "main.arch": '# a\nimport "other.arch"\n',
            "other.arch": 'let x1 = 1\n\nimport "main.arch"\n',
        },
    )
    (diag,) = _errors(path)
    assert diag.code == "import-cycle"
    assert Path(diag.span.file).name == "other.arch"
    assert (diag.span.line, diag.span.column) == (3, 1)
    assert "main.arch -> " in diag.message and diag.message.endswith("main.arch")


def test_self_import_is_a_cycle(tmp_path):
    (diag,) = _errors(_write(tmp_path, 'import "main.arch"\n'))
    assert diag.code == "import-cycle"


def test_all_errors_reported_sorted_by_position(tmp_path):
    source = net(
        "    stem {\n"
        "        c = convv(8, 3)\n"  # 4:13 unknown-op
        "        r = relu(inplce=true)\n"  # 5:18 unknown-argument
        "        forward = relu\n"  # 6:9 bad-name
        "    }\n"
        "    stage layer1 = 2 x BasicBlok(8)",  # 8:24 unknown-block
        "import std.resnet\n",
    )
    diags = _errors(_write(tmp_path, source))
    assert [(d.span.line, d.span.column, d.code) for d in diags] == [
        (5, 13, "unknown-op"),
        (6, 18, "unknown-argument"),
        (7, 9, "bad-name"),
        (9, 24, "unknown-block"),
    ]


def test_diagnostics_sort_across_constructs(tmp_path):
    # Reported in resolution order (blocks, then networks) but printed in file order.
    source = "network n {\n    stem { c = nope }\n}\nblock B() {\n    main { c = nope2 }\n}\n"
    diags = _errors(_write(tmp_path, source))
    positions = [(d.span.line, d.span.column) for d in diags]
    assert positions == sorted(positions) and len(diags) == 3


@pytest.mark.parametrize(
    "source", ["", "\n\n", "# only a comment\n", "block B() {\n    main { r = relu }\n}\n"]
)
def test_file_without_network_is_fine(tmp_path, source, capsys):
    path = _write(tmp_path, source)
    assert load(path).network is None
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def test_missing_top_level_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load(tmp_path / "nope.arch")
    with pytest.raises(UsageError, match="is a directory"):
        load(tmp_path)


def test_inexact_division_and_overflow_are_eval_errors():
    def ref(name):
        return S.Ref(span=Span("f", 1, 1, 1, 2), name=name)

    div = S.BinOp(span=Span("f", 1, 1, 1, 6), op="/", left=ref("a"), right=ref("b"))
    with pytest.raises(E.EvalError) as info:
        E.evaluate(div, {"a": 7, "b": 2})
    assert info.value.code == "inexact-division" and "remainder of 1" in info.value.message
    add = S.BinOp(span=Span("f", 1, 1, 1, 6), op="+", left=ref("a"), right=ref("b"))
    with pytest.raises(E.EvalError) as info:  # int too large for a float: was an OverflowError
        E.evaluate(add, {"a": 10**400, "b": 1.5})
    assert info.value.code == "limit"


# ---- the printed format and exit codes --------------------------------------------------------


def test_printed_format(tmp_path, capsys):
    path = _write(tmp_path, net("    stem { conv1 = convv(8, 3) }"))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"{path}:3:20: error: unknown layer type `convv` (did you mean `conv`?) [unknown-op]"
    )
    assert err[1] == "    3 |     stem { conv1 = convv(8, 3) }"
    assert err[2] == "      |                    ^~~~~"
    # the caret sits under the exact span
    assert err[1].index("convv") == err[2].index("^")


def test_printed_format_with_hint(tmp_path, capsys):
    text = block("    main {\n        inner = C()\n        inner\n    }")
    path = _write(tmp_path, text + "block C() { main { c = conv(8, 1) } }\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:4:9: error: `inner` is (or holds) block `C`")
    assert err[0].endswith("[reuse-stateful]")
    assert err[1:] == [
        "    4 |         inner",
        "      |         ^~~~~",
        "      = hint: declare a second `C` with its own name",
    ]


def test_printed_format_of_bad_byte_quotes_the_line(tmp_path, capsys):
    path = _write(tmp_path, {"main.arch": b"let a = 1\nlet b = \xff\n"})
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == f"{path}:2:9: error: byte 0xff is not valid UTF-8; specs are UTF-8 text "
        "[encoding]"
    )
    assert err[2] == "      |         ^"


def test_exit_codes(tmp_path, capsys):
    good = _write(tmp_path, "block B() {\n    main { r = relu }\n}\n")
    assert main(["check", str(good)]) == 0
    bad = tmp_path / "bad.arch"
    bad.write_text("let a = $\n")
    assert main(["check", str(good), str(bad)]) == 1
    assert main(["check", str(tmp_path / "missing.arch")]) == 2
    assert "resgen: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["check", "--no-such-flag", str(good)])
    assert info.value.code == 2


def test_json_output(tmp_path, capsys):
    import json

    path = _write(tmp_path, "let a = 3 $ 4\n")
    assert main(["check", "--json", str(path)]) == 1
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["line"], record["column"], record["end_column"], record["code"]) == (
        1,
        11,
        12,
        "syntax",
    )


@pytest.mark.parametrize(
    "text, hint",
    [
        (
            "import std.resnet\nnetwork n {\n    input 3x32x32\n"
            "    stage layer1 = BasicBlock(16)\n}\n",
            "a stage reads `stage NAME = REPEATS x Block(arguments)`",
        ),
        ("network n {\n    input 3x32\n}\n", "an input shape reads `input C x H x W`"),
    ],
)
def test_a_forgotten_x_gets_the_statement_form_as_a_hint(tmp_path, text, hint):
    path = tmp_path / "x.arch"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load(path)
    (diag,) = info.value.diagnostics
    assert diag.code == "syntax" and "expected `x`" in diag.message
    assert diag.hint.startswith(hint)


def test_summary_depth_must_be_positive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["summary", "specs/resnet18.arch", "--depth", "0"])
    assert info.value.code == 2
    assert "at least 1" in capsys.readouterr().err
