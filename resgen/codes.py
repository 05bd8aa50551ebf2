"""Every diagnostic code resgen reports, declared once.

A code is the stable kebab-case kind of a diagnostic: printed as `[merge-mismatch]` after the
message and given as `"code"` in `check --json`. Stages report with these constants, never with a
string of their own; `CODES` lists them all (README's error reference and the tests read it).

`follows` says what an error of this kind can be a consequence of, so the shape engine reports a
mistake once and not again at every layer it upsets downstream:
  never     the layer's own arguments (they cannot follow from an earlier layer)
  channels  only an earlier error that may have left the channel counts wrong
  anything  any earlier error (sizes, merges, flattening)
`keeps_channels` marks errors about sizes alone: the channel counts after them are still right.
"""

from __future__ import annotations

from typing import Literal

Follows = Literal["never", "channels", "anything"]


class Code(str):
    """A diagnostic code: a `str` (so it compares, hashes and serialises as its name) that also
    carries what it is about and what it can follow from."""

    about: str
    follows: Follows
    keeps_channels: bool

    def __new__(
        cls, name: str, about: str, follows: Follows = "anything", keeps_channels: bool = False
    ) -> Code:
        code = super().__new__(cls, name)
        code.about, code.follows, code.keeps_channels = about, follows, keeps_channels
        return code


CODES: dict[str, Code] = {}


def _code(name: str, about: str, follows: Follows = "anything", **kw) -> Code:
    code = CODES[name] = Code(name, about, follows, **kw)
    return code


# -- reading files and parsing
ENCODING = _code("encoding", "the file is not UTF-8 text (or holds a NUL byte)")
SYNTAX = _code("syntax", "the text does not follow the grammar")
UNEXPECTED_EOF = _code("unexpected-eof", "the file ends in the middle of a statement")
DUPLICATE_SECTION = _code("duplicate-section", "a section appears twice in one block or network")
LIMIT = _code("limit", "a bound on size or nesting is exceeded (each can be raised)")
IMPORT_NOT_FOUND = _code("import-not-found", "an imported file or library cannot be read")
IMPORT_CYCLE = _code("import-cycle", "files import each other in a circle")

# -- names and arguments
BAD_NAME = _code("bad-name", "a name that cannot be used where it stands")
DUPLICATE_NAME = _code("duplicate-name", "one name defined twice in a scope")
UNKNOWN_NAME = _code("unknown-name", "a name that nothing defines")
UNKNOWN_FUNCTION = _code("unknown-function", "a call of a function expressions do not have")
UNKNOWN_OP = _code("unknown-op", "a layer type that is neither an op nor a block")
UNKNOWN_BLOCK = _code("unknown-block", "a stage of a block type that is not defined")
UNKNOWN_NETWORK = _code("unknown-network", "a derived network of an unknown base")
UNKNOWN_MERGE = _code("unknown-merge", "a `merge` of a kind resgen does not have")
UNKNOWN_ARGUMENT = _code("unknown-argument", "an argument the callee has no parameter for")
DUPLICATE_ARGUMENT = _code("duplicate-argument", "an argument given twice")
MISSING_ARGUMENT = _code("missing-argument", "a required argument left out")
TOO_MANY_ARGUMENTS = _code("too-many-arguments", "more positional arguments than parameters")
STAGE_SETS_ARGUMENT = _code("stage-sets-argument", "a stage argument the stage rule sets itself")
UNNAMED_ITEM = _code("unnamed-item", "a `seq` or shortcut that names some of its layers only")
REUSE_STATEFUL = _code(
    "reuse-stateful",
    "a layer applied again where its weights do not fit the input, or a block applied again",
)
RECURSIVE_BLOCK = _code("recursive-block", "a block that contains itself")
EMPTY_BLOCK = _code("empty-block", "a block without `main` layers")
SHORTCUT_WITHOUT_MERGE = _code("shortcut-without-merge", "a shortcut with nothing to join it")
OVERWRITES_SHORTCUT_INPUT = _code(
    "overwrites-shortcut-input",
    "an in-place layer changes a tensor another path reads afterwards",
)
MULTIPLE_NETWORKS = _code("multiple-networks", "a file that defines more than one network")
MISSING_INPUT = _code("missing-input", "a network without an `input` shape")
BAD_INPUT = _code("bad-input", "an input shape below 1")
NO_NETWORK = _code("no-network", "a command that needs a network, on a library file")

# -- expressions and the stage rule
EXPRESSION = _code("expression", "an expression that cannot be evaluated")
DESIGN_SPACE = _code(
    "design-space",
    "a design-space function's parameters outside its space (RegNet: not the spec's stages)",
)
TYPE = _code("type", "a value of the wrong type (a pair where an integer is needed, ...)")
DIVISION_BY_ZERO = _code("division-by-zero", "a division by zero")
INEXACT_DIVISION = _code("inexact-division", "`/` of integers that leaves a remainder")
BAD_REPEATS = _code("bad-repeats", "a stage that repeats its block fewer than once")
BAD_DILATE = _code("bad-dilate", "`dilate=true` where the stage or block cannot dilate")

# -- shapes (resgen.shapes); arguments of a layer never follow from an earlier error
BAD_ARGUMENT = _code("bad-argument", "an op argument of the wrong kind or range", "never")
PADDING_TOO_LARGE = _code(
    "padding-too-large",
    "pool padding over half the kernel (PyTorch refuses it)",
    "never",
    keeps_channels=True,
)
GROUPS = _code("groups", "channels not divisible by the groups of a conv or group norm", "channels")
CHANNELS = _code("channels", "a channel count that does not fit the input", "channels")
IN_FEATURES = _code("in-features", "a linear layer's declared input size does not fit")
TOO_SMALL = _code("too-small", "a window larger than its (padded) input", keeps_channels=True)
INDIVISIBLE_SIZE = _code(
    "indivisible-size",
    "a height or width a layer needs divisible by its block",
    keeps_channels=True,
)
NOT_SPATIAL = _code("not-spatial", "a C x H x W op after `flatten`")
NOT_FLAT = _code("not-flat", "a flat op (linear) before `flatten`")
MERGE_MISMATCH = _code("merge-mismatch", "main path and shortcut give different shapes")
JOIN_MISMATCH = _code("join-mismatch", "tensors that concat, add or mul cannot join")
BUNDLE = _code("bundle", "a bundle where one tensor is read, or an item it does not have")
BODY_ONLY = _code(
    "body-only",
    "`from`, a layer's `when`, `repeat` or a tensor function outside a block's main and post",
)
DROPPED_ROWS = _code("dropped-rows", "input rows or columns that no window reads (a warning)")
INPUT_LAYOUT = _code(
    "input-layout", "an input that looks like H x W x C, given where C x H x W goes (a warning)"
)
UNREAD_INPUT = _code(
    "unread-input",
    "rows or columns of a tensor that no path reads: strides over kernels (a warning)",
)
INPUT_SIZES = _code(
    "input-sizes", "input sizes above the smallest accepted one that fail, and why (a warning)"
)
OVERWRITES_SAVED = _code(
    "overwrites-saved",
    "an in-place op changes a tensor autograd saved for backward (training would fail)",
    "never",
)

# -- feature taps (resgen.features): a network's `features` section
UNKNOWN_FEATURE = _code(
    "unknown-feature", "a feature that names no stage or network-level layer", "never"
)
FEATURE_ORDER = _code("feature-order", "features not listed in forward order", "never")
FEATURE_NOT_SPATIAL = _code(
    "feature-not-spatial", "a feature with no C x H x W map (after the global pool)"
)

# -- a network's `metadata` section (resgen.metadata): timm's pretrained_cfg
UNKNOWN_METADATA = _code(
    "unknown-metadata", "a metadata key that is not one of timm's pretrained_cfg", "never"
)
BAD_METADATA = _code("bad-metadata", "a metadata value of the wrong type or range", "never")

# -- memory (resgen.memory); `check --batch B --budget SIZE`
OVER_BUDGET = _code(
    "over-budget", "the training memory estimate at --batch exceeds --budget (a warning)", "never"
)

# -- code generation
FLATTEN_IN_BLOCK = _code(
    "flatten-in-block", "a flatten in a block that a stage repeats or another block contains"
)
FLATTEN_SIZE = _code("flatten-size", "a flatten whose input size is unknown")
CODEGEN = _code("codegen", "a spec the code generator cannot write")
UNSAFE_CODE = _code("unsafe-code", "rendered code outside what resgen emits (user templates)")
INTERNAL = _code("internal", "a resgen bug: please report it")
