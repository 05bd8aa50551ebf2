"""Which input sizes a network accepts, found by arithmetic rather than by trying torch.

The network's spatial chain is reduced to a small program (only the steps that can change H or
W or refuse a size: windows, fixed-size pools, merges, and a flatten feeding a layer whose weights
were sized for the analysed input) and re-run per axis over every size up to a bound that covers
a few periods of the total stride, so the answer is described exactly: "any size >= 29",
"multiples of 32", "n mod 16 in {0, 13, 14, 15} (from 45)", "only 193 to 224".

A layer on flattened features (linear) was built for the analysed input: its `in_features` is
C x H x W at the flatten, so it takes only sizes that flatten to the same count, and H and W are
no longer independent. Each axis is then searched with the other at the analysed size
(`InputSizes.coupled`); `InputSizes.accepts(h, w)` answers for any pair.

The module also answers which rows and columns of a tensor no layer reads (`unread`): a window
whose stride is larger than its kernel skips the rows in between (ResNet v1's strided 1x1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from resgen.ops.base import Fixed, Window, arithmetic, dropped_rows

_SEARCH_WORK = 3_000_000  # steps x sizes; beyond it the size search gives up


@dataclass(frozen=True, slots=True)
class _Step:
    """One step of the size program. kind: input, window (`what`: a Window per axis), fixed
    (a Fixed size), merge (the Merge op), flatten (`what`: the channels it flattens) or features
    (`what`: the feature count the layer's weights were built for)."""

    kind: str
    inputs: tuple[int, ...]
    what: object
    node: str


@dataclass(frozen=True)
class SizeFailure:
    """The first input size above the smallest accepted one that fails, along one axis (the
    other at the analysed size), and why.

    node     where it fails: a merge, a window larger than its input, or a layer on flattened
             features (linear) whose weights were built for another size
    kind     "merge", "too-small" or "features"
    culprits (layer, worked arithmetic) of the layers that made the sizes disagree, in order;
             for "features" the flatten's arithmetic
    """

    axis: int
    size: int
    node: str
    kind: str
    culprits: tuple[tuple[str, str], ...] = ()


@dataclass
class InputSizes:
    """What input sizes the network takes, per axis (height, width), found by arithmetic.

    Every set takes every constraint of the graph into account: windows larger than their input,
    merges of two sizes, and the fixed feature count of a layer after `flatten`. Sizes are in
    pixels of the network input."""

    smallest: tuple[int, int] | None  # smallest accepted H and W (None: none found)
    accepted: tuple[str, str]  # e.g. "any size >= 29"
    no_dropped_rows: tuple[str, str]  # sizes for which every input row is read by some layer
    exact: tuple[str, str]  # sizes every strided layer divides exactly, e.g. "multiples of 32"
    # A flattened size is fixed (a linear layer after flatten): each axis is described with the
    # other at the analysed size.
    coupled: bool = False
    # Per axis: the first size above the smallest accepted one that fails (None: none do).
    failures: tuple[SizeFailure | None, SizeFailure | None] = (None, None)
    _program: list[_Step] = field(default_factory=list, repr=False, compare=False)

    def accepts(self, height: int, width: int) -> bool:
        """Whether an input of `height` x `width` pixels passes every constraint of the graph."""
        first, failed = _spatial_sizes(self._program, 0, height)
        second, failed_too = _spatial_sizes(self._program, 1, width)
        if failed is not None or failed_too is not None:
            return False
        return _check(self._program, 0, first, second)[1] is None


def input_sizes(
    nodes: Mapping,
    preds: Mapping,
    shapes: Mapping | None = None,
    analysed=(1, 1),
    gapped: tuple[bool, bool] = (False, False),
) -> InputSizes:
    """Search both axes. `nodes` are the graph's records in forward order (resgen.graph.Node),
    `preds` each node's predecessors, `shapes` the analysed ShapeResult per node (needed for the
    flatten constraint; without it, it is left out), `analysed` the analysed (H, W) and
    `gapped` per axis whether some tensor has rows no reader reads at any size (gapped_axes)."""
    program = _spatial_program(nodes, preds, shapes or {})
    coupled = _coupled(program)
    results = []
    for axis in (0, 1):
        other = _spatial_sizes(program, 1 - axis, analysed[1 - axis])[0] if coupled else None
        results.append(_search_axis(program, axis, other, gapped[axis]))
    smallest = None if any(r[0] is None for r in results) else (results[0][0], results[1][0])
    return InputSizes(
        smallest,
        (results[0][1], results[1][1]),
        (results[0][2], results[1][2]),
        (results[0][3], results[1][3]),
        coupled,
        (results[0][4], results[1][4]),
        program,
    )


def _spatial_program(nodes: Mapping, preds: Mapping, shapes: Mapping) -> list[_Step]:
    """Only the steps that can change H or W or refuse a size. Layers that keep every size (1x1
    stride-1 convs, batch norm, ReLU, 'same' 3x3s) alias their input's slot."""
    slot: dict[str, int] = {}
    program: list[_Step] = []
    flat: set[str] = set()  # nodes whose output is flattened features
    windows: dict[int, object] = {}  # id(args) -> the op's spatial answer: instances share args
    for node_id, node in nodes.items():
        if node.kind == "input":
            slot[node_id] = len(program)
            program.append(_Step("input", (), None, node_id))
            continue
        inputs = tuple(slot.get(p) for p in preds[node_id])
        if any(i is None for i in inputs) or not node.known:
            continue  # not analysable (an earlier error); downstream steps drop out too
        is_flat = any(p in flat for p in preds[node_id])
        if node.kind == "merge":
            if inputs[0] == inputs[1]:
                slot[node_id] = inputs[0]
                flat.update([node_id] if is_flat else [])
                continue
            step = _Step("merge", inputs, node.op, node_id)
        elif node.op is None:
            slot[node_id] = inputs[0]
            continue
        elif node.inputs is not None:  # a join (concat, add, mul of what `from` names)
            if len(set(inputs)) == 1 or is_flat:
                slot[node_id] = inputs[0]
                continue
            step = _Step("join", inputs, node.op, node_id)
        else:
            result = shapes.get(node_id)
            before = result.in_shape if result is not None else None
            after = result.out_shape if result is not None else None
            emit = node.op.emit
            if is_flat:
                flat.add(node_id)
                if emit is None or emit.in_channels is None or before is None:
                    slot[node_id] = inputs[0]
                    continue
                # its weights were sized for the analysed features: only that count fits
                step = _Step("features", inputs, before[0], node_id)
            elif before is not None and after is not None and len(before) == 3 and len(after) == 1:
                flat.add(node_id)
                step = _Step("flat", inputs, before[0], node_id)
            else:
                key = id(node.args)
                if key not in windows:
                    windows[key] = node.op.spatial(node.args)
                spatial = windows[key]
                if isinstance(spatial, Fixed):
                    step = _Step("fixed", inputs, spatial, node_id)
                elif spatial is not None and not all(w.keeps_size() for w in spatial):
                    step = _Step("window", inputs, spatial, node_id)
                else:
                    slot[node_id] = inputs[0]
                    continue
        slot[node_id] = len(program)
        program.append(step)
    return program


def _coupled(program: Sequence[_Step]) -> bool:
    """Whether a layer's fixed feature count depends on the input size: a flatten of sizes that
    vary with it (not after a pool to a fixed size) feeding it."""
    varies = [False] * len(program)
    for index, step in enumerate(program):
        if step.kind == "input":
            varies[index] = True
        elif step.kind != "fixed":
            varies[index] = any(varies[i] for i in step.inputs)
    flattened = any(s.kind == "flat" and varies[s.inputs[0]] for s in program)
    return flattened and any(s.kind == "features" for s in program)


def _spatial_sizes(program: Sequence[_Step], axis: int, n: int) -> tuple[list[int], int | None]:
    """Each spatial step's size along `axis` for input size n (flat steps 0), and the index of
    the step that refuses it (a window with no output, a merge of two sizes), or None."""
    sizes = [0] * len(program)
    for index, step in enumerate(program):
        kind = step.kind
        if kind == "input":
            sizes[index] = n
        elif kind == "window":
            window = step.what[axis]
            if not window.takes(sizes[step.inputs[0]]):  # output >= 1, and the op's own rules
                return sizes, index
            out = window.out(sizes[step.inputs[0]])
            sizes[index] = out
        elif kind == "fixed":
            sizes[index] = step.what[axis]
        elif kind == "merge":
            a, b = (sizes[i] for i in step.inputs)
            if a and b:
                joined = step.what.combine((a,), (b,))
                if joined is None:
                    return sizes, index
                sizes[index] = joined[0]
        elif kind == "join":  # the op's own rule on 1 x n x n tensors: concat needs equal sizes
            values = [sizes[i] for i in step.inputs]
            if all(values):
                joined = step.what.infer([(1, v, v) for v in values], {}, _Refusal())
                if joined is None:
                    return sizes, index
                sizes[index] = joined[1]
    return sizes, None


class _Refusal:
    """resgen.ops.base.Check for the size search: an op's error refuses the size."""

    flattened = None

    def error(self, code, message, *, arg=None, hint=None) -> None:
        pass

    def warning(self, code, message, *, hint=None) -> None:
        pass


def _check(
    program: Sequence[_Step], axis: int, sizes: list[int], other: list[int] | None
) -> tuple[bool, int | None]:
    """(every stride divides exactly, the step a feature count fails at) for the sizes one axis
    gives and the other axis's (None when no flatten needs them)."""
    exact = True
    features = [0] * len(program)
    for index, step in enumerate(program):
        kind = step.kind
        if kind == "window":
            s = step.what[axis].stride
            if s > 1 and sizes[step.inputs[0]] % s:
                exact = False
        elif kind == "flat" and other is not None:
            source = step.inputs[0]
            features[index] = step.what * sizes[source] * other[source]
        elif kind == "features" and other is not None:
            if features[step.inputs[0]] != step.what:
                return False, index
            features[index] = -1  # the layer's own output: no longer a function of the input
        elif kind == "merge" and any(features[i] for i in step.inputs):
            a, b = (features[i] for i in step.inputs)
            if a != b and -1 not in (a, b):
                return False, index
            features[index] = a
    return exact, None


def _run_axis(program, axis: int, n: int, other, gapped: bool = False):
    """(accepted, no rows dropped, every stride divides exactly, failing step) for size n."""
    sizes, failed = _spatial_sizes(program, axis, n)
    if failed is not None:
        return False, False, False, failed
    exact, failed = _check(program, axis, sizes, other)
    if failed is not None:
        return False, False, False, failed
    return True, not gapped and _clean(program, axis, sizes), exact, None


def _clean(program: Sequence[_Step], axis: int, sizes: list[int]) -> bool:
    """Whether no strided window drops trailing rows (the remainder) at these sizes."""
    for step in program:
        if step.kind == "window":
            k, s, p, d, ceil = step.what[axis]
            if s > 1 and not ceil and dropped_rows(sizes[step.inputs[0]], k, s, p, d):
                return False
    return True


def _search_axis(program: list[_Step], axis: int, other: list[int] | None, gapped: bool):
    """Smallest accepted size, a description of each size set, and the first failure above the
    smallest accepted size, for one axis."""
    period = 1
    strides = [1] * len(program)
    for index, step in enumerate(program):
        if step.kind == "window":
            strides[index] = strides[step.inputs[0]] * step.what[axis].stride
            period = math.lcm(period, strides[step.inputs[0]] * step.what[axis].multiple())
        elif step.inputs:
            strides[index] = max(strides[i] for i in step.inputs)
        period = math.lcm(period, strides[index])
    budget = _SEARCH_WORK // max(1, len(program))
    first = failure = None
    n = 0
    results: list[tuple[bool, bool, bool]] = []
    limit = min(budget, max(4096, 8 * period))
    while n < limit:
        n += 1
        accepted, clean, exact, failed = _run_axis(program, axis, n, other, gapped)
        results.append((accepted, clean, exact))
        if accepted and first is None:
            first = n
            limit = min(budget, n + 3 * period + 64)
        elif failed is not None and first is not None and failure is None:
            failure = _failure(program, axis, n, failed, other)
    if first is None:
        none = f"none up to {n}"
        return None, none, none, none, None
    clean = _describe(results, 1, period)
    if gapped:  # no size helps: see the unread-input warning
        clean = "none: a strided layer skips the rows between its windows"
    return first, _describe(results, 0, period), clean, _describe(results, 2, period), failure


def _failure(program, axis: int, n: int, index: int, other) -> SizeFailure:
    """Why input size n fails along `axis` at step `index`: the layers behind it."""
    step = program[index]
    sizes, spatial_failure = _spatial_sizes(program, axis, n)
    if step.kind == "window":
        k = step.what[axis]
        return SizeFailure(
            axis, n, step.node, "too-small", ((step.node, k.refusal(sizes[step.inputs[0]])),)
        )
    if spatial_failure is None:  # the sizes fit; a flattened feature count does not
        culprits = []
        for s in program[:index]:
            if s.kind == "flat":
                h, w = (sizes[s.inputs[0]], other[s.inputs[0]])[:: 1 if axis == 0 else -1]
                culprits.append((s.node, f"{s.what} x {h} x {w} = {s.what * h * w} features"))
        return SizeFailure(axis, n, step.node, "features", tuple(culprits))
    ancestors = [_ancestors(program, i) for i in step.inputs]
    common = set.intersection(*ancestors)
    culprits = []
    for side in step.inputs:
        chain = []
        current = side
        while current not in common:
            chain.append(current)
            current = program[current].inputs[0]
        for i in reversed(chain):
            s = program[i]
            if s.kind == "window":
                culprits.append((s.node, arithmetic(sizes[s.inputs[0]], *s.what[axis])))
            elif s.kind == "fixed":
                culprits.append((s.node, f"a fixed size of {s.what[axis]}"))
    return SizeFailure(axis, n, step.node, "merge", tuple(culprits))


def _ancestors(program: Sequence[_Step], index: int) -> set[int]:
    """The step and every step it depends on."""
    seen, todo = set(), [index]
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(program[i].inputs)
    return seen


def _describe(results: list[tuple], which: int, period: int) -> str:
    """Describe {n : results[n-1][which]} as eventually periodic: 'multiples of 32', ..., or as
    ranges when only some sizes qualify: 'only 193 to 224'."""
    total = len(results)
    members = [i + 1 for i, r in enumerate(results) if r[which]]
    if not members:
        return f"none up to {total}"
    if total < 2 * period:
        return f"from {members[0]}: " + _listing(members)
    tail = range(total - period + 1, total + 1)
    residues = sorted({n % period for n in tail if results[n - 1][which]})
    if not residues:  # only some small sizes
        return "only " + _listing(members)
    for q in (d for d in range(1, period + 1) if period % d == 0):  # the smallest period
        folded = {r % q for r in residues}
        if all((r in residues) == (r % q in folded) for r in range(period)):
            period, residues = q, sorted(folded)
            break
    member = set(residues)
    start = total  # the pattern holds from here on
    for n in range(total, 0, -1):
        if results[n - 1][which] != (n % period in member):
            break
        start = n
    begin = next(n for n in range(start, total + 1) if n % period in member)
    if len(member) == period:
        return f"any size >= {begin}"
    if member == {0}:
        return f"multiples of {period}" + (f" from {begin}" if begin > period else "")
    if len(member) == 1:
        return f"{period}k + {residues[0]} (from {begin})"
    return (
        f"n mod {period} in {{{', '.join(map(str, residues))}}} (from {begin})"
        if len(member) <= 8
        else f"{len(member)} of every {period} sizes from {begin}"
    )


def _listing(members: list[int]) -> str:
    """`193 to 224` for runs, commas between them, at most eight items shown."""
    runs: list[list[int]] = []
    for n in members:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    items = [f"{a}" if a == b else f"{a}, {b}" if b == a + 1 else f"{a} to {b}" for a, b in runs]
    return ", ".join(items[:8]) + (", ..." if len(items) > 8 else "")


# ---------------------------------------------------------------------------------------------
# Rows and columns no layer reads


def reads(window: Window, n: int) -> set[int]:
    """The positions 0..n-1 of a size-n axis that a window reads (padding excluded)."""
    k, s, p, d, _ = window
    out = window.out(n)
    return {o * s - p + j * d for o in range(out) for j in range(k)} & set(range(n))


def skips(window: Window) -> bool:
    """Whether a window leaves rows between its positions unread at any size: its taps, repeated
    every `stride`, do not cover every residue (a 1x1 at stride 2, a 2x2 at stride 3)."""
    k, s, _, d, _ = window
    return s > 1 and len({(j * d) % s for j in range(k)}) < s


def skipping_readers(nodes: Mapping, preds: Mapping, succ: Mapping) -> dict[str, list]:
    """The tensors (by producing node) that only windows read, some of them skipping rows or
    columns, each with its readers' (node id, windows) in forward order."""
    memo: dict[tuple, object] = {}
    tensors: dict[str, None] = {}
    for node_id, node in nodes.items():
        spatial = windows_of(node, memo)
        if spatial is not None and (skips(spatial[0]) or skips(spatial[1])):
            tensors.update(dict.fromkeys(preds[node_id]))
    found = {}
    for tensor in tensors:
        readers = [(r, windows_of(nodes[r], memo)) for r in succ[tensor]]
        if all(w is not None for _, w in readers):
            found[tensor] = readers
    return found


def gapped_axes(readers: Mapping[str, list]) -> tuple[bool, bool]:
    """Per axis: whether some tensor of `skipping_readers` has rows between its readers'
    windows that none reads, so that no input size has every row read."""
    gapped = [False, False]
    for users in readers.values():
        for axis in (0, 1):
            if not _covers([w[axis] for _, w in users]):
                gapped[axis] = True
    return gapped[0], gapped[1]


def windows_of(node, memo: dict | None = None) -> tuple[Window, Window] | None:
    """A reader's windows, or None when it reads every position (merges, fixed pools, ops that
    do not slide a window). `memo` keeps answers per (op, arguments): instances share them."""
    if node.kind != "layer" or node.op is None or not node.known:
        return None
    key = (id(node.op), id(node.args))
    if memo is not None and key in memo:
        return memo[key]
    spatial = node.op.spatial(node.args)
    result = spatial if isinstance(spatial, tuple) else None
    if memo is not None:
        memo[key] = result
    return result


def _covers(windows: Sequence[Window]) -> bool:
    """Whether windows together read every position away from the edges: a position x is read
    when some tap j of some window lands on it, (x + p - j*d) divisible by s."""
    period = math.lcm(*(w.stride for w in windows))
    if period > 100_000:
        return True  # not worth the search; the warning at the analysed size still counts
    residues = [
        (w.stride, {(j * w.dilation - w.padding) % w.stride for j in range(w.kernel)})
        for w in windows
    ]
    return all(any(x % s in taps for s, taps in residues) for x in range(period))
