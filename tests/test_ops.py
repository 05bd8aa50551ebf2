"""Ops are declared once (resgen.ops): a new op, or a plugin's, works in every command from that
one declaration; an incomplete or duplicate declaration is a clear error naming its author."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resgen import ops
from resgen.cli import main
from resgen.ops import Counts, Emit, Op, OpError, Param
from resgen.ops.base import ACT

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
network tiny {{
    input 3x16x16
    stem {{
        conv1 = conv(8, 3, padding=1, bias=false)
        bn1 = batchnorm
        act = {op}
        pool = maxpool(2)
    }}
    head {{ gap = adaptive_avgpool(1) flatten = flatten fc = linear(4) }}
}}
"""


class Gelu(Op):
    """The whole of what resgen needs to know about GELU: one class (a test-only op)."""

    name = "test_gelu"
    doc = "Gaussian error linear unit (Hendrycks and Gimpel 2016)"
    params = (Param("tanh", "bool", False, doc="the tanh approximation"),)
    family = ACT
    stateless = True
    emit = Emit("nn.GELU")


@pytest.fixture
def gelu():
    op = ops.register(Gelu)
    yield op
    ops.unregister(op.name)


def test_a_new_op_declared_in_one_place_works_in_every_command(gelu, tmp_path, capsys):
    spec = tmp_path / "tiny.arch"
    spec.write_text(SPEC.format(op="test_gelu"))
    assert main(["check", str(spec)]) == 0
    capsys.readouterr()
    assert main(["summary", str(spec), "--json"]) == 0
    layers = {row["name"]: row for row in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["act"]["op"] == "test_gelu" and layers["act"]["out"] == [8, 16, 16]
    dot = tmp_path / "tiny.dot"
    assert main(["diagram", str(spec), "--format", "dot", "-o", str(dot)]) == 0
    assert "test_gelu" in dot.read_text()
    assert main(["build", str(spec), "-o", str(tmp_path / "out"), "--no-diagram"]) == 0
    source = (tmp_path / "out" / "tiny.py").read_text()
    assert "self.act = nn.GELU()" in source
    capsys.readouterr()
    assert main(["verify", str(spec)]) == 0  # torch builds it, runs it, and agrees
    assert "ok" in capsys.readouterr().out


def test_an_unknown_op_is_still_an_error_with_a_suggestion(gelu, tmp_path, capsys):
    spec = tmp_path / "tiny.arch"
    spec.write_text(SPEC.format(op="test_gelo"))
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "unknown layer type `test_gelo` (did you mean `test_gelu`?)" in err


class _Incomplete(Op):
    name = "half_done"
    doc = "an op without the code it becomes"


class _BadParam(Op):
    name = "bad_param"
    doc = "a parameter of a type resgen does not have"
    params = (Param("mode", "str", "a"),)  # type: ignore[arg-type]
    emit = Emit("nn.Identity")


class _ImportsNothing(Op):
    name = "floating"
    doc = "emits a class it never imports"
    emit = Emit("Floating")


@pytest.mark.parametrize(
    "op, message",
    [
        (_Incomplete, "op `half_done` has no `emit`"),
        (_BadParam, "op `bad_param` gives parameter `mode` the unknown type 'str'"),
        (_ImportsNothing, "op `floating` emits `Floating` but neither imports it"),
        (type("Conv", (Gelu,), {"name": "conv"}), "op `conv` is already registered by resgen"),
        (object(), "is not a resgen.ops.Op subclass or instance"),
    ],
)
def test_bad_declarations_are_refused_naming_the_plugin(op, message):
    with pytest.raises(OpError) as err:
        ops.register(op, plugin="resgen-example")
    assert str(err.value).startswith("plugin `resgen-example`: ")
    assert message in str(err.value)
    assert ops.lookup("half_done", load_plugins=False) is None


def test_an_op_registered_twice_is_refused(gelu):
    with pytest.raises(OpError, match="op `test_gelu` is already registered by resgen itself"):
        ops.register(Gelu, plugin="another")


# ---------------------------------------------------------------------------------------------
# A plugin, installed as a distribution with a `resgen.ops` entry point


PLUGIN_OPS = '''
"""resgen declarations of the example plugin: no torch import, so `resgen check` stays light."""

from resgen.ops import Counts, Emit, Op, Param


class ChannelScale(Op):
    name = "channel_scale"
    doc = "a learnable per-channel scale"
    params = (Param("init", "float", 1.0, "init"),)
    accepts = "spatial"
    emit = Emit(
        "ChannelScale",
        in_channels="channels",
        imports=("from resgen_example_ops.modules import ChannelScale",),
    )

    def counts(self, args, x, y):
        return Counts(params=x[0])
'''

PLUGIN_MODULES = '''
"""The module generated code imports when it uses `channel_scale`."""

import torch
from torch import Tensor, nn


class ChannelScale(nn.Module):
    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(1, -1, 1, 1)
'''


def _install_plugin(site: Path, entry_point: str) -> None:
    package = site / "resgen_example_ops"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops.py").write_text(PLUGIN_OPS)
    (package / "modules.py").write_text(PLUGIN_MODULES)
    dist = site / "resgen_example_ops-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: resgen-example-ops\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(f"[resgen.ops]\n{entry_point}\n")


def _resgen(tmp_path: Path, site: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "resgen", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_plugin_op_works_in_every_command(tmp_path):
    site = tmp_path / "site"
    _install_plugin(site, "channel_scale = resgen_example_ops.ops:ChannelScale")
    (tmp_path / "tiny.arch").write_text(SPEC.format(op="channel_scale(init=0.5)"))
    assert _resgen(tmp_path, site, "check", "tiny.arch").returncode == 0
    summary = _resgen(tmp_path, site, "summary", "tiny.arch", "--json")
    layers = {row["name"]: row for row in json.loads(summary.stdout)["layers"]}
    assert layers["act"]["op"] == "channel_scale" and layers["act"]["params"] == 8
    assert _resgen(tmp_path, site, "diagram", "tiny.arch", "--format", "dot").returncode == 0
    built = _resgen(tmp_path, site, "build", "tiny.arch", "-o", "out", "--no-diagram")
    assert built.returncode == 0, built.stderr
    source = (tmp_path / "out" / "tiny.py").read_text()
    assert "from resgen_example_ops.modules import ChannelScale\nfrom torch import" in source
    assert "self.act = ChannelScale(8, init=0.5)" in source
    verified = _resgen(tmp_path, site, "verify", "tiny.arch")
    assert verified.returncode == 0 and "ok" in verified.stdout, verified.stdout + verified.stderr


def test_plugins_are_read_only_for_an_unknown_name(tmp_path):
    """A broken plugin does not touch specs that use only registered ops (entry points are
    not even read), and is a one-line error naming it where a spec needs it."""
    site = tmp_path / "site"
    _install_plugin(site, "broken = resgen_example_ops.missing:Nothing")
    (tmp_path / "plain.arch").write_text(SPEC.format(op="relu"))
    (tmp_path / "plugin.arch").write_text(SPEC.format(op="channel_scale"))
    assert _resgen(tmp_path, site, "check", "plain.arch").returncode == 0
    failed = _resgen(tmp_path, site, "check", "plugin.arch")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith(
        "resgen: error: plugin `resgen-example-ops`: entry point `broken = "
        "resgen_example_ops.missing:Nothing` cannot be loaded: ModuleNotFoundError"
    )


def test_a_plugin_that_takes_a_builtin_name_is_refused(tmp_path):
    site = tmp_path / "site"
    _install_plugin(site, "conv = resgen_example_ops.ops:ChannelScale")
    (site / "resgen_example_ops" / "ops.py").write_text(
        PLUGIN_OPS.replace('name = "channel_scale"', 'name = "conv"')
    )
    (tmp_path / "plugin.arch").write_text(SPEC.format(op="something_unknown"))
    failed = _resgen(tmp_path, site, "check", "plugin.arch")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "plugin `resgen-example-ops`: op `conv` is already registered by resgen" in (
        failed.stderr
    )


def test_counts_default_to_none_for_a_pointwise_op():
    assert Gelu().counts({}, (8, 4, 4), (8, 4, 4)) == Counts(0, 0, 0)
    assert Gelu().infer((8, 4, 4), {}, None) == (8, 4, 4)
    assert textwrap.dedent(Gelu.__doc__).startswith("The whole of")


# ---------------------------------------------------------------------------------------------
# How a declaration writes its constructor call (Emit) and what the AST guard lets helpers do


class _Grouped(Op):
    """nn.GroupNorm(groups, C): the channel count goes second, and a derived argument."""

    name = "test_grouped"
    doc = "group norm with the channel count second"
    params = (
        Param("groups", "int", ops.DERIVED, "num_groups"),
        Param("eps", "float", 1e-5, "eps"),
    )
    accepts = "spatial"
    emit = Emit("nn.GroupNorm", in_channels="num_channels", positional=("groups", "num_channels"))

    def derived(self, args, c):
        return {} if "groups" in args else {"groups": ops.quotient(c, 4)}


class _Tanh(Op):
    name = "test_tanh_gelu"
    doc = "a constant keyword"
    stateless = True
    emit = Emit("nn.GELU", keywords=(("approximate", "tanh"),))


class _Slopes(Op):
    name = "test_slopes"
    doc = "the channel count passed only when a bool says so"
    params = (Param("per_channel", "bool", False),)
    emit = Emit("nn.PReLU", in_channels="num_parameters", in_channels_if="per_channel")


class _Pad(Op):
    name = "test_pad"
    doc = "a positional default torch does not have"
    params = (Param("padding", "int", torch="padding"), Param("value", "float", 0.0, "value"))
    accepts = "spatial"
    stateless = True
    emit = Emit("nn.ConstantPad2d", positional=("padding", "value"))

    def infer(self, x, args, check):
        return (x[0], x[1] + 2 * args["padding"], x[2] + 2 * args["padding"])


EMITTED = {
    "test_grouped": "nn.GroupNorm(in_channels // 4, in_channels)",
    "test_grouped(2)": "nn.GroupNorm(2, in_channels)",
    "test_tanh_gelu": 'nn.GELU(approximate="tanh")',
    "test_slopes": "nn.PReLU()",
    "test_slopes(per_channel=true)": "nn.PReLU(in_channels)",
    "test_pad(1)": "nn.ConstantPad2d(1, 0.0)",
    "test_pad(1, value=0.5)": "nn.ConstantPad2d(1, 0.5)",
}


@pytest.fixture
def emitters():
    registered = [ops.register(op) for op in (_Grouped, _Tanh, _Slopes, _Pad)]
    yield
    for op in registered:
        ops.unregister(op.name)


@pytest.mark.parametrize("layer", sorted(EMITTED))
def test_emit_writes_the_constructor_as_torchvision_does(layer, emitters, tmp_path):
    """The channel count where torch takes it, derived and positional defaults written out,
    constant keywords, and a channel count that depends on a bool; the model runs in torch."""
    from resgen.build import build_module, generate

    spec = tmp_path / "emit.arch"
    spec.write_text(
        f"block B(width) {{\n    main {{ op = {layer} }}\n}}\n"
        "network emit {\n    input 8x4x4\n    stem { b = B(8) }\n}\n"
    )
    assert f"self.op = {EMITTED[layer]}" in generate(spec)
    torch = pytest.importorskip("torch")
    build_module(spec)(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize(
    "emit, message",
    [
        (Emit("nn.PReLU", in_channels="n", in_channels_if="missing"), "is not a bool parameter"),
        (Emit("nn.GELU", keywords=(("not a name", 1),)), "which is not a Python name"),
        (Emit("X", helper="x.jinja", imports=("import os.path",)), "`import MODULE`"),
        (Emit("X", helper="x.jinja", imports=("import torch as t",)), "`import MODULE`"),
    ],
)
def test_bad_emit_declarations_are_refused(emit, message):
    op = type("Bad", (Op,), {"name": "test_bad_emit", "doc": "bad", "emit": emit})
    with pytest.raises(OpError, match=message):
        ops.register(op, plugin="resgen-example")
    assert ops.lookup("test_bad_emit", load_plugins=False) is None


GUARD_REFUSES = {
    # An alias of a module inside a function would make its methods callable as a local's.
    "local-alias": "from torch import nn\ndef f():\n    m = nn\n    m.modules.module.os.system()",
    "prefix-alias": "from torch import nn\ndef f():\n    m = nn.functional\n    m.torch.hub.load()",
    "module-argument": "import torch\ndef f(x):\n    return g(torch)\ndef g(m):\n    return m.hub",
    "undeclared-path": "import math\ndef f():\n    return math.fsum([1])",
    "torch-hub": "import torch\ndef f():\n    torch.hub.load('a/b', 'c')",
    "import-os": "import os",
    "base-object": "class A(object):\n    pass",
    "base-two": "from torch import nn\nclass A(nn.Module, nn.Conv2d):\n    pass",
    "computed-callable": "def f(x):\n    return [x][0]()",
}


@pytest.mark.parametrize("case", sorted(GUARD_REFUSES))
def test_guard_refuses_what_helpers_cannot_do(case):
    from resgen.codegen import check_source
    from resgen.render import CodeError

    with pytest.raises(CodeError):
        check_source(GUARD_REFUSES[case])


class _Helper(Op):
    """Declares what its helper class needs: `import math`, `import torch`, and the paths."""

    name = "test_helper"
    doc = "a helper with imports"
    emit = Emit(
        "nn.Conv2d",
        in_channels="in_channels",
        imports=("import math", "import torch"),
        uses=("math.isqrt", "torch.stack"),
    )


def test_guard_allows_what_helpers_are_written_with():
    """Methods of a function's own tensors (chained), `import torch` and `import math` with
    the paths a registered op declares, and a torch layer as the base class; without the
    declaration, the same source is refused."""
    from resgen.codegen import check_source
    from resgen.render import CodeError

    source = (
        "import math\n\nimport torch\nfrom torch import Tensor, nn\n\n\n"
        "class S(nn.Conv2d):\n"
        "    def forward(self, x: Tensor) -> Tensor:\n"
        "        n, c, h, w = x.size()\n"
        "        y = x.view(n, c, h, w).permute(0, 2, 3, 1).contiguous()\n"
        "        k = math.isqrt(9) * self.weight[0].numel()\n"
        "        return torch.stack((y, y), 1) * k\n"
    )
    op = ops.register(_Helper)
    try:
        check_source(source)
        with pytest.raises(CodeError, match="math.fsum"):  # a path no op declares
            check_source(source.replace("math.isqrt(9)", "math.fsum([3])"))
    finally:
        ops.unregister(op.name)
    with pytest.raises(CodeError, match="math.isqrt"):
        check_source(source)
