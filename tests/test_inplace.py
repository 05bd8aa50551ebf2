"""In-place layers and the block input: each path of a block reads the block input as it
entered (the identity, a projection, a gate's `x * out`), and `shortcut ... from LAYER` reads
LAYER's output as it was produced. An in-place layer that changes a tensor another path reads
afterwards is an `overwrites-shortcut-input` error at that layer; `resgen verify` compares the
model's values with the graph's own forward, where every layer reads a copy of its input.

Expected values come from torch: the block computed by hand from the model's own modules, and
torch's autograd refusing the alternative (the shortcut computed first, then the in-place write).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen.build import analyse, build_module, load

ISSUE = """block B() {
    main { act = relu(inplace=INPLACE)  conv = conv(in_channels, 1) }
    merge add
}
network n { input 2x4x4  stage s = 1 x B() }
"""

# Each sibling: a block whose in-place layer changes what another path reads later, and the
# layer that does it.
SIBLINGS = {
    "projection": (
        """block P() {
    main { act = relu(inplace=true)  conv = conv(in_channels, 1) }
    shortcut proj { conv(in_channels, 1) }
    merge add
}
network n { input 2x4x4  stage s = 2 x P() }
""",
        "act = relu(inplace=true)",
        "the shortcut (`proj.0`) reads it afterwards",
    ),
    "after a layer that passes its input on": (
        """block Q() {
    main { first = seq { identity relu(inplace=true) } conv = conv(in_channels, 1) }
    merge add
}
network n { input 2x4x4  stem { q = Q() } }
""",
        "relu(inplace=true)",
        "changes the input of q (which `first.0` passes on) in place",
    ),
    "a gate's x * out": (
        """block G() {
    main {
        act = relu(inplace=true) pool = adaptive_avgpool(1) fc = conv(in_channels, 1)
        gate = sigmoid
    }
    merge mul
}
network n { input 2x4x4  stem { g = G() } }
""",
        "act = relu(inplace=true)",
        "`merge mul` (`out = x * out`) reads it afterwards",
    ),
    "a block inside a block": (
        """block Plain() { main { act = relu(inplace=true) conv = conv(in_channels, 1) } }
block Outer() { main { inner = Plain() conv = conv(in_channels, 3, padding=1) } merge add }
network n { input 2x4x4  stem { o = Outer() } }
""",
        "act = relu(inplace=true)",
        "the identity shortcut of `merge add` reads it afterwards",
    ),
}


def _spec(tmp_path: Path, text: str, name: str = "n"):
    path = tmp_path / f"{name}.arch"
    path.write_text(text)
    return load(path), text


def _located(error, text: str, needle: str) -> None:
    index = text.index(needle)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    assert (error.span.line, error.span.column) == (line, column)


def test_the_issue_example_is_an_error_at_the_in_place_layer(tmp_path, capsys):
    from resgen.cli import main

    spec, text = _spec(tmp_path, ISSUE.replace("INPLACE", "true"))
    [error] = analyse(spec).errors
    assert error.code == "overwrites-shortcut-input"
    assert error.message == (
        "`act` changes the input of s.0 in place, but the identity shortcut of `merge add` "
        "reads it afterwards"
    )
    assert "inplace=false" in error.hint
    _located(error, text, "act = relu(inplace=true)")
    # check refuses it, so build does too: nothing that computes relu(x) + f(x) is written
    path = tmp_path / "n.arch"
    assert main(["check", str(path)]) == 1
    assert main(["build", str(path), "-o", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / "n.py").exists()


@pytest.mark.parametrize("kind", sorted(SIBLINGS))
def test_siblings(tmp_path, kind):
    text, needle, words = SIBLINGS[kind]
    spec, _ = _spec(tmp_path, text)
    [error] = analyse(spec).errors
    assert error.code == "overwrites-shortcut-input", error
    assert words in error.message, error.message
    _located(error, text, needle)


def test_in_place_layers_nobody_else_reads_are_fine(tmp_path):
    """After a layer that makes a new tensor, at the start of the shortcut (the main path has
    read the block input already), and after the merge."""
    text = """block OK() {
    main { conv = conv(in_channels, 1) act = relu(inplace=true) conv2 = conv(in_channels, 1) }
    shortcut proj { relu(inplace=true) conv(in_channels, 1) }
    merge add
    post { act2 = relu(inplace=true) }
}
network n { input 2x4x4  stage s = 2 x OK() }
"""
    spec, _ = _spec(tmp_path, text)
    # The values are right; training is not: `conv` saved the block input for its weight's
    # gradient, and the shortcut's ReLU overwrites it (torch fails at loss.backward()).
    diagnostics = analyse(spec).diagnostics
    assert {d.code for d in diagnostics} == {"overwrites-saved"}, diagnostics
    assert [d.node for d in diagnostics] == ["s.0.proj.0"]  # once, at the line of the block


def test_generated_code_computes_the_documented_block(tmp_path):
    """x + conv(relu(x)) and proj(x) + conv(relu(x)), computed by hand from the model's own
    convolutions (with `inplace=false`, the spec check accepts)."""
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    spec, _ = _spec(tmp_path, ISSUE.replace("INPLACE", "false"))
    block = build_module(spec).eval().s[0]
    with torch.no_grad():
        torch.testing.assert_close(block(x.clone()), x + block.conv(torch.relu(x)))
    text = SIBLINGS["projection"][0].replace("relu(inplace=true)", "relu")
    spec, _ = _spec(tmp_path, text, "p")
    block = build_module(spec).eval().s[0]
    with torch.no_grad():
        torch.testing.assert_close(block(x.clone()), block.proj(x) + block.conv(torch.relu(x)))


def test_verify_would_have_caught_it(tmp_path):
    """The model built with `inplace=false`, then its ReLU switched to in place in torch: the
    graph's forward (each path reads a copy) differs at the block, by max |x - relu(x)|."""
    torch = pytest.importorskip("torch")
    from resgen.reference import first_mismatch

    spec, _ = _spec(tmp_path, ISSUE.replace("INPLACE", "false"))
    analysis = analyse(spec)
    net = build_module(spec).eval()
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    assert first_mismatch(net, analysis, x) is None
    net.s[0].act.inplace = True
    mismatch = first_mismatch(net, analysis, x)
    assert mismatch is not None and mismatch.node == "s.0"
    assert mismatch.difference == pytest.approx(float((x - torch.relu(x)).abs().max()))


def test_why_not_compute_the_shortcut_first():
    """The other way to honour the semantics, computing the shortcut before an in-place main
    path, is right forward and wrong backward: the shortcut's convolution saved the block input
    for its gradient, and autograd refuses the later in-place write."""
    torch = pytest.importorskip("torch")
    conv, proj = torch.nn.Conv2d(2, 2, 1), torch.nn.Conv2d(2, 2, 1)
    x = torch.randn(1, 2, 4, 4, requires_grad=True) * 1
    identity = proj(x)
    out = conv(torch.relu_(x)) + identity
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
