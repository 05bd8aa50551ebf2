"""Fuzzing the whole pipeline: no input makes resgen crash, hang or print a traceback.

Inputs come from the grammar (hypothesis.extra.lark over resgen/grammar.lark) and from mutating
every spec in specs/ and the standard library (tokens and bytes deleted, duplicated, swapped,
inserted). Each goes through `check`, `summary --json`, `diagram --format dot` and `build`, in
process through resgen.cli.main; each command must end with exit 0, or exit 1 and a located
`FILE:LINE:COL: error:` message, within a second. Crashers found are kept in
tests/corpus_crashers/ and replayed here. (Byte mutations through `check` alone live in
tests/test_fuzz_frontend.py.)

Budget: seeded and small by default; for a long run:
    RESGEN_FUZZ_EXAMPLES=5000 python3 -m pytest tests/test_fuzz_pipeline.py tests/test_oracle.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strategies import SEEDED, examples  # noqa: E402

from resgen.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.arch"))
STDLIB = sorted(p for p in resources.files("resgen.stdlib").iterdir() if p.name.endswith(".arch"))
CRASHERS = sorted((Path(__file__).resolve().parent / "corpus_crashers").glob("*.arch"))
SECONDS = 1.0  # CPU time per command and input (wall time varies with the machine's load)
LOCATED = re.compile(r"^\S.*:\d+:\d+: error: ", re.M)
NO_NETWORK = re.compile(r"defines no network")  # a library of blocks: nothing to draw or build

FUZZ = SEEDED


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """A hang becomes a failure that names the input instead of a stuck test run."""

    def expire(_signum, _frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _commands(spec: Path, out: Path) -> list[list[str]]:
    return [
        ["check", str(spec)],
        ["summary", "--json", str(spec)],
        ["diagram", "--format", "dot", "-o", str(out / "diagram.dot"), str(spec)],
        ["build", "-o", str(out / "build"), str(spec)],
    ]


def run_pipeline(spec: Path, out: Path, capsys, fuzzing: bool = True) -> list[int]:
    """Every command on `spec`; asserts the contract and returns the exit codes."""
    codes = []
    errors = ""
    text = spec.read_bytes()[:2000]
    for argv in _commands(spec, out):
        for _attempt in range(2):  # once more when slow: a slow input is slow twice, a GC pause
            capsys.readouterr()  # or a first import is not
            start = time.process_time()
            with time_limit(10 * SECONDS):  # a hard stop; the real bound is checked below
                try:
                    code = main(argv)
                except SystemExit as err:  # argparse
                    code = err.code
            elapsed = time.process_time() - start
            captured = capsys.readouterr()
            if elapsed < SECONDS:
                break
        where = f"`resgen {' '.join(argv)}` on {text!r}\nstderr: {captured.err[-2000:]}"
        assert code in (0, 1), f"exit {code}: {where}"
        assert "Traceback" not in captured.err + captured.out, where
        assert elapsed < SECONDS, f"{elapsed:.2f} s: {where}"
        if code == 1:
            assert LOCATED.search(captured.err) or NO_NETWORK.search(captured.err), (
                f"no located error: {where}"
            )
        if argv[0] == "summary" and captured.out.strip():
            json.loads(captured.out)
        codes.append(code)
        errors += captured.err
    # What `check` refuses nothing else accepts; what it accepts (with a network) builds.
    assert codes[0] == 0 or set(codes) == {1}, f"exit codes {codes} for {text!r}"
    if fuzzing:
        event(f"exit {codes[0]}")
    if codes[0] == 0 and not NO_NETWORK.search(errors):
        assert set(codes) == {0}, f"exit codes {codes} for {text!r}"
    return codes


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of specs/ (mutants import their neighbours, e.g. resnext50 imports resnet50)."""
    work = tmp_path_factory.mktemp("fuzz")
    for spec in SPECS:
        shutil.copy(spec, work / spec.name)
    (work / "out").mkdir()
    return work


# ---------------------------------------------------------------------------------------------
# Grammar-based generation

GRAMMAR = Lark((ROOT / "resgen" / "grammar.lark").read_text(), parser="lalr", start="start")

# Names the language knows, so generated programs get past name resolution now and then.
KNOWN_NAMES = [
    "conv",
    "batchnorm",
    "relu",
    "sigmoid",
    "maxpool",
    "avgpool",
    "adaptive_avgpool",
    "flatten",
    "linear",
    "dropout",
    "identity",
    "BasicBlock",
    "Bottleneck",
    "std",
    "resnet",
    "in_channels",
    "planes",
    "stride",
    "dilation",
    "groups",
    "expansion",
    "kernel",
    "padding",
    "channels",
    "features",
    "bias",
    "inplace",
    "layer1",
    "net",
    "dilate",
    "base_width",
    "num_classes",
    "p",
    "size",
    "x",
]
SAFE_IMPORTS = [
    '"resnet50.arch"',
    '"resnet18.arch"',
    '"missing.arch"',
    '"out"',
    '""',
    '"../fuzz/resnet34.arch"',
    '"mutant.arch"',
]


def _terminals() -> dict[str, st.SearchStrategy[str]]:
    """A strategy per terminal, each followed by a space: from_lark joins tokens with nothing
    between them, which would glue `network` and its name into one NAME."""
    explicit: dict[str, st.SearchStrategy[str]] = {}
    for terminal in GRAMMAR.terminals:
        pattern = terminal.pattern
        if pattern.type == "str":
            explicit[terminal.name] = st.just(pattern.value + " ")
    explicit.update(
        {
            "NAME": st.one_of(
                st.sampled_from(KNOWN_NAMES),
                st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
            ).map(lambda s: s + " "),
            "INT": st.one_of(st.integers(0, 70), st.integers(0, 1 << 64)).map(lambda v: f"{v} "),
            "FLOAT": st.sampled_from(["0.5 ", "1e3 ", "2. ", "1e999 ", "0.0 "]),
            "STRING": st.sampled_from(SAFE_IMPORTS).map(lambda s: s + " "),
            "COMMENT": st.just("# c\n"),
            "COMPARE": st.sampled_from(["== ", "!= ", "<= ", ">= ", "< ", "> "]),
        }
    )
    for terminal in GRAMMAR.terminals:  # whitespace and anything else left to its regex
        if terminal.name not in explicit and terminal.name in GRAMMAR.ignore_tokens:
            explicit[terminal.name] = st.just(" ")
    return explicit


PROGRAMS = from_lark(GRAMMAR, start="start", explicit=_terminals())


@settings(FUZZ, max_examples=examples(300))
@given(text=PROGRAMS)
def test_grammar_programs(workdir, capsys, text):
    spec = workdir / "generated.arch"
    spec.write_text(text)
    run_pipeline(spec, workdir / "out", capsys)


# ---------------------------------------------------------------------------------------------
# Mutations of real specs

TOKEN = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]*)?|\s+|#[^\n]*|\"[^\"\n]*\"|.", re.S)
SOURCES = [(p.name, p.read_bytes()) for p in SPECS] + [
    (f"std_{p.name}", p.read_bytes()) for p in STDLIB
]
INSERTS = [
    b"(",
    b")",
    b"{",
    b"}",
    b",",
    b"=",
    b"x",
    b"0",
    b"-1",
    b"99999999999999999999",
    b"1e400",
    b"//",
    b"/",
    b"*",
    b"\n",
    b'"',
    b"#",
    b"\x00",
    b"\xff",
    b"\xe2\x80\xa8",
    b"\t",
    b"conv",
    b"seq",
    b"block",
    b"network",
    b"stage",
    b"let",
    b"import",
    b"true",
    b"in_channels",
    b"not",
    b"(1, 2)",
    b"\r",
    b"\xef\xbb\xbf",
    b"\xd0\xb0",
]


@st.composite
def mutants(draw) -> bytes:
    """One spec with 1-4 token or byte edits: delete, duplicate, swap, insert."""
    _name, data = draw(st.sampled_from(SOURCES))
    units = TOKEN.findall(data) if draw(st.booleans()) else [bytes([b]) for b in data]
    for _ in range(draw(st.integers(1, 4))):
        if not units:
            break
        i = draw(st.integers(0, len(units) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "insert"]))
        if edit == "delete":
            del units[i]
        elif edit == "duplicate":
            units.insert(i, units[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(units) - 1))
            units[i], units[j] = units[j], units[i]
        else:
            units.insert(i, draw(st.sampled_from(INSERTS + units[:200])))
    return b"".join(units)


@settings(FUZZ, max_examples=examples(250))
@given(data=mutants())
def test_mutated_specs(workdir, capsys, data):
    spec = workdir / "mutant.arch"
    spec.write_bytes(data)
    run_pipeline(spec, workdir / "out", capsys)


# ---------------------------------------------------------------------------------------------
# Regression inputs and out-of-process runs


@pytest.mark.parametrize("crasher", CRASHERS, ids=[p.name for p in CRASHERS])
def test_crashers_stay_fixed(crasher, workdir, capsys):
    spec = workdir / crasher.name
    shutil.copy(crasher, spec)
    run_pipeline(spec, workdir / "out", capsys, fuzzing=False)


SUBPROCESS_CASES = {
    "truncated": b"network n {\n    input 3x8x8\n    stem { c = conv(4, 3",
    "bad-utf8": b"network n { input 3x8x8 stem { c = conv(4, 3) } }\n\xff\xfe",
    "too-small": b"network n { input 3x2x2 stem { c = conv(4, 7) } }\n",
    "valid": b"network n { input 3x8x8 stem { c = conv(4, 3, padding=1) } }\n",
}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_command_line_process(case, tmp_path):
    """As a user runs it: a separate process, real exit codes, nothing but diagnostics."""
    spec = tmp_path / f"{case}.arch"
    spec.write_bytes(SUBPROCESS_CASES[case])
    expected = 0 if case == "valid" else 1
    for argv in _commands(spec, tmp_path):
        result = subprocess.run(
            [sys.executable, "-m", "resgen", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == expected, (argv, result.stderr)
        assert "Traceback" not in result.stderr
        if expected:
            assert LOCATED.search(result.stderr), (argv, result.stderr)
