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
import math
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resgen import codegen
from resgen import spec as S
from resgen.diagnostics import Span, SpecError, UsageError
from resgen.graph import OUTPUT, module_and_call
from resgen.resolve import Loader
from resgen.text import bytes_text, shape_text

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
    span: Span | None = None  # the spec line it belongs to, when known

    def __str__(self) -> str:
        at = f"{self.span}: " if self.span is not None else ""
        return f"{at}{self.where}: predicted {self.predicted}, torch gives {self.actual}"


class MemoryBudget(UsageError):
    """verify would need more memory than it may use (exit code 2): said with the numbers."""


def memory_estimate(analysis) -> int:
    """A rough upper bound, in bytes, of the memory `verify` needs for a model: float32
    parameters and buffers, plus the input and every layer's output at batch 1, as if no
    activation were ever freed (a no-grad forward keeps far fewer at once). Static: computed from
    the analysis before torch allocates anything. Issue 18's exact memory figures replace it."""
    elements = analysis.params + analysis.buffers + math.prod(analysis.input)
    elements += sum(math.prod(layer.out) for layer in analysis.layers if layer.out)
    return 4 * elements


MEMORY_FRACTION = 0.5  # of the memory available when verify starts


def default_memory_limit() -> int | None:
    """Half the memory available now (Linux: MemAvailable of /proc/meminfo; elsewhere the free
    physical pages), or None when the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * MEMORY_FRACTION)
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * MEMORY_FRACTION)
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(analysis, limit: float | None) -> None:
    needed = memory_estimate(analysis)
    if limit is not None and needed > limit:
        raise MemoryBudget(
            f"verify would need about {bytes_text(needed)} ({analysis.params:,} parameters, "
            f"{analysis.buffers:,} buffer elements and every activation at batch 1, as float32), "
            f"over its limit of {bytes_text(int(limit))}; pass --max-memory SIZE to change it"
        )


def verify(
    spec: S.Spec, analysis, *, max_memory: float | None = None
) -> tuple[list[Difference], int]:
    """Run the generated model at the analysed input size and compare it with `analysis`: every
    layer's output shape, the counts, and the values of the graph's own forward pass, in which
    each path reads its input unchanged (resgen.reference). The input is seeded noise: zeros
    would hide an in-place ReLU. Returns the differences and how many layer outputs were
    compared.

    Before torch allocates anything, `memory_estimate` is compared with `max_memory` (bytes;
    None: half the available memory; math.inf: no limit) and MemoryBudget is raised above it.
    Any exception while the module is imported, constructed or run is a Difference located at
    the spec line of the network (import, construction) or of the layer that raised (forward),
    never a traceback."""
    _check_memory(analysis, default_memory_limit() if max_memory is None else max_memory)
    import torch

    from resgen.reference import first_mismatch

    x = torch.randn(1, *analysis.input, generator=torch.Generator().manual_seed(0))
    network_span = spec.network.span
    try:
        model = import_source(codegen.generate(spec, analysis), spec.network.name)
    except SpecError:
        raise
    except Exception as err:  # generated code that does not import is a finding, not a crash
        return [Difference("import", "success", _raised(err), network_span)], 0
    try:
        net = getattr(model, spec.network.name)()
        net.eval()
    except Exception as err:
        return [Difference("construction", "success", _raised(err), network_span)], 0
    outputs: dict[str, list[tuple[int, ...]]] = {}
    inputs: dict[str, list[tuple[int, ...]]] = {}
    running: list[str] = []  # modules whose forward has started and not finished

    def record(name: str):
        def pre_hook(_module, args):
            running.append(name)
            if args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(name, []).append(tuple(args[0].shape[1:]))

        def hook(_module, _args, output):
            running.pop()
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
            output = net(x.clone())
    except Exception as err:  # the prediction said this runs: that is the difference
        where = running[-1] if running else "forward pass"
        span = _span_of(where, analysis) or network_span
        return [Difference(where, "success", _raised(err), span)], 0
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
        span = node.span
        if actual is None:
            if inline:
                continue  # feeding something no hook sees
            differences.append(
                Difference(layer.name, _shape(layer.out), "no such layer output", span)
            )
        elif tuple(layer.out) != actual:
            differences.append(Difference(layer.name, _shape(layer.out), _shape(actual), span))
        else:
            compared += 1
    for what, predicted, actual in (
        ("parameters", analysis.params, sum(p.numel() for p in net.parameters())),
        ("buffers", analysis.buffers, sum(b.numel() for b in net.buffers())),
    ):
        if predicted != actual:
            differences.append(Difference(what, f"{predicted:,}", f"{actual:,}", network_span))
    if analysis.output is None or tuple(analysis.output) != tuple(output.shape[1:]):
        differences.append(
            Difference(
                "output",
                _shape(analysis.output),
                _shape(tuple(output.shape[1:])),
                network_span,
            )
        )
    mismatch = None if differences else first_mismatch(net, analysis, x)
    if mismatch is not None:
        differences.append(
            Difference(
                f"{mismatch.node} values",
                "the graph's forward, where each path reads its input unchanged",
                f"values up to {mismatch.difference:.3g} away",
                network_span,
            )
        )
    return differences, compared


def _raised(err: BaseException) -> str:
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0] if first else ''}".rstrip(": ")


def _span_of(module: str, analysis) -> Span | None:
    """The spec line of a module path: its layer's node, or the first layer inside it."""
    node = analysis.nodes.get(module)
    if node is not None:
        return node.span
    for node in analysis.nodes.values():  # a block instance: the first layer inside it
        block = node.block or ""
        if node.module == module or block == module or block.startswith(module + "."):
            return node.span
    return None


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
    "memory_estimate",
    "verify",
    "build_files",
]
