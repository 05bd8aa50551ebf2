"""The forward pass the graph describes, run in torch with the generated model's own modules:
the semantics generated code must honour, which `resgen verify` compares it with.

Every layer node applies its module to a copy of its input, so no layer can change a tensor
another path reads (each path of a block reads the block input as it entered; resgen.aliasing),
and each merge computes its op's `apply` out of place. The model's own forward is observed with
hooks (each module's outputs, copied when produced) and compared node by node, so a difference
is reported where it starts. Imports torch: only verify uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from resgen.graph import INPUT, OUTPUT, module_and_call


@dataclass(frozen=True)
class Mismatch:
    """Where the model's forward first differs from the graph's: a node (a layer, or the output
    of a block instance when only that is observed) and the largest absolute difference."""

    node: str
    difference: float


def first_mismatch(net, analysis, x) -> Mismatch | None:
    """Run `net` (in eval mode) and the graph's forward on input `x` (N x C x H x W) and return
    the first node, in forward order, whose values differ beyond float tolerance, or None."""
    import torch

    observed: dict[str, list] = {}

    def record(name):
        def hook(_module, _args, output):
            if isinstance(output, torch.Tensor):
                observed.setdefault(name, []).append(output.detach().clone())

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in net.named_modules() if n]
    try:
        with torch.no_grad():
            output = net(x.clone())
    finally:
        for handle in handles:
            handle.remove()
    nodes, pred = analysis.nodes, analysis.graph.pred
    ends = _block_ends(nodes, analysis.block_types)
    values = {}
    with torch.no_grad():
        for node_id, node in nodes.items():
            if node.kind == INPUT:
                value = x.clone()
            elif node.kind == OUTPUT:
                value = values[next(iter(pred[node_id]))]
            elif node.kind == "merge":
                inputs = {e["role"]: values[p] for p, e in pred[node_id].items()}
                main = inputs.pop("main")
                value = node.op.apply(main, next(iter(inputs.values())))
            elif _owned(node):  # layer scale: the enclosing module's parameter, no module
                value = _apply_owned(net, node, values[next(iter(pred[node_id]))].clone())
            else:
                module = net.get_submodule(node.module)
                value = module(values[next(iter(pred[node_id]))].clone())
            values[node_id] = value
            seen = []
            if node.kind == "layer" and not _owned(node):
                module, call = module_and_call(node_id)
                seen.append((node_id, _nth(observed, module, call)))
            for block in ends.get(node_id, ()):
                seen.append((block, _nth(observed, block, 1)))
            if node.kind == OUTPUT:
                seen.append((OUTPUT, output))
            for where, actual in seen:
                difference = _difference(actual, value)
                if difference is not None:
                    return Mismatch(where, difference)
    return None


def _owned(node) -> bool:
    emit = node.op.emit if node.op is not None else None
    return emit is not None and emit.owned is not None


def _apply_owned(net, node, x):
    """The op's own `apply` line (the code the generated forward runs, e.g. `{x} *
    {self}.reshape(1, -1, 1, 1)`) on the parameter it owns."""
    code = node.op.emit.apply.format(x="x", self="parameter")
    parameter = net.get_parameter(node.module)
    return eval(code, {"__builtins__": {}}, {"x": x, "parameter": parameter})  # noqa: S307


def _block_ends(nodes, block_types) -> dict[str, list[str]]:
    """node -> the block instances whose output it is (their last node in forward order)."""
    last = {}
    for node_id, node in nodes.items():
        if node.block is None:
            continue
        parts = node.block.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix in block_types:
                last[prefix] = node_id
    ends: dict[str, list[str]] = {}
    for block, node_id in last.items():
        ends.setdefault(node_id, []).append(block)
    return ends


def _nth(observed, module: str, call: int):
    outputs = observed.get(module, [])
    return outputs[call - 1] if call <= len(outputs) else None


def _difference(actual, expected) -> float | None:
    """The largest absolute difference when it is beyond float tolerance, else None."""
    import torch

    if actual is None or tuple(actual.shape) != tuple(expected.shape):
        return None  # shapes are verify's other comparison
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
        return None
    return float((actual - expected).abs().max())
