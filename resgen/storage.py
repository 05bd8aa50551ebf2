"""One forward pass of the generated model as tensor storages: which layer allocates memory,
which shares it, how long the generated forward() keeps it, and what autograd saves.

`walk` follows the lowered graph (resgen.graph) in its insertion order, which is the order the
generated forward() runs its layers in (main path, then shortcut, merge, post: templates/
block.py.jinja). Each node's output is a `Value` on a `Store` (one tensor storage): a new one, or
its input's when its op says the output is a view, the input itself, or the input overwritten in
place (`Op.storage`). In a training pass each op's `Op.saves` says which storages autograd keeps,
and under autocast (mixed precision) an op that autocast runs in lower precision reads a cast
copy of its input and of its weights.

How long the generated code holds a storage (the inference peak), from its variables:
  - every module call holds its argument until it returns: a stage's input (the network's `x`),
    an `nn.Sequential`'s (a `seq`, a shortcut), a block's input (its parameter `x`);
  - a block's `identity` (the shortcut's output) and `shortcut_input` live until it returns;
  - otherwise `out = self.layer(out)` drops a tensor when the layer after it returns;
  - the network input (the caller's) and output are held throughout; autocast keeps its weight
    copies until the autocast region ends, here the end of the forward pass.

`overwritten_saves` turns the same walk into the check of issue 13, item 8: an op that changes in
place a tensor that an earlier op saved for backward passes a forward pass and fails at
`loss.backward()` ("modified by an inplace operation"); it is reported at the in-place layer.
Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Literal, NamedTuple

from resgen import codes
from resgen.diagnostics import Diagnostic
from resgen.graph import INPUT, OUTPUT, Node, Source, module_and_call
from resgen.ops.base import Bundle, Device, Merge, Saved
from resgen.precision import DTYPE_BYTES, Precision, promote

StoreKind = Literal["input", "activation", "cast", "weight", "extra"]


class Store:
    """One tensor storage: `fixed + per_sample * batch` elements of `dtype`.

    kind      input (the network's), activation (a layer's output), cast (autocast's copy of an
              input), weight (autocast's low-precision copy of a parameter), extra (a tensor an
              op allocates for its backward pass: batch norm's statistics, max pool's indices)
    node      the node whose op allocates it; `at` its position in the forward pass
    saved_by  positions of the nodes that save it for backward (training pass)
    release   the last position at which the forward pass still holds it
    """

    __slots__ = ("kind", "node", "at", "dtype", "fixed", "per_sample", "saved_by", "release")

    def __init__(
        self, kind: StoreKind, node: str, at: int, dtype: str, fixed: int = 0, per_sample: int = 0
    ):
        self.kind, self.node, self.at, self.dtype = kind, node, at, dtype
        self.fixed, self.per_sample = fixed, per_sample
        self.saved_by: list[int] = []
        self.release = at

    def __repr__(self) -> str:
        return f"<store of {self.node} ({self.kind}): {self.fixed} + {self.per_sample}/sample>"

    def nbytes(self, batch: int) -> int:
        return (self.fixed + self.per_sample * batch) * DTYPE_BYTES[self.dtype]

    @property
    def affine(self) -> tuple[int, int]:
        """(bytes independent of the batch, bytes per sample)."""
        size = DTYPE_BYTES[self.dtype]
        return self.fixed * size, self.per_sample * size


class Value(NamedTuple):
    """A node's output: the storage it lives on, its dtype and whether it requires grad."""

    store: int
    dtype: str
    requires_grad: bool
    shape: tuple | None


@dataclass
class Pass:
    """One forward pass: nodes in order, their values, every storage, and (training) who saved
    what."""

    order: list[str]
    position: dict[str, int]
    values: dict[str, Value]
    stores: list[Store]
    training: bool
    inputs: Mapping[str, list[tuple[str, str]]]  # per node: (source node, edge role)
    storage: dict[str, str]  # per layer and merge: new, input or in-place (Op.storage)

    def saved(self) -> list[Store]:
        return [s for s in self.stores if s.saved_by]


def numel(shape) -> int:
    """Elements of a shape; of a bundle (a split's parts, a join's results item by item), of
    all its items."""
    if shape and isinstance(shape[0], tuple):
        return sum(prod(item) for item in shape)
    return prod(shape)


FLOAT32 = Precision()


def inputs_of(nodes, edges) -> dict[str, list[tuple[str, str]]]:
    """Each node's inputs as (source, role) pairs, from one pass over the lowering's
    (source, target, role) edges (resgen.graph.Lowering.edges, forward order)."""
    found: dict[str, list[tuple[str, str]]] = {node: [] for node in nodes}
    for source, target, role, *_ in edges:
        found[target].append((source, role))
    return found


def walk(
    nodes: Mapping[str, Node],
    inputs: Mapping[str, list[tuple[str, str]]],
    shapes: Mapping,
    *,
    precision: Precision = FLOAT32,
    training: bool = True,
    device: Device = "cuda",
    kept: Mapping[str, str] | None = None,
    held: Mapping[str, tuple[str, ...]] | None = None,
) -> Pass:
    """The storages of one forward pass over the analysed graph (`inputs`: `inputs_of`;
    `shapes`: resgen.shapes' ShapeResult per node). In a training pass (`training`) batch norm
    uses batch statistics, dropout is active and each op's saved tensors are recorded. `kept`
    maps a block instance to the node whose output its forward keeps as `shortcut_input` (see
    `kept_outputs`); `held` maps it to the nodes whose outputs it keeps in named locals
    (Lowering.held_locals). Nodes whose shapes are unknown (after an error) allocate nothing and
    save nothing."""
    walker = _Walker(nodes, inputs, shapes, precision, training, device, kept or {})
    walker.held = held or {}
    return walker.run()


def kept_outputs(
    nodes: Mapping[str, Node], block_types: Mapping[str, str], sources: Mapping[str, str]
) -> dict[str, str]:
    """For each block instance (`block_types`: instance path -> block type) of a type whose
    shortcut reads a main-path layer (`sources`: block type -> that layer's name), the node
    whose output the generated forward keeps in `shortcut_input` until it returns, whether or
    not this instance has its shortcut: the layer's node, or the last of a `seq` or a block."""
    targets = {f"{b}.{sources[t]}": b for b, t in block_types.items() if t in sources}
    kept: dict[str, str] = {}
    if not targets:
        return kept
    current, closed = None, set()
    for node_id in nodes:
        parts = node_id.split(".")
        match = None
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in targets:
                match = ".".join(parts[:i])
                break
        if current is not None and match != current:
            closed.add(current)
        current = match
        if match is not None and match not in closed:
            kept[targets[match]] = node_id
    return kept


class _OpPlan(NamedTuple):
    """What one op does on one input, worked out once per (op, arguments, shapes): blocks
    repeat, so most nodes reuse a plan."""

    storage: str
    saved: tuple[Saved, ...]  # training pass
    temporaries: tuple[Saved, ...]  # inference pass
    in_count: int
    out_count: int
    parameters: tuple  # parameter shapes (for autocast's copies)


class _Walker:
    def __init__(self, nodes, inputs, shapes, precision, training, device, kept):
        self.nodes, self.inputs, self.shapes, self.kept = nodes, inputs, shapes, kept
        self.precision, self.training, self.device = precision, training, device
        self.order = list(nodes)
        self.position = {n: i for i, n in enumerate(self.order)}
        self.values: dict[str, Value] = {}
        self.stores: list[Store] = []
        self.weight_copies: dict[str, list[int]] = {}  # module -> autocast's copies
        self.storage: dict[str, str] = {}
        self.plans: dict[tuple, _OpPlan] = {}
        self.held: Mapping[str, tuple[str, ...]] = {}

    def new(self, kind, node, at, dtype, count, batched=True) -> int:
        stores = self.stores
        if batched:
            stores.append(Store(kind, node, at, dtype, 0, count))
        else:
            stores.append(Store(kind, node, at, dtype, count, 0))
        return len(stores) - 1

    def plan(self, op, args, in_shape, out_shape, with_parameters: bool) -> _OpPlan:
        key = (op, id(args), in_shape, out_shape, with_parameters)
        found = self.plans.get(key)
        if found is None:
            training, device = self.training, self.device
            found = self.plans[key] = _OpPlan(
                op.storage(args, training),
                tuple(op.saves(args, in_shape, out_shape, device)) if training else (),
                () if training else tuple(op.temporaries(args, in_shape, out_shape, device)),
                numel(in_shape),
                numel(out_shape),
                tuple(op.parameters(args, in_shape)) if with_parameters else (),
            )
        return found

    def run(self, hold: bool = True) -> Pass:
        last = len(self.order) - 1
        nodes, shapes, inputs, values = self.nodes, self.shapes, self.inputs, self.values
        for at, node_id in enumerate(self.order):
            node = nodes[node_id]
            kind = node.kind
            if kind == INPUT:
                shape = shapes[node_id].out_shape
                dtype = self.precision.input_dtype
                store = self.new("input", node_id, at, dtype, prod(shape))
                self.stores[store].release = last  # the caller's tensor
                values[node_id] = Value(store, dtype, False, shape)
            elif kind == OUTPUT:
                value = values[inputs[node_id][0][0]]
                values[node_id] = value
                self.stores[value.store].release = last  # returned to the caller
            elif kind == "merge":
                self.merge(node, at)
            elif node.inputs is not None:
                self.join(node, at)
            else:
                self.layer(node, at)
        if hold:
            self.hold()
        return Pass(
            self.order,
            self.position,
            self.values,
            self.stores,
            self.training,
            self.inputs,
            self.storage,
        )

    # -- nodes
    def layer(self, node: Node, at: int) -> None:
        node_id = node.id
        x = self.values[self.inputs[node_id][0][0]]
        result = self.shapes[node_id]
        in_shape, out_shape = result.in_shape, result.out_shape
        op, args = node.op, node.args
        known = node.known and in_shape is not None and out_shape is not None
        # a module applied again (`max_out = mlp from max_pool`) counts its parameters once, at
        # its first application, but every application needs their gradient
        has_params = result.params > 0 or (
            node.module not in (None, node_id) and self.shapes[node.module].params > 0
        )
        incoming = x.dtype
        amp = self.precision.amp
        dtype = self.precision.compute_dtype(op.autocast, incoming) if amp else incoming
        cast = dtype != incoming
        plan = self.plan(op, args, in_shape, out_shape, amp) if known else None
        read = x.store
        if cast:  # autocast's copy of the input, freed when the op returns
            read = self.new("cast", node.id, at, dtype, plan.in_count if plan else 0)
        copies = self.autocast_copies(node, at, dtype, plan) if amp and plan else ()
        storage = (
            plan.storage if plan else (op.storage(args, self.training) if node.known else "new")
        )
        self.storage[node_id] = storage
        result_dtype = dtype
        if storage == "new":
            if op.promotes:  # a low-precision input times float32 state: the result promotes
                result_dtype = promote(dtype, self.precision.param_dtype)
            out = self.new("activation", node_id, at, result_dtype, plan.out_count if plan else 0)
        else:
            out = read
            if read == x.store:
                dtype = result_dtype = incoming
        requires_grad = x.requires_grad or has_params
        self.values[node_id] = Value(out, result_dtype, requires_grad, out_shape)
        if plan is None:
            return
        if self.training:
            if plan.saved:
                needs = (x.requires_grad, False, has_params)
                self.save(
                    node, at, plan.saved, needs, requires_grad, read, None, out, dtype, copies
                )
        else:
            for item in plan.temporaries:
                self.extra(node, at, item, dtype)

    def merge(self, node: Node, at: int) -> None:
        main = other = None
        for source, role in self.inputs[node.id]:
            if role == "main":
                main = self.values[source]
            else:
                other = self.values[source]
        result = self.shapes[node.id]
        in_shape, out_shape = result.in_shape, result.out_shape
        known = node.known and in_shape is not None and out_shape is not None
        plan = self.plan(node.op, node.args, in_shape, out_shape, False) if known else None
        storage = plan.storage if plan else node.op.storage(node.args, self.training)
        self.storage[node.id] = storage
        if storage == "new":
            dtype = promote(main.dtype, other.dtype)
            out = self.new("activation", node.id, at, dtype, plan.out_count if plan else 0)
        else:
            out, dtype = main.store, main.dtype
        requires_grad = main.requires_grad or other.requires_grad
        self.values[node.id] = Value(out, dtype, requires_grad, out_shape)
        if self.training and plan is not None:
            needs = (main.requires_grad, other.requires_grad, False)
            self.save(
                node, at, plan.saved, needs, requires_grad, main.store, other.store, out, dtype, ()
            )

    def join(self, node: Node, at: int) -> None:
        """A layer that reads several tensors (`concat from a, b`, `mul from x, gate`): a new
        result (a bundle's, item by item, counted as one store); a product saves each factor
        for the others' gradients."""
        sources = [self.values[source] for source, _ in self.inputs[node.id]]
        result = self.shapes[node.id]
        in_shape, out_shape = result.in_shape, result.out_shape
        known = node.known and in_shape is not None and out_shape is not None
        op, args = node.op, node.args
        if known:  # the op's facts read its inputs as written: a bundle as one Bundle
            x = [self._shape_of(record) for record in node.inputs]
            key = (op, id(args), tuple(x), out_shape, "join")
            plan = self.plans.get(key)
            if plan is None:
                plan = self.plans[key] = _OpPlan(
                    "new",
                    tuple(op.saves(args, x, out_shape, self.device)) if self.training else (),
                    () if self.training else tuple(op.temporaries(args, x, out_shape, self.device)),
                    numel(in_shape),
                    numel(out_shape),
                    (),
                )
        else:
            plan = None
        self.storage[node.id] = "new"
        dtype = sources[0].dtype
        for value in sources[1:]:
            dtype = promote(dtype, value.dtype)
        out = self.new("activation", node.id, at, dtype, plan.out_count if plan else 0)
        requires_grad = any(value.requires_grad for value in sources)
        self.values[node.id] = Value(out, dtype, requires_grad, out_shape)
        if plan is None:
            return
        if not self.training:
            for item in plan.temporaries:
                self.extra(node, at, item, dtype)
            return
        stores = self.stores
        for item in plan.saved:
            if item.tensor == "new":
                self.extra(node, at, item, dtype)
                continue
            if item.tensor == "output":
                saved = [out] if requires_grad else []
            else:  # a factor is saved when another factor needs its gradient
                saved = [
                    value.store
                    for k, value in enumerate(sources)
                    if any(other.requires_grad for j, other in enumerate(sources) if j != k)
                ]
            for store in saved:
                if at not in stores[store].saved_by:
                    stores[store].saved_by.append(at)

    def _shape_of(self, record):
        """The shape a join's input record carries: one tensor (an item of a bundle), or a
        bundle's items as a Bundle."""
        if isinstance(record, Source):
            shape = self.shapes[record.node].out_shape
            return shape[record.item] if record.item is not None else shape
        return Bundle(self._shape_of(source) for source in record)

    def autocast_copies(self, node: Node, at: int, dtype: str, plan: _OpPlan) -> tuple:
        """autocast's low-precision copies of the parameters of an op it runs in lower
        precision: cached per parameter for the autocast region, so a module has one set."""
        if self.precision.param_dtype == dtype or node.op.autocast is None:
            return ()
        module = node.module or node.id
        if module not in self.weight_copies:
            self.weight_copies[module] = [
                self.new("weight", node.id, at, dtype, prod(shape), batched=False)
                for shape in plan.parameters
            ]
            for store in self.weight_copies[module]:
                self.stores[store].release = len(self.order) - 1
        return tuple(zip(plan.parameters, self.weight_copies[module], strict=True))

    def save(self, node, at, saved, needs, records, read, other, out, dtype, copies) -> None:
        """Record what the op saves. `needs`: whether its input, other input and parameters
        require grad; `records`: it records a backward at all. Its "new" tensors are allocated
        whether or not they are saved."""
        unused = list(copies)
        stores = self.stores
        for item in saved:
            tensor = item.tensor
            is_needed = records and needed(item.needed_by, *needs)
            if tensor == "new":
                store = self.extra(node, at, item, dtype)
            elif not is_needed:
                continue
            elif tensor == "input":
                store = read
            elif tensor == "output":
                store = out
            elif tensor == "other":
                store = other
            else:  # a parameter: only autocast's copy of it is activation memory
                match = next((c for c in unused if tuple(c[0]) == tuple(item.shape)), None)
                if match is None:
                    continue
                unused.remove(match)
                store = match[1]
            if is_needed and store is not None and at not in stores[store].saved_by:
                stores[store].saved_by.append(at)

    def extra(self, node: Node, at: int, item: Saved, dtype: str) -> int:
        """A tensor the op allocates besides its output (freed when it returns unless saved)."""
        kind = item.dtype
        if kind == "activation":
            kind = dtype
        elif kind == "param":
            kind = self.precision.param_dtype
        return self.new("extra", node.id, at, kind, prod(item.shape), item.batched)

    # -- how long the generated forward() holds each value
    def hold(self) -> None:
        order, nodes = self.order, self.nodes
        # Each module call (a stage, a block, a seq or shortcut nn.Sequential: every proper
        # prefix of a module path) from its first node to its last.
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for i, node_id in enumerate(order):
            node = nodes[node_id]
            if node.kind in (INPUT, OUTPUT):
                continue
            parent = (node.module or node_id).rpartition(".")[0]
            if parent:
                if parent not in first:
                    first[parent] = i
                last[parent] = i
        for container in list(first):
            start, end = first[container], last[container]
            outer = container.rpartition(".")[0]
            while outer:
                if outer not in first or first[outer] > start:
                    first[outer] = start
                if last.get(outer, -1) < end:
                    last[outer] = end
                outer = outer.rpartition(".")[0]
        held: dict[str, int] = {}

        def keep(value_node: str, until: int) -> None:
            if held.get(value_node, -1) < until:
                held[value_node] = until

        inputs = self.inputs
        for container, start in first.items():  # a call holds its argument until it returns
            for source, _ in inputs[order[start]]:
                keep(source, last[container])
        for at, node_id in enumerate(order):
            node = nodes[node_id]
            for source, role in inputs[node_id]:
                keep(source, at)  # a node's input is read while it runs
                if node.kind == "merge" and role != "main" and node.block in last:
                    keep(source, last[node.block])  # `identity` lives until the block returns
        for block, node_id in self.kept.items():  # and `shortcut_input`
            if block in last:
                keep(node_id, last[block])
        for block, node_ids in self.held.items():  # and the locals a `from` reads
            if block in last:
                for node_id in node_ids:
                    keep(node_id, last[block])
        stores, values = self.stores, self.values
        for value_node, until in held.items():
            store = stores[values[value_node].store]
            if store.release < until:
                store.release = until


# ---------------------------------------------------------------------------------------------
# The in-place check (issue 13, item 8)


def overwritten_saves(nodes: Mapping[str, Node], edges, shapes) -> list[Diagnostic]:
    """An error at each op that overwrites in place a tensor an earlier op saved for backward:
    the generated model runs forward, and `loss.backward()` fails with "one of the variables
    needed for gradient computation has been modified by an inplace operation".

    The walk of a training pass reduced to what the check needs (it runs in every `analyse`):
    which storage each value lives on (named by the node that allocates it), whether it requires
    grad, and the last op that saved each storage."""
    inputs = inputs_of(nodes, edges)
    value: dict[str, tuple[str, bool]] = {}  # node -> (its storage, requires grad)
    saver: dict[str, tuple[str, str]] = {}  # storage -> (node that saved it, as what)
    plans: dict[object, tuple[str, tuple, bool]] = {}
    found: list[Diagnostic] = []
    reported: set = set()
    for node_id, node in nodes.items():
        sources = inputs[node_id]
        if not sources:  # the network input
            value[node_id] = (node_id, False)
            continue
        if node.kind == OUTPUT:
            continue
        main = sources[0][0]
        main_store, main_grad = value[main]
        other_store, other_grad = None, False
        if len(sources) > 1:  # a merge: its main path and its shortcut (or the block input)
            other = sources[1][0]
            if sources[0][1] != "main":
                main, other = other, main
                main_store, main_grad = value[main]
            other_store, other_grad = value[other]
        # One plan per argument set (block instances share them): where the output lives, which
        # of its values the op saves, whether it has parameters. The roles do not depend on the
        # shapes, so a node whose shapes an error left unknown uses its siblings' plan.
        args = node.args
        key = id(args) if args else node.op  # a merge's arguments: a new empty dict per node
        plan = plans.get(key)
        if plan is None:
            result = shapes[node_id]
            in_shape, out_shape = result.in_shape, result.out_shape
            if in_shape is None or out_shape is None or not node.known:
                value[node_id] = (node_id, main_grad or other_grad or result.params > 0)
                continue  # after an error: nothing more to say
            op = node.op
            saved = op.saves(args, in_shape, out_shape, "cuda")
            plan = plans[key] = (
                op.storage(args, True),
                tuple((s.tensor, s.needed_by) for s in saved if s.tensor in _ALIASED),
                result.params > 0,
            )
        storage, roles, has_params = plan
        records = main_grad or other_grad or has_params
        if storage == "new":
            out = node_id
        else:
            out = main_store
            if storage == "in-place" and main_store in saver:
                saver_id, role = saver.pop(main_store)
                where = (node.span, nodes[saver_id].span)
                if where not in reported:  # a block definition's mistake repeats per instance
                    reported.add(where)
                    found.append(_conflict(node, nodes[saver_id], role))
        value[node_id] = (out, records)
        if records:
            for tensor, needed_by in roles:
                if needed_by is None or needed(needed_by, main_grad, other_grad, has_params):
                    if tensor == "input":
                        saver[main_store] = (node_id, tensor)
                    elif tensor == "output":
                        saver[out] = (node_id, tensor)
                    else:
                        saver[other_store] = (node_id, tensor)
    return found


_ALIASED = ("input", "other", "output")  # the saved tensors that are a node's values


def needed(needed_by: str | None, input_grad: bool, other_grad: bool, parameters: bool) -> bool:
    """Whether torch saves a tensor whose `Saved.needed_by` is `needed_by`, given which of the
    op's inputs require grad and whether it has parameters."""
    if needed_by is None:
        return True
    if needed_by == "input":
        return input_grad
    if needed_by == "other":
        return other_grad
    return parameters


_ROLES = {"input": "its input", "other": "its second input", "output": "its output"}


def _conflict(node: Node, saver: Node, role: str) -> Diagnostic:
    if isinstance(node.op, Merge):
        doing = f"`{node.op.statement}` (merge {node.op.name}) overwrites the main path's output"
        hint = (
            "end the main path with a layer that does not keep its output for backward "
            "(a convolution or a batch norm), or apply the activation in `post`"
        )
    else:
        doing = f"`{_short(node)}` ({node.label()}) overwrites its input in place"
        hint = (
            f"write `{_short(node)}` out of place (inplace=false)"
            if node.op.param("inplace") is not None
            else f"make `{_short(node)}` an op that does not work in place"
        )
    message = (
        f"{doing}, but `{saver.module or saver.id}` ({saver.label()}) saved it, as "
        f"{_ROLES.get(role, 'a tensor')}, for its backward pass: the forward pass runs, and "
        'training fails at loss.backward() ("modified by an inplace operation")'
    )
    return Diagnostic(
        node.span,
        codes.OVERWRITES_SAVED,
        message,
        "error",
        node.block if isinstance(node.op, Merge) else node.id,
        hint,
        node=node.id,
    )


def _short(node: Node) -> str:
    path, _ = module_and_call(node.module or node.id)
    return path.rsplit(".", 1)[-1]
