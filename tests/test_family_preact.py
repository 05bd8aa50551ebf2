"""Pre-activation ResNets (He et al. 2016, "Identity Mappings") against a reference, and the
`shortcut NAME from LAYER` construct they need.

The reference below is written out after kuangliu/pytorch-cifar (models/preact_resnet.py:
PreActBlock, PreActBottleneck; the projection shortcut reads relu(bn1(x))), with the ImageNet stem
and head the specs use: conv 7x7/2 + max pool 3x3/2, and a final BN-ReLU before the global pool.
The generated models load its state_dict strictly and agree with it in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen.build import analyse, generate, import_source, load
from resgen.diagnostics import SpecError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from batchnorms import randomise_batchnorms  # noqa: E402


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                )
            )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                )
            )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """kuangliu's PreActResNet with an ImageNet stem (conv 7x7/2, max pool) and the paper's final
    BN-ReLU before the pool."""

    def __init__(self, block, num_blocks, num_classes=1000):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(512 * block.expansion)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.maxpool(self.conv1(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


CASES = {
    "preact_resnet18": (PreActBlock, [2, 2, 2, 2]),
    "preact_resnet50": (PreActBottleneck, [3, 4, 6, 3]),
}


def _generated(path: Path, name: str):
    return getattr(import_source(generate(load(path)), name), name)()


@pytest.mark.parametrize("stem", sorted(CASES))
def test_matches_reference(stem):
    torch.manual_seed(0)
    block, layers = CASES[stem]
    ref = PreActResNet(block, layers)
    ours = _generated(SPECS / f"{stem}.arch", stem)
    params = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in ours.parameters()) == params
    assert analyse(load(SPECS / f"{stem}.arch")).params == params
    randomise_batchnorms(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    ref.eval()
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)
        assert (ours(x) - expected).abs().max().item() <= 1e-5


def test_projection_reads_the_preactivated_input():
    """The graph has the edge layer2.0.relu1 -> layer2.0.shortcut.0; the identity of a block
    without projection still comes from the block input."""
    analysis = analyse(load(SPECS / "preact_resnet18.arch"))
    graph = analysis.graph
    assert graph.edges["layer2.0.relu1", "layer2.0.shortcut.0"]["role"] == "shortcut"
    assert list(graph.predecessors("layer2.0.shortcut.0")) == ["layer2.0.relu1"]
    assert graph.edges["layer1.1.add", "layer2.0.bn1"]["role"] == "main"
    assert graph.edges["layer2.0.add", "layer2.1.add"]["role"] == "skip"
    assert analysis.shapes["layer2.0.shortcut.0"].in_shape == (64, 56, 56)


BLOCK = """
block B(planes, stride = 1) {{
    main {{
        bn1 = batchnorm
        relu1 = relu({inplace})
        conv1 = conv(planes, 3, stride=stride, padding=1, bias=false)
        {after}
    }}
    shortcut proj from {source} when stride != 1 {{ conv(planes, 1, stride=stride, bias=false) }}
    merge add
}}
network n {{
    input 3x16x16
    stem {{ conv1 = conv(8, 3, padding=1) }}
    stage layer1 = 2 x B(16, stride=2)
    head {{ avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(2) }}
}}
"""


def _write(tmp_path, **fields) -> Path:
    text = BLOCK.format(**{"inplace": "", "after": "", "source": "relu1", **fields})
    path = tmp_path / "b.arch"
    path.write_text(text)
    return path


def _error_text(path: Path, error) -> str:
    line = path.read_text().split("\n")[error.span.line - 1]
    return line[error.span.column - 1 : error.span.end_column - 1]


def test_unknown_source_is_located(tmp_path):
    path = _write(tmp_path, source="relu")
    with pytest.raises(SpecError) as info:
        load(path)
    [error] = info.value.diagnostics
    assert error.code == "unknown-name" and "main path" in error.message
    assert "did you mean `relu1`" in error.message
    assert _error_text(path, error) == "relu"


def test_in_place_overwrite_of_the_source_is_an_error(tmp_path):
    path = _write(tmp_path, source="bn1", inplace="inplace=true")
    [error] = analyse(load(path)).errors
    assert error.code == "overwrites-shortcut-input"
    assert _error_text(path, error) == "relu1 = relu(inplace=true)"
    assert "changes the output of `bn1` in place" in error.message
    assert "the shortcut (`proj.0`) reads it afterwards" in error.message


def test_source_layer_is_used_in_forward(tmp_path):
    """A source in the middle of the main path: the generated forward keeps that output and the
    shortcut conv is built for its channel count."""
    path = _write(tmp_path, source="conv1", after="bn2 = batchnorm conv2 = conv(planes, 1)")
    # conv1 already halves the size and makes 16 channels, so the projection keeps the size.
    path.write_text(
        path.read_text().replace(
            "conv(planes, 1, stride=stride, bias=false)", "conv(planes, 1, bias=false)"
        )
    )
    analysis = analyse(load(path))
    assert analysis.ok, analysis.diagnostics
    assert analysis.shapes["layer1.0.proj.0"].in_shape == (16, 8, 8)
    source = generate(load(path))
    assert "shortcut_input = out" in source
    assert "identity = self.proj(shortcut_input)" in source
    net = import_source(source, "n").n()
    assert net.layer1[0].proj[0].in_channels == 16
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 2)
