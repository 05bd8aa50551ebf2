"""Issue 13, item 8: an in-place op on a tensor autograd saved for backward passes check, build
and a forward pass, and fails at loss.backward(). `check` reports it (`overwrites-saved`) at the
in-place layer, from each op's declaration of what it saves and where its output lives.

torch is the oracle: a spec is reported exactly when the generated model's backward pass fails
with "modified by an inplace operation".
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strategies import examples  # noqa: E402

torch = pytest.importorskip("torch")

from resgen import codegen  # noqa: E402
from resgen.build import import_source  # noqa: E402
from resgen.resolve import Loader  # noqa: E402
from resgen.shapes import analyse  # noqa: E402

CODE = "overwrites-saved"
INPLACE_MESSAGE = "modified by an inplace operation"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def _analyse(tmp_path, text: str):
    path = tmp_path / "net.arch"
    path.write_text(text)
    spec = Loader().load(path)
    return spec, analyse(spec)


def _backward_fails(spec, analysis) -> bool:
    """Build the generated model (as if the check had passed), run forward in training mode,
    then backward: True when torch refuses because of an in-place change."""
    others = [d for d in analysis.diagnostics if d.code != CODE]
    # An in-place layer that changes what another path reads (overwrites-shortcut-input) makes
    # wrong values, not a failing backward: it is beside the point here.
    wrong_values = {"overwrites-shortcut-input"}
    assert not [d for d in others if d.severity == "error" and d.code not in wrong_values], [
        d.message for d in others
    ]
    buildable = dataclasses.replace(analysis, diagnostics=others, ok=True)
    module = import_source(codegen.generate(spec, buildable), spec.network.name)
    torch.manual_seed(0)
    model = getattr(module, spec.network.name)().train()
    output = model(torch.randn(2, *analysis.input))  # the forward pass runs
    try:
        output.sum().backward()
    except RuntimeError as err:
        assert INPLACE_MESSAGE in str(err), err
        return True
    return False


def _network(stem: str, blocks: str = "", stages: str = "") -> str:
    return (
        f"{blocks}\nnetwork net {{\n    input 4x6x6\n    stem {{ {stem} }}\n{stages}\n"
        "    head { p = adaptive_avgpool(1) f = flatten fc = linear(3) }\n}\n"
    )


REPORTED = {
    # (spec, the text the error points at: the in-place layer)
    "relu-after-sigmoid": (
        _network("c = conv(4, 1) g = sigmoid r = relu(inplace=true)"),
        "r = relu(inplace=true)",
    ),
    "relu-after-relu": (
        _network("c = conv(4, 1) a = relu b = relu(inplace=true)"),
        "b = relu(inplace=true)",
    ),
    "inplace-relu-applied-twice": (
        _network("c = conv(4, 1) a = relu(inplace=true) a"),
        "a }",
    ),
    "through-a-view": (
        _network("c = conv(4, 1) g = sigmoid").replace(
            "p = adaptive_avgpool(1) f = flatten", "f = flatten r = relu(inplace=true)"
        ),
        "r = relu(inplace=true)",
    ),
    "through-identity": (
        _network("c = conv(4, 1) g = sigmoid i = identity r = relu(inplace=true)"),
        "r = relu(inplace=true)",
    ),
    "saved-by-the-previous-block": (
        _network(
            "c = conv(4, 1)",
            "block B() { main { c = conv(in_channels, 1) } merge add post { r = relu } }\n"
            "block P() { main { a = relu(inplace=true) c = conv(in_channels, 1) } }",
            "    stage s = 1 x B()\n    stage t = 1 x P()",
        ),
        "a = relu(inplace=true)",
    ),
    "residual-sum-over-a-saved-output": (
        _network(
            "c = conv(4, 1)",
            "block B() {\n    main { c = conv(in_channels, 1) r = relu }\n    merge add\n}",
            "    stage s = 2 x B()",
        ),
        "merge add",
    ),
}

NOT_REPORTED = {
    "after-conv": _network("c = conv(4, 1) r = relu(inplace=true)"),
    "after-batchnorm": _network("c = conv(4, 1) b = batchnorm r = relu(inplace=true)"),
    "after-maxpool": _network(
        "c = conv(4, 1) a = relu m = maxpool(3, stride=1, padding=1) r = relu(inplace=true)"
    ),
    "after-avgpool": _network(
        "c = conv(4, 1) a = sigmoid m = avgpool(3, stride=1, padding=1) r = relu(inplace=true)"
    ),
    "after-dropout": _network("c = conv(4, 1) a = sigmoid d = dropout(0.5) r = relu(inplace=true)"),
    "on-the-network-input": _network("r = relu(inplace=true) c = conv(4, 1)"),
    "after-a-residual-sum": _network(
        "c = conv(4, 1)",
        "block B() { main { c = conv(in_channels, 1) b = batchnorm } merge add "
        "post { r = relu(inplace=true) } }",
        "    stage s = 2 x B()",
    ),
    "after-a-gate": _network(
        "c = conv(4, 1)",
        "block G() { main { p = adaptive_avgpool(1) c = conv(in_channels, 1) g = sigmoid } "
        "merge mul }",
        "    stage s = 1 x G()\n    stage t = 1 x G()",
    ).replace(
        "p = adaptive_avgpool(1) f = flatten",
        "r = relu(inplace=true) p = adaptive_avgpool(1) f = flatten",
    ),
}


@pytest.mark.parametrize("case", REPORTED)
def test_reported_at_the_in_place_layer_and_torch_fails(tmp_path, case):
    text, marker = REPORTED[case]
    spec, analysis = _analyse(tmp_path, text)
    found = [d for d in analysis.diagnostics if d.code == CODE]
    assert found, text
    line = text.splitlines()[found[0].span.line - 1]
    assert line[found[0].span.column - 1 :].startswith(marker), (line, found[0])
    assert found[0].severity == "error" and not analysis.ok
    assert "loss.backward()" in found[0].message
    assert _backward_fails(spec, analysis)


@pytest.mark.parametrize("case", NOT_REPORTED)
def test_siblings_that_train_are_not_reported(tmp_path, case):
    spec, analysis = _analyse(tmp_path, NOT_REPORTED[case])
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    assert not _backward_fails(spec, analysis)


# Random main paths, posts and merges: reported exactly when torch's backward fails.
LAYERS = (
    "conv(4, 3, padding=1)",
    "batchnorm",
    "relu",
    "relu(inplace=true)",
    "sigmoid",
    "maxpool(3, stride=1, padding=1)",
    "avgpool(3, stride=1, padding=1)",
    "identity",
    "dropout(0.5)",
    "AGAIN",  # apply an earlier parameter-free layer of the same path again
)


@st.composite
def _path(draw, prefix: str, size: tuple[int, int]) -> str:
    names, stateless, items = [], [], []
    for i in range(draw(st.integers(*size))):
        layer = draw(st.sampled_from(LAYERS))
        if layer == "AGAIN":
            if stateless:
                items.append(draw(st.sampled_from(stateless)))
            continue
        name = f"{prefix}{i}"
        names.append(name)
        if not layer.startswith(("conv", "batchnorm")):
            stateless.append(name)
        items.append(f"{name} = {layer}")
    return " ".join(items) or f"{prefix}x = identity"


@st.composite
def _inplace_specs(draw) -> str:
    main = draw(_path("m", (1, 4)))
    merge = draw(st.sampled_from(["", "merge add", "merge mul"]))
    post = draw(_path("q", (0, 2))) if merge else ""
    block = f"block B() {{ main {{ {main} }} {merge} {f'post {{ {post} }}' if post else ''} }}"
    stem = draw(_path("s", (1, 3)))
    return _network(
        f"c = conv(4, 1) {stem}", block, f"    stage s = {draw(st.integers(1, 2))} x B()"
    )


@settings(
    max_examples=examples(40),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_inplace_specs())
def test_reported_exactly_when_torch_backward_fails(tmp_path, text):
    spec, analysis = _analyse(tmp_path, text)
    reported = any(d.code == CODE for d in analysis.diagnostics)
    assert reported == _backward_fails(spec, analysis), text
