"""`resgen verify` within bounds (issue 12, item 12): a model too big for the machine is refused
with the number before torch allocates anything, and every exception torch raises (importing,
constructing or running the model) is a located report, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resgen import build
from resgen.cli import main

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
SMALL = (
    "import std.resnet\n"
    "network small {\n"
    "    input 3x32x32\n"
    "    stem {\n"
    "        conv1 = conv(8, 3, padding=1, bias=false)\n"
    "        bn1 = batchnorm\n"
    "        relu = relu(inplace=true)\n"
    "    }\n"
    "    stage layer1 = 2 x BasicBlock(8)\n"
    "    stage layer2 = 1 x Bottleneck(4, stride=2)\n"
    "    head { pool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }\n"
    "}\n"
)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return status, captured.out, captured.err


def _spec(tmp_path: Path, text: str = SMALL) -> Path:
    path = tmp_path / "small.arch"
    path.write_text(text)
    return path


def test_a_model_too_big_for_the_machine_is_refused_with_the_number(tmp_path):
    """The issue's example: a valid 1x1 convolution with 2^20 channels in and out has 1.1e12
    parameters (4 TiB as float32); verify allocated them and died. Run as its own process, as a
    user would, and bounded in time: nothing is allocated."""
    spec = _spec(tmp_path, "network n { input 1048576x1x1 stem { c = conv(1048576, 1) } }\n")
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "resgen", "verify", str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "4.00 TiB" in result.stderr and "1,099,512,676,352 parameters" in result.stderr
    assert "--max-memory" in result.stderr
    assert time.monotonic() - start < 120


def test_the_memory_limit_can_be_set(tmp_path, capsys):
    spec = _spec(tmp_path)
    status, _out, err = _run(capsys, "verify", "--max-memory", "64KiB", str(spec))
    assert status == 2 and "over its limit of 64.0 KiB" in err
    assert _run(capsys, "verify", "--max-memory", "none", str(spec))[0] == 0
    assert _run(capsys, "verify", "--max-memory", "1GiB", str(spec))[0] == 0


@pytest.mark.parametrize("text", ["x", "-1GiB", "nan", "1Q", "8G"])
def test_a_bad_memory_limit_is_a_usage_error(text, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["verify", "--max-memory", text, str(_spec(tmp_path))])
    assert stop.value.code == 2


@pytest.mark.parametrize(
    "spec",
    [ROOT / "specs" / "resnet18.arch", ROOT / "specs" / "cifar_resnet20.arch", "small"],
    ids=["resnet18", "cifar_resnet20", "small"],
)
def test_the_estimate_bounds_what_torch_allocates(spec, tmp_path):
    """memory_estimate against torch's own tensors: the bytes of every parameter and buffer
    (their real element sizes) and of every distinct tensor a module returns in one forward pass
    at batch 1 (as if none were freed)."""
    path = _spec(tmp_path) if spec == "small" else spec
    loaded = build.load(path)
    analysis = build.analyse(loaded, (3, 64, 64) if spec != "small" else None)
    model = build.build_module(loaded).eval()
    measured = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    seen: dict[int, int] = {}

    def hook(_module, _args, output):
        if isinstance(output, torch.Tensor):
            seen[output.data_ptr()] = output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    x = torch.zeros(1, *analysis.input)
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    measured += x.numel() * x.element_size() + sum(seen.values())
    estimate = build.memory_estimate(analysis)
    assert measured <= estimate <= 6 * measured  # in-place layers share a tensor: rough


def _layer_line(text: str, name: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if f"{name} = " in line)


def test_an_exception_in_the_forward_pass_is_located_at_its_layer(tmp_path, capsys, monkeypatch):
    """Not only RuntimeError: any exception a layer raises is reported at the spec line of the
    innermost module that was running."""

    def broken(self, x):
        raise ValueError("a value torch refused")

    monkeypatch.setattr(torch.nn.AdaptiveAvgPool2d, "forward", broken)
    spec = _spec(tmp_path)
    status, out, _err = _run(capsys, "verify", str(spec))
    assert status == 1, out
    line = _layer_line(SMALL, "pool")
    assert re.search(
        rf"small\.arch:{line}:\d+: pool: predicted success, torch gives ValueError", out
    )


def test_an_exception_in_a_block_is_located_at_the_layer_inside_it(tmp_path, capsys, monkeypatch):
    calls = []
    real = torch.nn.BatchNorm2d.forward

    def broken(self, x):
        calls.append(1)
        if len(calls) == 3:  # bn1 of the stem, bn1 of layer1.0, then bn2 of layer1.0
            raise TypeError("an unexpected type")
        return real(self, x)

    monkeypatch.setattr(torch.nn.BatchNorm2d, "forward", broken)
    status, out, _err = _run(capsys, "verify", str(_spec(tmp_path)))
    assert status == 1 and "layer1.0.bn2: predicted success, torch gives TypeError" in out, out
    assert re.search(r"<std>/resnet\.arch:\d+:\d+: layer1\.0\.bn2", out), out


def test_an_exception_at_construction_is_located_at_the_network(tmp_path, capsys, monkeypatch):
    def broken(self, *args, **kwargs):
        raise ValueError("groups must be a positive integer")

    monkeypatch.setattr(torch.nn.Conv2d, "__init__", broken)
    status, out, _err = _run(capsys, "verify", str(_spec(tmp_path)))
    assert status == 1
    assert re.search(
        r"small\.arch:2:1: construction: predicted success, torch gives ValueError", out
    )


def test_an_exception_at_import_is_located_at_the_network(tmp_path, capsys, monkeypatch):
    """Generated code that fails at import (a NameError such as `eps=inf` was) is a finding."""
    real = build.codegen.generate
    monkeypatch.setattr(
        build.codegen, "generate", lambda *a, **k: real(*a, **k) + "\nvalue = inf\n"
    )
    status, out, _err = _run(capsys, "verify", str(_spec(tmp_path)))
    assert status == 1
    assert re.search(r"small\.arch:2:1: import: predicted success, torch gives NameError", out)
