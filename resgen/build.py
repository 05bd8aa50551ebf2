"""`resgen build` and `resgen verify`, and the Python API behind them.

build:  spec -> analysis (validation) -> generated source (and stages diagram) in memory; the
        command line writes DIR/<spec stem>.py/.dot/.svg through resgen.output, all or nothing
        and only over files resgen generated itself (or with --force).
verify: the generated model in torch, run once, compared layer by layer with the shape engine's
        prediction (output shapes, parameter count, network output).
torch is imported only by the functions that run a model.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resgen import codegen
from resgen import spec as S
from resgen.diagnostics import SpecError
from resgen.graph import OUTPUT, module_and_call
from resgen.resolve import Loader
from resgen.text import shape_text

# ---------------------------------------------------------------------------------------------
# API


def load(path: str | os.PathLike) -> S.Spec:
    """The resolved spec of an .arch file. Raises SpecError (located) or UsageError."""
    return Loader().load(path)


def analyse(spec: S.Spec, input_shape: tuple[int | None, int, int] | None = None):
    """The shape engine's Analysis of `spec` (resgen.shapes)."""
    from resgen.shapes import analyse as shape_analysis

    return shape_analysis(spec, input_shape)


def generate(
    spec: S.Spec | str | os.PathLike, analysis=None, *, templates: str | os.PathLike | None = None
) -> str:
    """The generated PyTorch module for a spec (or the path of one) as source text."""
    if not isinstance(spec, S.Spec):
        spec = load(spec)
    return codegen.generate(spec, analysis, templates=templates)


def build_module(spec_or_path: S.Spec | str | os.PathLike, **overrides):
    """An nn.Module of the spec's network: the generated source, executed in a fresh module,
    with the factory called with `overrides` (e.g. num_classes=10).

    The source is registered with `linecache`, so `inspect.getsource` and `torch.jit.script`
    work on the result as on an imported file.
    """
    spec = spec_or_path if isinstance(spec_or_path, S.Spec) else load(spec_or_path)
    module = import_source(generate(spec), spec.network.name)
    return getattr(module, spec.network.name)(**overrides)


def import_source(source: str, name: str) -> types.ModuleType:
    """Execute generated source as a module of its own (named after a hash of the text)."""
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:12]
    module_name = f"resgen_generated_{name}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    filename = f"<resgen generated {name} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    sys.modules[module_name] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)  # checked by codegen
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


# ---------------------------------------------------------------------------------------------
# resgen build


def checked(loader: Loader, path: str, input_shape=None):
    """The spec and its analysis; SpecError when the spec has any error."""
    spec = loader.load(path)
    analysis = analyse(spec, input_shape)
    if not analysis.ok:
        raise SpecError(analysis.diagnostics)
    return spec, analysis


def build_files(
    spec: S.Spec,
    analysis,
    out_dir: Path,
    stem: str,
    *,
    templates: str | os.PathLike | None = None,
    diagrams: bool = True,
) -> list[tuple[Path, bytes]]:
    """What `resgen build` writes for one checked spec, in memory: DIR/<stem>.py, then (with
    `diagrams`) the stages diagram DIR/<stem>.dot and, when Graphviz draws it, DIR/<stem>.svg.
    Raises SpecError (a user's templates produced code outside the allow-list) or UsageError
    (the templates are broken)."""
    from resgen import diagram

    source = codegen.generate(spec, analysis, templates=templates)
    files = [(out_dir / f"{stem}.py", source.encode("utf-8"))]
    if diagrams:
        files += diagram.build_diagram_files(spec, analysis, out_dir, stem)
    return files


def duplicate_stems(paths: Sequence[str]) -> str | None:
    """Two specs that would write the same DIR/<stem>.py, named; None when there are none.
    Stems that differ only in case collide too: on macOS and Windows they are one file."""
    seen: dict[str, str] = {}
    for path in paths:
        key = Path(path).stem.casefold()
        first = seen.setdefault(key, path)
        if first != path and os.path.realpath(first) != os.path.realpath(path):
            return (
                f"{first} and {path} would both write {Path(path).stem}.py (and its diagrams); "
                f"build them into different -o directories"
            )
    return None


def output_dir_problem(out_dir: Path) -> str | None:
    """Why `-o DIR` cannot receive files, checked before anything is generated."""
    for parent in (out_dir, *out_dir.parents):
        if os.path.lexists(parent):
            if not parent.is_dir():
                return f"-o {out_dir}: {parent} exists and is not a directory"
            return None
    return None


# ---------------------------------------------------------------------------------------------
# resgen verify


@dataclass
class Difference:
    where: str
    predicted: str
    actual: str

    def __str__(self) -> str:
        return f"{self.where}: predicted {self.predicted}, torch gives {self.actual}"


def verify(spec: S.Spec, analysis) -> tuple[list[Difference], int]:
    """Run the generated model once at the analysed input size and compare it with `analysis`.
    Returns the differences and how many layer outputs were compared."""
    import torch

    model = import_source(codegen.generate(spec, analysis), spec.network.name)
    net = getattr(model, spec.network.name)()
    net.eval()
    outputs: dict[str, list[tuple[int, ...]]] = {}
    inputs: dict[str, list[tuple[int, ...]]] = {}

    def record(name: str):
        def pre_hook(_module, args):
            if args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(name, []).append(tuple(args[0].shape[1:]))

        def hook(_module, _args, output):
            if isinstance(output, torch.Tensor):
                outputs.setdefault(name, []).append(tuple(output.shape[1:]))

        return pre_hook, hook

    handles = []
    for name, module in net.named_modules():
        if name:
            pre_hook, hook = record(name)
            handles += [
                module.register_forward_pre_hook(pre_hook),
                module.register_forward_hook(hook),
            ]
    try:
        with torch.no_grad():
            output = net(torch.zeros(1, *analysis.input))
    except RuntimeError as err:  # the prediction said this runs: that is the difference
        return [Difference("forward pass", "success", f"an error: {err}")], 0
    finally:
        for h in handles:
            h.remove()

    differences: list[Difference] = []
    compared = 0
    for layer in analysis.layers:
        node = analysis.nodes[layer.name]
        # A merge, or an op whose parameter is the block's own (layer scale), is no module:
        # torch shows its result as what the next module receives.
        inline = node.kind == "merge" or node.op.emit is not None and node.op.emit.owned
        actual = _observed(layer.name, inline, analysis, inputs, outputs)
        if actual is None:
            if inline:
                continue  # feeding something no hook sees
            differences.append(Difference(layer.name, _shape(layer.out), "no such layer output"))
        elif tuple(layer.out) != actual:
            differences.append(Difference(layer.name, _shape(layer.out), _shape(actual)))
        else:
            compared += 1
    for what, predicted, actual in (
        ("parameters", analysis.params, sum(p.numel() for p in net.parameters())),
        ("buffers", analysis.buffers, sum(b.numel() for b in net.buffers())),
    ):
        if predicted != actual:
            differences.append(Difference(what, f"{predicted:,}", f"{actual:,}"))
    if analysis.output is None or tuple(analysis.output) != tuple(output.shape[1:]):
        differences.append(
            Difference("output", _shape(analysis.output), _shape(tuple(output.shape[1:])))
        )
    return differences, compared


def _observed(name: str, inline: bool, analysis, inputs, outputs) -> tuple[int, ...] | None:
    """The shape torch produced for a predicted layer output. A merge (`layer1.0.add`) or a
    layer scale is not a module: it is seen as the input of the layer after it, or as its
    block's output."""
    if not inline:
        return _nth(outputs, name)
    block = analysis.nodes[name].block
    for successor in analysis.graph.successors(name):
        if analysis.nodes[successor].block == block and successor != OUTPUT:
            return _nth(inputs, successor)
    return _nth(outputs, block) if block else None


def _nth(seen: dict[str, list[tuple[int, ...]]], node: str) -> tuple[int, ...] | None:
    module, call = module_and_call(node)
    shapes = seen.get(module, [])
    return shapes[call - 1] if call <= len(shapes) else None


def _shape(shape: Sequence[int] | None) -> str:
    return shape_text(shape, unknown="none")


__all__ = [
    "analyse",
    "checked",
    "build_module",
    "generate",
    "import_source",
    "load",
    "verify",
    "build_files",
]
