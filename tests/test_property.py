"""The property every promise adds up to (issue 12, item 9): for random specs, `check` exit 0
implies `build` exit 0 implies the generated module imports, constructs, and trains one step at
the spec's input (train mode, a batch of 2: one forward and one backward pass; an in-place op on
a tensor autograd saved fails only at backward).

Specs come from tests/strategies.py's hazardous_specs(): the valid-by-construction networks of
the other fuzz tests, with values on both sides of torch's argument rules (batchnorm eps and
momentum, dropout p, pool padding, dilation and ceil_mode), numbers that overflow, and params and
layers named like what the generated module needs. Seeded and bounded by default; longer with
RESGEN_FUZZ_EXAMPLES (e.g. RESGEN_FUZZ_EXAMPLES=2000 python3 -m pytest tests/test_property.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hypothesis import event, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strategies import SEEDED, examples, hazardous_specs  # noqa: E402

from resgen.build import import_source  # noqa: E402
from resgen.cli import main  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


def _trains(source: str, shape: tuple[int, ...]) -> None:
    module = import_source(source, "net")
    model = module.net()
    model.train()
    y = model(torch.randn(2, *shape))
    y.float().sum().backward()
    assert torch.isfinite(y).all(), "non-finite output"


@settings(SEEDED, max_examples=examples(12))
@given(text=hazardous_specs())
def test_check_ok_implies_build_ok_implies_it_trains(workdir, capsys, text):
    spec = workdir / "net.arch"
    spec.write_text(text)
    capsys.readouterr()
    checked = main(["check", str(spec)])
    err = capsys.readouterr().err
    assert checked in (0, 1) and "Traceback" not in err, err
    event(f"check exit {checked}")
    if checked:
        return
    out = workdir / "out"
    built = main(["build", "--no-diagram", "--force", "-o", str(out), str(spec)])
    err = capsys.readouterr().err
    assert built == 0, f"check ok, build exit {built}:\n{err}\n{text}"
    shape = tuple(int(v) for v in re.search(r"input (\d+)x(\d+)x(\d+)", text).groups())
    try:
        _trains((out / "net.py").read_text(), shape)
    except Exception as error:
        pytest.fail(f"check and build ok, but training fails: {error!r}\n{text}")
