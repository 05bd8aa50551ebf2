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
