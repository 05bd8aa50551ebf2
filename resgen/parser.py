"""Text to `SpecFile`. The only module that imports lark: the parse tree never leaves it.

Syntax errors become located `Diagnostic`s with messages written for people (what was found,
what could come there). The LALR parser is built once per process and cached.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from resgen import codes
from resgen import spec as S
from resgen.diagnostics import Diagnostics, Span, SpecError
from resgen.limits import LIMITS
from resgen.metadata import check_entries


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("resgen").joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        start=["start", "expr"],  # "expr": the expressions inside a name pattern's braces
        cache=_parser_cache_file(grammar),
    )


def _parser_cache_file(grammar: str) -> str | bool:
    """Where lark keeps the built LALR tables between runs (a third of `resgen check`'s start-up).

    A private per-user directory, not lark's default in the shared /tmp: the cache is a pickle,
    and a file another user could plant there would be code we execute. Off when unwritable.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "resgen")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not os.access(directory, os.W_OK) or os.stat(directory).st_uid != os.getuid():
            return False
    except OSError:
        return False
    digest = hashlib.sha256(grammar.encode()).hexdigest()[:16]
    return os.path.join(directory, f"grammar-{digest}.lark-cache")


# What people call the grammar's terminals, for "expected ..." messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": 'a "path"',
    "COMPARE": "a comparison",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "LPAR": "`(`",
    "RPAR": "`)`",
    "COMMA": "`,`",
    "EQUAL": "`=`",
    "DOT": "`.`",
    "PLUS": "`+`",
    "MINUS": "`-`",
    "STAR": "`*`",
    "SLASH": "`/`",
    "__ANON_0": "`//`",
    "$END": "end of file",
}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = _lark().get_terminal(name).pattern
        if pattern.type == "str":
            return f"`{pattern.value}`"
    except KeyError:
        pass
    return name.lower()


# Operators continue an expression; listed one by one they crowd out what the person most likely
# left out (`x` in `stage layer1 = 3 x Block(...)`), so they are named together.
_OPERATOR_WORDS = frozenset({"`+`", "`-`", "`*`", "`/`", "`//`", "a comparison", "`and`", "`or`"})


def _expected(names) -> str:
    words = {_describe_terminal(n) for n in names}
    operators = words & _OPERATOR_WORDS
    if len(operators) > 2:
        words = (words - operators) | {"an operator"}
    # What is most often left out first; keywords (which start the next statement) last.
    rank = {w: i for i, w in enumerate(_LIKELY_MISSING)}
    ordered = sorted(
        words,
        key=lambda w: (rank.get(w, len(rank)), w == "an operator", w.strip("`") in _KEYWORDISH, w),
    )
    if len(ordered) > 8:
        ordered = ordered[:8] + ["..."]
    return ", ".join(ordered)


_LIKELY_MISSING = ("`x`", "`=`", "`)`", "`}`", "`,`")


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    return f"`{token}`"


def _last_position(text: str) -> tuple[int, int]:
    """Line and column of the last character: where 'unexpected end of file' is reported."""
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return len(lines), max(1, len(lines[-1].rstrip()))


def _syntax_error(err: UnexpectedInput, text: str, path: str) -> S.Diagnostic:
    from resgen.diagnostics import Diagnostic

    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        tok = err.token
        line, col = tok.line, tok.column
        end_line = tok.end_line or line
        end_col = tok.end_column or col + max(1, len(tok))
        message = f"unexpected {_token_text(tok)}; expected {_expected(err.expected)}"
        code = codes.SYNTAX
        if tok.type != "NAME" and "NAME" in err.expected and tok in _KEYWORDISH:
            # LALR merges lookaheads, so a top-level keyword can shadow a name inside a section.
            message += f" (`{tok}` is a keyword here and cannot be used as a name)"
    elif isinstance(err, UnexpectedCharacters):
        line, col = err.line, err.column
        end_line, end_col = line, col + 1
        char = text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(text) else "?"
        code = codes.SYNTAX
        if char == '"':
            message = 'unterminated string: a path must close with `"` on the same line'
        else:
            message = f"unexpected character {char!r}"
            if err.allowed:
                message += f"; expected {_expected(err.allowed)}"
    else:  # UnexpectedEOF, or UnexpectedToken at $END: report at the last line, never at -1
        line, col = _last_position(text)
        end_line, end_col = line, col + 1
        expected = getattr(err, "expected", None) or []
        message = "unexpected end of file"
        if expected:
            message += f"; expected {_expected(expected)}"
        code = codes.UNEXPECTED_EOF
    return Diagnostic(
        Span(path, line, col, end_line, end_col), code, message, hint=_hint_for(err, text)
    )


_SHAPES_OF = {
    "stage": "a stage reads `stage NAME = REPEATS x Block(arguments)`, e.g. `3 x Bottleneck(64)`",
    "input": "an input shape reads `input C x H x W`, e.g. `input 3x224x224`",
}


def _hint_for(err: UnexpectedInput, text: str) -> str | None:
    """When `x` was expected, the statement's form: `x` is easy to leave out of both forms.
    A fourth size after `input C x H x W`: 3-D networks are out of scope, said so."""
    expected = getattr(err, "expected", None) or getattr(err, "allowed", None) or ()
    token = getattr(err, "token", None)
    end = token.start_pos if token is not None and token.start_pos is not None else len(text)
    if (
        token is not None
        and str(token) == "x"
        and re.search(r"(?m)^[^#\n]*\binput\s+\d+\s*x\s*\d+\s*x\s*\d+\s*$", text[:end])
    ):
        return (
            "an input is C x H x W (or H x W); 3-D (video) inputs, C x T x H x W, are out of "
            "scope: resgen's networks are 2-D (nn.Conv2d)"
        )
    if "`x`" not in {_describe_terminal(n) for n in expected}:
        return None
    # The statement being written: the last line (comments removed) that starts with one.
    before = re.sub(r"#[^\n]*", "", text[:end])
    keywords = re.findall(r"(?m)^\s*(stage|input)\b", before)
    return _SHAPES_OF[keywords[-1]] if keywords else None


_KEYWORDISH = {
    "block",
    "network",
    "stage",
    "stem",
    "head",
    "main",
    "shortcut",
    "merge",
    "post",
    "let",
    "param",
    "input",
    "class",
    "import",
    "expansion",
    "when",
    "from",
    "seq",
    "and",
    "or",
    "not",
    "true",
    "false",
    "x",
}


def _check_nesting(text: str, path: str, diags: Diagnostics) -> None:
    """Bound bracket nesting before parsing, so a hostile input cannot exhaust the stack."""
    depth = 0
    line, col = 1, 0
    in_comment = in_string = False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, in_comment, in_string = line + 1, 0, False, False
            continue
        if in_comment:
            continue
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch == "#":
            in_comment = True
        elif ch in "({":
            depth += 1
            if depth > LIMITS.max_nesting:
                diags.error(
                    Span(path, line, col, line, col + 1),
                    codes.LIMIT,
                    f"nesting deeper than {LIMITS.max_nesting} brackets",
                    hint="set RESGEN_MAX_NESTING to raise the limit",
                )
                return
        elif ch in ")}":
            depth = max(0, depth - 1)


# Expression rules of the grammar: chains of these make the tree deep (`1+1+...`, `not not ...`).
_EXPRESSION_RULES = frozenset(
    {"or_op", "and_op", "not_op", "compare", "plus", "minus", "times", "divide", "floor_divide"}
    | {"neg", "pair", "conditional"}
)


def _check_depth(tree: Tree, path: str, diags: Diagnostics) -> None:
    """Bound expression depth without recursion: building and evaluating the spec recurse."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in _EXPRESSION_RULES:
            depth += 1
            if depth > LIMITS.max_expression_depth:
                diags.error(
                    _span(path, node.meta),
                    codes.LIMIT,
                    f"expression nested deeper than {LIMITS.max_expression_depth} operators",
                    hint="set RESGEN_MAX_EXPRESSION_DEPTH to raise the limit",
                )
                return
        stack.extend((c, depth) for c in node.children if isinstance(c, Tree))


def parse_text(text: str, path: str = "<string>") -> S.SpecFile:
    """Parse one file. Raises SpecError with located diagnostics; never anything else."""
    diags = Diagnostics()
    _check_nesting(text, path, diags)
    diags.raise_if_errors()
    try:
        tree = _lark().parse(text, start="start")
    except UnexpectedInput as err:
        raise SpecError([_syntax_error(err, text, path)]) from None
    _check_depth(tree, path, diags)
    diags.raise_if_errors()
    builder = _Builder(path, diags)
    result = builder.transform(tree)
    diags.raise_if_errors()
    return result


def _span(path: str, meta) -> Span:
    if getattr(meta, "empty", False):
        return Span(path, 1, 1, 1, 1)
    return Span(path, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(path: str, tok: Token) -> Span:
    return Span(
        path,
        tok.line,
        tok.column,
        tok.end_line or tok.line,
        tok.end_column or tok.column + len(tok),
    )


_PATTERN_TEXT = re.compile(r"[A-Za-z0-9_-]*")


def _name_pattern(token: Token, path: str, diags: Diagnostics) -> tuple[str | S.Expr, ...]:
    """`"b{index + 1}"` as literal text and expressions: each `{...}` is parsed as an .arch
    expression, located in the file. Literal text is letters, digits, `_` and `-` (a module name:
    torch refuses dots, and braces delimit the expressions)."""
    text = str(token)[1:-1]
    parts: list[str | S.Expr] = []
    position = 0
    line, column = token.line, token.column + 1  # the first character inside the quotes

    def span(start: int, end: int) -> Span:
        return Span(path, line, column + start, line, column + end)

    for match in re.finditer(r"\{([^{}]*)\}|([^{}]+)|([{}])", text):
        expression, literal, stray = match.groups()
        if stray is not None:
            diags.error(
                span(match.start(), match.end()),
                codes.SYNTAX,
                f"unmatched `{stray}` in a name pattern",
                hint='a pattern reads like "b{index + 1}": text with expressions in braces',
            )
            return ()
        if literal is not None:
            if not _PATTERN_TEXT.fullmatch(literal):
                diags.error(
                    span(match.start(), match.end()),
                    codes.BAD_NAME,
                    f"`{literal}` in a name pattern: module names here are letters, digits, "
                    "`_` and `-`",
                )
                return ()
            parts.append(literal)
            continue
        try:
            tree = _lark().parse(expression, start="expr")
        except UnexpectedInput as err:
            offset = match.start() + 1 + max(0, getattr(err, "column", 1) - 1)
            diags.error(span(offset, offset + 1), codes.SYNTAX, "not an expression in braces")
            return ()
        shift = _Shift(path, line, column + match.start(), diags)
        parts.append(shift.transform(tree))
        position = match.end()
    del position
    return tuple(parts)


@v_args(meta=True)
class _Builder(Transformer):
    """Parse tree to spec nodes. Duplicate sections are reported here, where spans are at hand."""

    def __init__(self, path: str, diags: Diagnostics):
        super().__init__()
        self.path = path
        self.diags = diags

    def _sp(self, meta) -> Span:
        return _span(self.path, meta)

    def _tsp(self, tok: Token) -> Span:
        return _tok_span(self.path, tok)

    def _int(self, tok: Token) -> int:
        """An integer literal, bounded before conversion (Python refuses > 4300 digits)."""
        value = int(tok) if len(tok) <= 20 else LIMITS.max_int + 1
        if value > LIMITS.max_int:
            self.diags.error(
                self._tsp(tok),
                codes.LIMIT,
                f"integer literal over the limit {LIMITS.max_int}",
                hint="set RESGEN_MAX_INT to raise the limit",
            )
            return 0
        return value

    # -- expressions
    def int(self, meta, c):
        return S.Int(span=self._sp(meta), value=self._int(c[0]))

    def float(self, meta, c):
        value = float(c[0])
        if not math.isfinite(value):
            self.diags.error(self._sp(meta), codes.LIMIT, f"`{c[0]}` is too large for a number")
            value = 0.0
        return S.Float(span=self._sp(meta), value=value)

    def true(self, meta, c):
        return S.Bool(span=self._sp(meta), value=True)

    def false(self, meta, c):
        return S.Bool(span=self._sp(meta), value=False)

    def ref(self, meta, c):
        return S.Ref(span=self._sp(meta), name=str(c[0]))

    def func(self, meta, c):
        name, args = c
        args = args or []
        positional = tuple(a.value for a in args if a.name is None)
        keywords = tuple(a for a in args if a.name is not None)
        first_named = next((i for i, a in enumerate(args) if a.name is not None), len(args))
        for arg in args[first_named:]:
            if arg.name is None:
                self.diags.error(
                    arg.span, codes.SYNTAX, "a positional argument cannot follow a named one"
                )
        return S.Func(span=self._sp(meta), name=str(name), args=positional, keywords=keywords)

    def pair(self, meta, c):
        return S.Pair(span=self._sp(meta), h=c[0], w=c[1])

    def neg(self, meta, c):
        return S.UnaryOp(span=self._sp(meta), op="-", operand=c[0])

    def conditional(self, meta, c):
        return S.Cond(span=self._sp(meta), then=c[0], test=c[1], other=c[2])

    def not_op(self, meta, c):
        return S.UnaryOp(span=self._sp(meta), op="not", operand=c[0])

    def _bin(op):  # noqa: N805 - a method factory
        def method(self, meta, c):
            return S.BinOp(span=self._sp(meta), op=op, left=c[0], right=c[-1])

        return method

    plus, minus, times = _bin("+"), _bin("-"), _bin("*")
    divide, floor_divide = _bin("/"), _bin("//")
    and_op, or_op = _bin("and"), _bin("or")

    def compare(self, meta, c):
        return S.BinOp(span=self._sp(meta), op=str(c[1]), left=c[0], right=c[2])

    # -- calls and layers
    def kwarg(self, meta, c):
        return S.Arg(span=self._sp(meta), name=str(c[0]), value=c[1])

    def args(self, meta, c):
        return [
            a if isinstance(a, S.Arg) else S.Arg(span=a.span, name=None, value=a)
            for a in c
            if a is not None
        ]

    def call(self, meta, c):
        name, args = c
        return S.Layer(
            span=self._sp(meta),
            kind="call",
            name=None,
            callee=str(name),
            callee_span=self._tsp(name),
            args=tuple(args or ()),
        )

    def layer(self, meta, c):
        name, call, inputs, condition = c
        return call.model_copy(
            update={
                "name": str(name),
                "span": self._sp(meta),
                "inputs": tuple(inputs or ()),
                "condition": condition,
            }
        )

    def seq_layer(self, meta, c):
        name, *items, inputs, condition = c
        return S.Layer(
            span=self._sp(meta),
            kind="seq",
            name=str(name),
            callee="seq",
            callee_span=self._tsp(name),
            items=tuple(items),
            inputs=tuple(inputs or ()),
            condition=condition,
        )

    def reuse(self, meta, c):
        name, inputs = c
        return S.Layer(
            span=self._sp(meta),
            kind="reuse",
            name=str(name),
            callee=str(name),
            callee_span=self._tsp(name),
            inputs=tuple(inputs or ()),
        )

    def repeat(self, meta, c):
        name, var, count, *items = c
        return S.Layer(
            span=self._sp(meta),
            kind="repeat",
            name=str(name),
            callee="repeat",
            callee_span=self._tsp(name),
            items=tuple(items),
            var=str(var),
            count=count,
        )

    def inputs(self, meta, c):
        return list(c)

    def source(self, meta, c):
        name, index = c
        return S.Input(span=self._sp(meta), name=str(name), index=index)

    # -- blocks
    def param(self, meta, c):
        return S.Param(span=self._sp(meta), name=str(c[0]), default=c[1])

    def params(self, meta, c):
        return [p for p in c if p is not None]

    def let(self, meta, c):
        return S.Let(span=self._sp(meta), name=str(c[0]), value=c[1])

    def expansion(self, meta, c):
        return ("expansion", c[0], self._sp(meta))

    def main(self, meta, c):
        return ("main", tuple(c), self._sp(meta))

    def post(self, meta, c):
        return ("post", tuple(c), self._sp(meta))

    def when(self, meta, c):
        return c[0]

    def when_name(self, meta, c):
        return S.Ref(span=self._tsp(c[0]), name=str(c[0]))

    def when_not(self, meta, c):
        return S.UnaryOp(span=self._sp(meta), op="not", operand=self.when_name(meta, c))

    def shortcut_from(self, meta, c):
        return c[0]

    def shortcut(self, meta, c):
        name, source, cond, *layers = c
        node = S.Shortcut(
            span=self._sp(meta),
            name=str(name),
            condition=cond,
            layers=tuple(layers),
            source=None if source is None else str(source),
            source_span=None if source is None else self._tsp(source),
        )
        return ("shortcut", node, self._sp(meta))

    def merge(self, meta, c):
        name, condition = c
        return ("merge", (name, condition), self._sp(meta))

    def _sections(self, items, owner: str, repeatable=("let",)):
        seen: dict[str, Span] = {}
        for key, _, span in items:
            if key in seen and key not in repeatable:
                self.diags.error(
                    span,
                    codes.DUPLICATE_SECTION,
                    f"`{key}` appears twice in {owner} (first at line {seen[key].line})",
                )
            seen.setdefault(key, span)

    def block(self, meta, c):
        name, params, *items = c
        tagged = [("let", i, i.span) if isinstance(i, S.Let) else i for i in items]
        self._sections(tagged, f"block `{name}`")
        fields: dict = {"lets": tuple(i for k, i, _ in tagged if k == "let")}
        for key, value, span in tagged:
            if key == "expansion":
                fields.setdefault("expansion", value)
            elif key in ("main", "post"):
                fields.setdefault(key, value)
            elif key == "shortcut":
                fields.setdefault("shortcut", value)
                # Written before `main`: registered first (state_dict order), as timm's ResNetV2
                # and ByobNet blocks and torchvision's RegNet blocks do.
                fields.setdefault("shortcut_first", "main" not in fields)
            elif key == "merge":  # resolve checks the name against the registered merges
                merge, condition = value
                fields.setdefault("merge", str(merge))
                fields.setdefault("merge_span", span)
                fields.setdefault("merge_name_span", self._tsp(merge))
                fields.setdefault("merge_condition", condition)
        return S.Block(
            span=self._sp(meta),
            name=str(name),
            params=tuple(params or ()),
            source_file=self.path,
            **fields,
        )

    # -- networks
    def input(self, meta, c):
        channels, height, width = c
        return (
            "input",
            S.InputShape(span=self._sp(meta), channels=channels, height=height, width=width),
            self._sp(meta),
        )

    def class_name(self, meta, c):
        return ("class", str(c[0]), self._sp(meta))

    def net_param(self, meta, c):
        return ("param", S.Param(span=self._sp(meta), name=str(c[0]), default=c[1]), self._sp(meta))

    def stem(self, meta, c):
        return ("stem", tuple(c), self._sp(meta))

    def head(self, meta, c):
        return ("head", tuple(c), self._sp(meta))

    def features(self, meta, c):
        return ("features", tuple(c), self._sp(meta))

    def metadata(self, meta, c):
        entries = tuple(c)
        check_entries(entries, self.diags)
        return ("metadata", entries, self._sp(meta))

    def meta_entry(self, meta, c):
        key, value = c
        return S.MetaEntry(span=self._sp(meta), key=str(key), key_span=self._tsp(key), value=value)

    def meta_string(self, meta, c):
        return str(c[0])[1:-1]

    def meta_int(self, meta, c):
        return self._int(c[0])

    def meta_float(self, meta, c):
        value = float(c[0])
        if not math.isfinite(value):
            self.diags.error(self._sp(meta), codes.LIMIT, f"`{c[0]}` is too large for a number")
            value = 0.0
        return value

    def meta_neg(self, meta, c):
        if isinstance(c[0], bool) or not isinstance(c[0], int | float):
            self.diags.error(self._sp(meta), codes.BAD_METADATA, "`-` before a value not a number")
            return c[0]
        return -c[0]

    def meta_true(self, meta, c):
        return True

    def meta_false(self, meta, c):
        return False

    def meta_tuple(self, meta, c):
        return tuple(item for item in c if item is not None)

    def feature(self, meta, c):
        name, (path, path_span) = c
        return S.Feature(
            span=self._sp(meta),
            name=str(name) if name is not None else path,
            path=path,
            path_span=path_span,
        )

    def stage_path(self, meta, c):
        return (".".join(str(t) for t in c), self._sp(meta))

    def stage_in(self, meta, c):
        return (str(c[0]), self._tsp(c[0]))

    def stage_named(self, meta, c):
        token = c[0]
        return (_name_pattern(token, self.path, self.diags), self._tsp(token))

    def stage_body(self, meta, c):
        return tuple(c)

    def stage_run(self, meta, c):
        repeats, block, args = c
        return S.Run(
            span=self._sp(meta),
            repeats=repeats,
            block=str(block),
            block_span=self._tsp(block),
            args=tuple(args or ()),
        )

    def stage_runs(self, meta, c):
        return tuple(c)

    def stage(self, meta, c):
        (name, path_span), runs, container, pattern, layers = c
        node = S.Stage(
            span=self._sp(meta),
            name=name,
            runs=runs,
            path_span=path_span,
            container=container[0] if container else None,
            container_span=container[1] if container else None,
            pattern=pattern[0] if pattern else None,
            pattern_span=pattern[1] if pattern else None,
            layers=layers or (),
        )
        return ("stage", node, self._sp(meta))

    def network(self, meta, c):
        name, *items = c
        tagged = [("let", i, i.span) if isinstance(i, S.Let) else i for i in items]
        self._sections(tagged, f"network `{name}`", repeatable=("let", "param", "stage"))
        fields: dict = {
            "lets": tuple(i for k, i, _ in tagged if k == "let"),
            "params": tuple(i for k, i, _ in tagged if k == "param"),
            "stages": tuple(i for k, i, _ in tagged if k == "stage"),
        }
        for key, value, _ in tagged:
            if key == "class":
                fields.setdefault("class_name", value)
            elif key in ("input", "stem", "head", "features", "metadata"):
                fields.setdefault(key, value)
        return S.Network(span=self._sp(meta), name=str(name), source_file=self.path, **fields)

    def derived_network(self, meta, c):
        name, base, metadata = c
        return S.Network(
            span=self._sp(meta),
            name=str(name),
            base=base,
            source_file=self.path,
            metadata=metadata[1] if metadata is not None else None,
        )

    # -- file
    def import_file(self, meta, c):
        return S.Import(span=self._sp(meta), path=str(c[0])[1:-1])

    def import_std(self, meta, c):
        return S.Import(span=self._sp(meta), std=".".join(str(t) for t in c))

    def start(self, meta, c):
        by_type = lambda t: tuple(i for i in c if isinstance(i, t))  # noqa: E731
        return S.SpecFile(
            span=self._sp(meta),
            path=self.path,
            imports=by_type(S.Import),
            lets=by_type(S.Let),
            blocks=by_type(S.Block),
            networks=by_type(S.Network),
        )

    def __default__(self, data, children, meta):  # pragma: no cover - every rule is handled
        return Tree(data, children, meta)


class _Shift(_Builder):
    """Builds an expression parsed from inside a string (a name pattern), its spans moved to
    where the string sits in the file."""

    def __init__(self, path: str, line: int, column: int, diags: Diagnostics):
        super().__init__(path, diags)
        self.line, self.column = line, column

    def _sp(self, meta) -> Span:
        if getattr(meta, "empty", False):
            return Span(self.path, self.line, self.column, self.line, self.column)
        return Span(
            self.path,
            self.line,
            self.column + meta.column,
            self.line,
            self.column + meta.end_column,
        )

    def _tsp(self, tok: Token) -> Span:
        return Span(
            self.path,
            self.line,
            self.column + tok.column,
            self.line,
            self.column + (tok.end_column or tok.column + len(tok)),
        )
