"""Which input sizes a network accepts, found by arithmetic rather than by trying torch.

The network's spatial chain is reduced to a small program (only the steps that can change H or
W: windows, fixed-size pools, merges) and re-run per axis over every size up to a bound that
covers a few periods of the total stride, so the answer is described exactly: "any size >= 29",
"multiples of 32", "n mod 16 in {0, 13, 14, 15} (from 45)".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from resgen.ops.base import Fixed, dropped_rows

_SEARCH_WORK = 3_000_000  # steps x sizes; beyond it the size search gives up


@dataclass
class InputSizes:
    """What input sizes the network takes, per axis (height, width), found by arithmetic."""

    smallest: tuple[int, int] | None  # smallest accepted H and W (None: none found)
    accepted: tuple[str, str]  # e.g. "any size >= 29"
    no_dropped_rows: tuple[str, str]  # sizes no strided layer drops rows or columns for
    exact: tuple[str, str]  # sizes every strided layer divides exactly, e.g. "multiples of 32"


def input_sizes(nodes: Mapping, preds: Mapping) -> InputSizes:
    """Search both axes. `nodes` are the graph's records in forward order (resgen.graph.Node),
    `preds` each node's predecessors."""
    program = _spatial_program(nodes, preds)
    results = [_search_axis(program, axis) for axis in (0, 1)]
    smallest = None if any(r[0] is None for r in results) else (results[0][0], results[1][0])
    return InputSizes(
        smallest,
        (results[0][1], results[1][1]),
        (results[0][2], results[1][2]),
        (results[0][3], results[1][3]),
    )


def _spatial_program(nodes: Mapping, preds: Mapping) -> list[tuple]:
    """Only the steps that can change H or W: ("window", inputs, windows), ("fixed", inputs,
    size), ("merge", inputs, merge op). Layers that keep every size (1x1 stride-1 convs, batch
    norm, ReLU, 'same' 3x3s) alias their input's slot."""
    slot: dict[str, int] = {}
    program: list[tuple] = [("input",)]
    for node_id, node in nodes.items():
        if node.kind == "input":
            slot[node_id] = 0
            continue
        inputs = [slot.get(p) for p in preds[node_id]]
        if any(i is None for i in inputs) or not node.known:
            continue  # not analysable (an earlier error); downstream steps drop out too
        if node.kind == "merge":
            if inputs[0] == inputs[1]:
                slot[node_id] = inputs[0]
                continue
            program.append(("merge", inputs, node.op))
        else:
            spatial = node.op.spatial(node.args) if node.op is not None else None
            if isinstance(spatial, Fixed):
                program.append(("fixed", inputs, spatial))
            elif spatial is not None and not all(w.keeps_size() for w in spatial):
                program.append(("window", inputs, spatial))
            else:
                slot[node_id] = inputs[0]
                continue
        slot[node_id] = len(program) - 1
    return program


def _run_axis(program: list[tuple], axis: int, n: int) -> tuple[bool, bool, bool]:
    """(accepted, no rows dropped, every stride divides exactly) for input size n."""
    sizes = [0] * len(program)
    sizes[0] = n
    clean = exact = True
    for index in range(1, len(program)):
        kind, inputs, what = program[index]
        if kind == "window":
            size = sizes[inputs[0]]
            window = what[axis]
            if not window.takes(size):  # the output is at least 1, and the op's own conditions
                return False, False, False
            k, s, p, d, ceil = window
            out = window.out(size)
            if s > 1:
                if size % s:
                    exact = False
                if not ceil and dropped_rows(size, k, s, p, d):
                    clean = False
            sizes[index] = out
        elif kind == "fixed":
            sizes[index] = what[axis]
        else:  # a merge: its op says whether the two sizes fit (mul broadcasts a size of 1)
            joined = what.combine((sizes[inputs[0]],), (sizes[inputs[1]],))
            if joined is None:
                return False, False, False
            sizes[index] = joined[0]
    return True, clean, exact


def _search_axis(program: list[tuple], axis: int):
    """Smallest accepted size and a description of each size set, for one axis."""
    period = 1
    strides = [1] * len(program)
    for index, step in enumerate(program[1:], 1):
        kind, inputs, what = step
        if kind == "window":
            strides[index] = strides[inputs[0]] * what[axis].stride
        elif kind == "merge":
            strides[index] = max(strides[i] for i in inputs)
        else:
            strides[index] = 1
        period = math.lcm(period, strides[index])
    budget = _SEARCH_WORK // max(1, len(program))
    first = None
    n = 0
    results: list[tuple[bool, bool, bool]] = []
    limit = min(budget, max(4096, 8 * period))
    while n < limit:
        n += 1
        result = _run_axis(program, axis, n)
        results.append(result)
        if result[0] and first is None:
            first = n
            limit = min(budget, n + 3 * period + 64)
    if first is None:
        none = f"none up to {n}"
        return None, none, none, none
    return (
        first,
        _describe(results, 0, period),
        _describe(results, 1, period),
        _describe(results, 2, period),
    )


def _describe(results: list[tuple], which: int, period: int) -> str:
    """Describe {n : results[n-1][which]} as eventually periodic: 'multiples of 32', ..."""
    total = len(results)
    members = [i + 1 for i, r in enumerate(results) if r[which]]
    if not members:
        return f"none up to {total}"
    if total < 2 * period:
        return (
            f"from {members[0]}: "
            + ", ".join(map(str, members[:8]))
            + (", ..." if len(members) > 8 else "")
        )
    tail = range(total - period + 1, total + 1)
    residues = sorted({n % period for n in tail if results[n - 1][which]})
    if not residues:  # only some small sizes
        return "only " + ", ".join(map(str, members[:8])) + (", ..." if len(members) > 8 else "")
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
