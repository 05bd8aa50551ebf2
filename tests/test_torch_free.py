"""check, summary, diagram, build and sweep never import torch: each runs in a process where
`import torch` fails (sys.modules['torch'] = None makes every import of it raise ImportError)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK_TORCH = (
    "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
    "from resgen.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "specs/resnet152.arch", "specs/seresnet50.arch", "specs/cifar_resnet20.arch"],
        ["summary", "specs/resnet50.arch", "--depth", "3"],
        ["summary", "specs/preact_resnet18.arch", "--json"],
        [
            "summary",
            "specs/resnet50.arch",
            "--batch",
            "256",
            "--amp",
            "--train",
            "--budget",
            "24GiB",
        ],
        ["check", "specs/resnet50.arch", "--batch", "512", "--budget", "24GB", "--json"],
        [
            "diagram",
            "specs/resnet50.arch",
            "--detail",
            "layers",
            "--format",
            "dot",
            "-o",
            "{out}/d.dot",
        ],
        ["build", "specs/resnet50.arch", "specs/cifar_resnet20.arch", "-o", "{out}"],
        ["sweep", "specs/resnet50.arch", "--param", "groups=1,32", "--plot", "{out}/s.png"],
    ],
    ids=lambda argv: argv[0],
)
def test_runs_where_torch_cannot_be_imported(argv, tmp_path):
    args = [a.format(out=tmp_path) for a in argv]
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
