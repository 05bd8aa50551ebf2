"""In-place writes and the tensors they change, over the lowered graph (no torch).

The language's semantics: every path of a block reads the block input as it entered the block
(the main path, the shortcut, the identity, a gate's `x * out`), and `shortcut ... from LAYER`
reads LAYER's output as it was produced. Generated code runs the main path first, then the
shortcut, then the merge (torchvision's order). An in-place write (`relu(inplace=true)`,
`merge add`'s `out += identity`: Op.storage says "in-place") changes the tensor its input is,
found by walking back through layers that return their input itself or a view of it (identity,
dropout, flatten, another in-place layer: Op.storage). When a layer of another path reads that
tensor after the write, it would see the changed values: `overwrites-shortcut-input`, an error
at the writing layer.

Why an error rather than reordering or copying: computing the shortcut first makes the forward
right but the backward wrong (its convolution or pool saved the block input for its gradient,
and autograd refuses the later in-place write), and a copy costs the memory `inplace=true` was
meant to save. A careful engineer writes `inplace=false` there, so resgen asks for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from resgen import codes
from resgen.diagnostics import Diagnostic

_MAIN, _SKIP = "main", "skip"  # merge edge roles (resgen.graph)


def _storages(node) -> set[str]:
    """Where the node's output may live, in a training or an eval pass (Op.storage)."""
    if node.op is None or not node.known:
        return {"new"}
    return {node.op.storage(node.args, training) for training in (True, False)}


def writes(node) -> bool:
    """Whether a node writes its result into its (main) input tensor (`out += identity` too)."""
    return "in-place" in _storages(node)


def aliases(node) -> bool:
    """Whether a node's output may be its input tensor itself or a view of it."""
    return _storages(node) != {"new"}


@dataclass(frozen=True)
class Overwrite:
    """An in-place write that another path sees: the writing node, the tensor it changes (the
    node that made it: a layer, a merge, or `input`), the layers between them that pass it on
    (identity, flatten, ...), and the first later reader with the node it reads through."""

    writer: str
    tensor: str
    through: tuple[str, ...]
    reader: str
    read: str


def overwrites(nodes: Mapping, graph) -> list[Overwrite]:
    """Every in-place write whose tensor another path reads later in the forward pass."""
    pred, succ = graph.pred, graph.succ
    order: dict[str, int] = {}
    found = []
    for node_id, node in nodes.items():
        op = node.op
        if op is None or not node.known:
            continue
        if not writes(node):
            continue
        if node.kind == "merge":  # `out += identity` writes into the main path's output
            written = next(p for p, e in pred[node_id].items() if e["role"] == _MAIN)
        else:
            written = next(iter(pred[node_id]))
        if len(succ[written]) == 1 and not aliases(nodes[written]):
            continue  # the common case: a fresh tensor only this layer reads (a ReLU after BN)
        path = [written]  # the tensor's nodes, back to the layer that made it
        while aliases(nodes[path[-1]]) and pred[path[-1]]:
            back = pred[path[-1]]
            path.append(next((p for p, e in back.items() if e["role"] == _MAIN), next(iter(back))))
        if not order:
            order.update((n, index) for index, n in enumerate(nodes))
        chain = {node_id, *path}
        for tensor in path:
            late = _late_reader(graph, nodes, order, tensor, chain, order[node_id])
            if late is not None:
                # Named as the writer's block sees it: its input, or the layer that made it.
                block = node.block
                inside = [p for p in path if block is None or p.startswith(block + ".")]
                named = path[len(inside)] if len(inside) < len(path) else path[-1]
                through = tuple(reversed(path[: path.index(named)]))
                found.append(Overwrite(node_id, named, through, *late))
                break
    return found


def _late_reader(graph, nodes, order, tensor: str, chain: set, after: int):
    """(reader, the node it reads) for a reader of `tensor`, or of a view of it, off the
    written chain that runs after `after`; None when there is none."""
    for reader in graph.succ[tensor]:
        if reader in chain:
            continue
        if order[reader] > after:
            return reader, tensor
        if aliases(nodes[reader]):  # a view taken earlier sees the write too
            later = _late_reader(graph, nodes, order, reader, chain, after)
            if later is not None:
                return later
    return None


def diagnostics(nodes: Mapping, graph) -> list[Diagnostic]:
    """`overwrites-shortcut-input` errors, one per writing layer."""
    result, seen = [], set()
    for found in overwrites(nodes, graph):
        writer, reader = nodes[found.writer], nodes[found.reader]
        if writer.span in seen:  # a block's mistake repeats in each instance: reported once
            continue
        seen.add(writer.span)
        block = writer.block
        name = _local(found.writer, block)
        what = _tensor_text(found.tensor, writer)
        if found.through:
            passed = ", ".join(f"`{_local(n, block)}`" for n in found.through)
            what += f" (which {passed} pass{'es' * (len(found.through) == 1)} on)"
        who = _reader_text(graph, found.reader, reader, found.read)
        if writer.kind == "merge":
            message = (
                f"`{writer.op.statement}` adds into the main path's output in place, but that is "
                f"{what}, which {who} reads afterwards"
            )
            hint = "start the main path with a layer that computes a new tensor"
        else:
            message = f"`{name}` changes {what} in place, but {who} reads it afterwards"
            hint = (
                f"declare `{name}` with `inplace=false`: each path of a block reads its input "
                "as it entered"
            )
        result.append(
            Diagnostic(
                writer.span,
                codes.OVERWRITES_SHORTCUT_INPUT,
                message,
                "error",
                block or found.writer,
                hint,
                node=found.writer,
            )
        )
    return result


def _local(name: str, block: str | None) -> str:
    return name[len(block) + 1 :] if block and name.startswith(block + ".") else name


def _tensor_text(tensor: str, writer) -> str:
    """`the input of layer1.0` for a tensor from outside the writer's block, else a layer's."""
    block = writer.block
    if block and not tensor.startswith(block + "."):
        return f"the input of {block}"
    if tensor == "input":
        return "the network input"
    return f"the output of `{_local(tensor, block)}`"


def _reader_text(graph, reader_id: str, reader, tensor: str) -> str:
    if reader.kind == "merge":
        role = graph.pred[reader_id].get(tensor, {}).get("role")
        if role == _SKIP and reader.op.inline is not None:
            return f"`merge {reader.op.name}` (`{reader.op.inline}`)"
        if role == _SKIP:
            return f"the identity shortcut of `merge {reader.op.name}`"
        return f"`merge {reader.op.name}`"
    where = _local(reader_id, reader.block)
    if reader.branch == "shortcut":
        return f"the shortcut (`{where}`)"
    return f"`{where}`"
