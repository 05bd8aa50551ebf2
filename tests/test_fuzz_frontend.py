"""No input makes the front end crash: random text and bytes, mutated specs, huge inputs.

`resgen check` must answer every input with located diagnostics (exit 1) or "ok" (exit 0), never
a traceback; `resolve.load` must raise only SpecError or UsageError. `check` also runs the shape
engine, so a crash there fails this test too. The budget is seeded and small (a few seconds);
raise it with RESGEN_FUZZ_EXAMPLES=5000 for a long run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resgen.cli import main
from resgen.diagnostics import SpecError
from resgen.resolve import UsageError, load

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p.read_bytes() for p in sorted((ROOT / "specs").glob("*.arch"))] + [
    f.read_bytes() for f in resources.files("resgen.stdlib").iterdir() if f.name.endswith(".arch")
]
TOKEN = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|\s+|.", re.S)
PIECES = sorted(
    {t for s in SOURCES for t in TOKEN.findall(s)}
    | {
        b'"',
        b"#",
        b"(",
        b")",
        b"{",
        b"}",
        b"//",
        b"/",
        b"x",
        b"seq",
        b"from",
        b"\n",
        b"\xff",
        b"\x00",
        b"\r",
        b"\t",
        "é".encode(),
        b"99999999999999999999999",
    }
)

FUZZ = settings(
    max_examples=int(os.environ.get("RESGEN_FUZZ_EXAMPLES", "60")),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture
def workdir(tmp_path):
    """A directory holding the specs, so mutated `import "resnet50.arch"` still resolves."""
    for spec in (ROOT / "specs").glob("*.arch"):
        shutil.copy(spec, tmp_path / spec.name)
    return tmp_path


def check_never_crashes(workdir: Path, data: bytes) -> None:
    path = workdir / "fuzz.arch"
    path.write_bytes(data)
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["check", str(path)])
    except BaseException as exc:  # noqa: BLE001 - any escape is the bug being hunted
        raise AssertionError(f"`resgen check` raised {exc!r} on {data[:2000]!r}") from exc
    assert code in (0, 1), (code, data[:2000], err.getvalue()[-2000:])
    assert "Traceback" not in err.getvalue() + out.getvalue(), data[:2000]
    try:
        load(path)
    except (SpecError, UsageError):
        pass


# ---- (a) random text and bytes ----------------------------------------------------------------


@FUZZ
@given(st.text(max_size=400))
def test_random_text(workdir, text):
    check_never_crashes(workdir, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(workdir, data):
    check_never_crashes(workdir, data)


@FUZZ
@given(st.lists(st.sampled_from(PIECES), max_size=120))
def test_token_soup(workdir, pieces):
    """Tokens of real specs in random order: gets past the lexer far more often than noise."""
    check_never_crashes(workdir, b" ".join(pieces))


# ---- (b) mutations of every shipped spec ------------------------------------------------------

_EDIT = st.tuples(
    st.sampled_from(
        ["delete", "duplicate", "swap", "insert", "replace", "byte", "truncate", "number"]
    ),
    st.floats(0, 1),
    st.floats(0, 1),
    st.sampled_from(PIECES),
    st.integers(0, 255),
    st.sampled_from([b"0", b"1", b"2", b"3", b"7", b"64", b"1000", b"65536"]),
)


def mutate(source: bytes, edits) -> bytes:
    """Apply token- and byte-level edits; positions are fractions so every edit lands."""
    tokens = TOKEN.findall(source) or [b""]
    for kind, where, other, piece, byte, number in edits:
        i, j = int(where * (len(tokens) - 1)), int(other * (len(tokens) - 1))
        if kind == "delete":
            del tokens[i]
        elif kind == "duplicate":
            tokens.insert(i, tokens[i])
        elif kind == "swap":
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "insert":
            tokens.insert(i, piece)
        elif kind == "replace":
            tokens[i] = piece
        elif kind == "byte":
            tokens[i] = tokens[i][:1] + bytes([byte]) + tokens[i][1:]
        elif kind == "truncate":
            tokens = tokens[:i]
        else:  # a different number keeps the syntax and exercises names and shapes
            numbers = [k for k, t in enumerate(tokens) if t.isdigit()]
            if numbers:
                tokens[numbers[i % len(numbers)]] = number
        tokens = tokens or [b""]
    return b"".join(tokens)


@FUZZ
@given(st.sampled_from(range(len(SOURCES))), st.lists(_EDIT, min_size=1, max_size=5))
def test_mutated_specs(workdir, index, edits):
    check_never_crashes(workdir, mutate(SOURCES[index], edits))


@pytest.mark.parametrize("index", range(len(SOURCES)))
def test_every_source_survives_single_token_deletions(workdir, index):
    """Delete 8 evenly spaced tokens of every spec, one at a time."""
    tokens = TOKEN.findall(SOURCES[index])
    for k in range(7, len(tokens), max(1, len(tokens) // 8)):
        check_never_crashes(workdir, b"".join(tokens[:k] + tokens[k + 1 :]))


# ---- (c) huge and unterminated inputs ---------------------------------------------------------

HUGE = {
    "long-line": b"let a = 1" + b" " * 900_000 + b"+ 2\n",
    "over-size-limit": b"#" * 1_100_000,
    "30k-tokens": b"block B() {\n    main {\n"
    + b"".join(b"        r%d = relu\n" % i for i in range(10_000))
    + b"    }\n}\n",
    "100k-token-expression": b"let a = " + b" + ".join([b"1"] * 50_000) + b"\n",
    "nested-parens-10k": b"let a = " + b"(" * 10_000 + b"1" + b")" * 10_000 + b"\n",
    "nested-braces-10k": b"block B() {" + b"{" * 10_000 + b"}" * 10_000 + b"}",
    "unary-chain": b"let a = " + b"-" * 50_000 + b"1\n",
    "not-chain": b"let a = " + b"not " * 50_000 + b"true\n",
    "long-name": b"let " + b"a" * 500_000 + b" = 1\n",
    "huge-integer": b"let a = " + b"9" * 100_000 + b"\n",
    "many-errors": b"".join(b"let a%d = nope%d\n" % (i, i) for i in range(2_000)),
    "let-chain": b"let a0 = 2\n"
    + b"".join(b"let a%d = a%d * a%d\n" % (i, i - 1, i - 1) for i in range(1, 300)),
}
UNTERMINATED = [
    b'import "',
    b"import std.",
    b"let a = (",
    b"let a = 1 +",
    b"block B(",
    b"block B(planes = ",
    b"block B() {",
    b"block B() { main {",
    b"block B() { main { c = conv(",
    b"block B() { main { c = seq {",
    b"block B() { shortcut s when",
    b"network n {",
    b"network n { input 3x",
    b"network n { stage s = 2 x",
    b"network n =",
    b"network n = base(",
    b"# comment",
    b"\xef\xbb\xbf",
    b"\r\n\r\n",
    b"}",
    b")",
]


@pytest.mark.parametrize("name", HUGE)
def test_huge_inputs(workdir, name):
    check_never_crashes(workdir, HUGE[name])


@pytest.mark.parametrize("data", UNTERMINATED)
def test_unterminated_constructs(workdir, data):
    check_never_crashes(workdir, data)
