"""Torch as the oracle: for random specs, the static prediction is what torch does.

A spec resgen accepts must build and run in torch with every layer's output shape, the parameter
and buffer counts and the network output exactly as `Analysis` predicts (layers matched to
modules by dotted path through forward hooks; `name#2` is the second call of module `name`).
A spec resgen rejects for a shape reason must make torch fail too, and at a layer resgen flagged.

Budget: seeded (derandomized) and small by default; `RESGEN_FUZZ_EXAMPLES=2000 python3 -m pytest
tests/test_oracle.py` runs a longer search.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strategies import examples, invalid_specs, valid_specs  # noqa: E402

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from resgen import codegen  # noqa: E402
from resgen.build import import_source  # noqa: E402
from resgen.diagnostics import SpecError  # noqa: E402
from resgen.resolve import Loader  # noqa: E402
from resgen.shapes import analyse  # noqa: E402

# Diagnostic codes that mean "torch would fail on this tensor shape".
SHAPE_CODES = frozenset(
    {
        "too-small",
        "merge-mismatch",
        "groups",
        "padding-too-large",
        "in-features",
        "channels",
        "not-spatial",
        "not-flat",
        "indivisible-size",
    }
)
# `batchnorm(64)` and `linear(10, in_features=512)` declare what they expect; the generated code
# builds from the actual input, so torch runs what resgen refuses as self-contradictory.
DECLARED = frozenset({"in-features", "channels"})
MERGES = ("add", "mul")
_CALL = re.compile(r"^(.*)#(\d+)$")

ORACLE = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oracle") / "net.arch"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    yield
    torch.set_num_threads(previous)


def _analyse(path: Path, text: str):
    path.write_text(text)
    spec = Loader().load(path)
    return spec, analyse(spec)


class _Trace:
    """Per module: input and output shapes of each call, and the modules active on a failure."""

    def __init__(self, net):
        self.inputs: dict[str, list[tuple]] = {}
        self.outputs: dict[str, list[tuple]] = {}
        self.active: list[str] = []
        self.handles = []
        for name, module in net.named_modules():
            if name:
                self.handles += [
                    module.register_forward_pre_hook(self._pre(name)),
                    module.register_forward_hook(self._post(name)),
                ]

    def _pre(self, name):
        def hook(_module, args):
            self.active.append(name)
            self.inputs.setdefault(name, []).append(tuple(args[0].shape[1:]))

        return hook

    def _post(self, name):
        def hook(_module, _args, output):
            self.active.pop()
            self.outputs.setdefault(name, []).append(tuple(output.shape[1:]))

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _nth(seen: dict[str, list[tuple]], node: str) -> tuple | None:
    match = _CALL.match(node)
    module, call = (match.group(1), int(match.group(2))) if match else (node, 1)
    shapes = seen.get(module, [])
    return shapes[call - 1] if call <= len(shapes) else None


def _merge_observed(analysis, node: str, trace: _Trace, output: tuple) -> tuple | None:
    """A merge is no module: its result is the input of the module after it, or the output of
    the block it ends (or of the network)."""
    for successor in analysis.graph.successors(node):
        kind = analysis.nodes[successor].kind
        if kind == "output":
            return output
        if kind != "merge":
            return _nth(trace.inputs, successor)
    block = analysis.nodes[node].block
    return _nth(trace.outputs, block) if block else None


def _function_observed(analysis, node: str, trace: _Trace, output: tuple):
    """A tensor function (split, concat, add, mul, channel_mean/max) is no module: what torch
    gave it is the input of a module that reads it (an item of a split's bundle, by the edge),
    or the network's output. (torch's shape, the predicted one); None when only other
    functions read it (their own readers check the shapes that follow)."""
    out = analysis.shapes[node].out_shape
    for successor in analysis.graph.successors(node):
        record = analysis.nodes[successor]
        item = analysis.graph.edges[node, successor].get("item")
        predicted = tuple(out[item]) if item is not None else tuple(out)
        if record.kind == "output":
            return output, predicted
        if record.kind == "merge" or record.inputs is not None or record.op.functional:
            continue
        return _nth(trace.inputs, successor), predicted
    return None


def _module_of(analysis, node: str) -> str:
    record = analysis.nodes[node]
    if record.kind == "merge":
        return record.block
    return record.module or _CALL.sub(r"\1", node)


def _build(spec, analysis):
    source = codegen.generate(spec, analysis)
    module = import_source(source, spec.network.name)
    return getattr(module, spec.network.name)().eval()


def check_agreement(path: Path, text: str) -> bool:
    """Assert that resgen and torch agree on `text`; True when resgen accepted it."""
    spec, analysis = _analyse(path, text)
    errors = analysis.errors
    assert {d.code for d in errors} <= SHAPE_CODES, [d.message for d in errors]
    if analysis.ok:
        _agrees_when_accepted(spec, analysis, text)
        return True
    _agrees_when_rejected(spec, analysis, text)
    return False


def _agrees_when_accepted(spec, analysis, text: str) -> None:
    net = _build(spec, analysis)
    trace = _Trace(net)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            output = tuple(net(torch.randn(1, *analysis.input)).shape[1:])
    finally:
        trace.remove()
    where = f"\n--- spec ---\n{text}"
    assert output == tuple(analysis.output), f"network output{where}"
    # MACs: the multiply-accumulates of every convolution and matrix product torch runs.
    assert 2 * analysis.macs == flops.get_total_flops(), where
    for layer in analysis.layers:
        node = analysis.nodes[layer.name]
        if node.op is not None and node.op.functional:  # torch.cat, a + b: no module to hook
            observed = _function_observed(analysis, layer.name, trace, output)
            if observed is not None:
                assert observed[0] == observed[1], f"{layer.name}: {observed}{where}"
            continue
        if layer.op in MERGES:
            seen = _merge_observed(analysis, layer.name, trace, output)
        else:
            seen = _nth(trace.outputs, layer.name)
            assert _nth(trace.inputs, layer.name) == tuple(layer.in_shape), layer.name + where
        assert seen == tuple(layer.out), f"{layer.name}: predicted {layer.out}, torch {seen}{where}"
    predicted_modules = {
        _module_of(analysis, layer.name)
        for layer in analysis.layers
        if layer.op not in MERGES and not analysis.nodes[layer.name].op.functional
    }
    leaves = {
        _owner(name, predicted_modules)
        for name, m in net.named_modules()
        if name and not list(m.children())
    }
    assert predicted_modules == leaves, where
    assert analysis.params == sum(p.numel() for p in net.parameters()), where
    assert analysis.buffers == sum(b.numel() for b in net.buffers()), where


def _owner(name: str, layers: set[str]) -> str:
    """The layer a module belongs to: itself, or the op whose helper class holds it as a child
    (EcaModule's `conv`)."""
    parts = name.split(".")
    return next(
        (prefix for n in range(1, len(parts)) if (prefix := ".".join(parts[:n])) in layers), name
    )


def _buildable(spec, analysis):
    """An analysis codegen accepts for a rejected spec, to build the model torch should refuse.
    Codegen reads shapes (a flatten's size) that stop at the first error, so a spec rejected for
    its input size is generated as analysed at a size it takes; the code does not depend on it
    (the head pools adaptively)."""
    for candidate in (analysis, analyse(spec, (None, 64, 64)), analyse(spec, (None, 256, 256))):
        forced = dataclasses.replace(candidate, ok=True, diagnostics=candidate.warnings)
        try:
            codegen.generate(spec, forced)
        except SpecError:
            continue
        return forced
    pytest.fail("no input size makes the rejected spec buildable")


def _agrees_when_rejected(spec, analysis, text: str) -> None:
    """Torch must fail too: in the constructor (groups), or in forward at a flagged layer."""
    flagged = {_module_of(analysis, n) for n, result in analysis.shapes.items() if result.error}
    codes = {d.code for d in analysis.errors}
    if codes <= DECLARED:
        return
    where = f"\nresgen: {[d.message for d in analysis.errors]}\n--- spec ---\n{text}"
    try:
        net = _build(spec, _buildable(spec, analysis))
    except ValueError as err:  # torch.nn refuses the module itself
        assert "groups" in codes and "groups" in str(err), f"{err}{where}"
        return
    trace = _Trace(net)
    try:
        with torch.no_grad():
            net(torch.randn(1, *analysis.input))
    except RuntimeError as err:
        failed = trace.active[-1] if trace.active else None
        assert failed in flagged, (
            f"torch failed in {failed} ({err}), resgen flagged {flagged}" + where
        )
    else:
        pytest.fail(f"resgen rejected a spec that torch runs{where}")
    finally:
        trace.remove()


@settings(ORACLE, max_examples=examples(150))
@given(text=valid_specs())
def test_accepted_specs_match_torch(spec_file, text):
    assert check_agreement(spec_file, text), "a spec valid by construction was rejected"


@settings(ORACLE, max_examples=examples(120))
@given(case=invalid_specs())
def test_rejected_specs_fail_in_torch(spec_file, case):
    text, mistake = case
    accepted = check_agreement(spec_file, text)
    event(f"{mistake}: {'accepted' if accepted else 'rejected'}")
    # Every mistake the strategy makes is a certain shape error except a too-small input, which
    # may still fit, and a mismatch that a merge `mul` broadcasts (a size of 1).
    assert not accepted or mistake in ("too-small", "channels", "spatial")


# Found by the oracle: `linear` after `flatten` of a 4x2x1 map whose channel count is the
# network parameter `width` got in_features=width (4) instead of 8, so a spec resgen accepted
# failed in torch (codegen corrected the flattened size only for constant channel counts).
SYMBOLIC_FLATTEN = """
network net {
    input 1x5x3
    param width = 4
    stem { conv1 = conv(width, 3, padding=1) }
    head {
        pool = adaptive_avgpool((2, 1))
        flatten = flatten
        fc = linear(3)
    }
}
"""


def test_flatten_of_symbolic_channels(spec_file):
    assert check_agreement(spec_file, SYMBOLIC_FLATTEN)
