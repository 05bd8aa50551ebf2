"""The CIFAR-10 ResNets of He et al. 2015 (section 4.2) against the paper and a reference.

Option A specs (specs/cifar_resnet{20,32,44,56,110}.arch): parameter counts at Table 6's rounding,
and ResNet-20/56 load the state_dict of the reference implementation below strictly and agree
with it in eval mode. The reference is written out here after akamaster/pytorch_resnet_cifar10
(resnet.py), with its LambdaLayer option A shortcut; nothing is downloaded. Option B specs
(projection shortcuts) are compared with the same reference built with option='B'.
Also the `pad_channels` op itself: its channel split, its shape rule and its located error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resgen.build import analyse, generate, load

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# n, Table 6 "# params" as printed (M), digits the paper rounds to.
TABLE6 = {
    "cifar_resnet20": (3, 0.27, 2),
    "cifar_resnet32": (5, 0.46, 2),
    "cifar_resnet44": (7, 0.66, 2),
    "cifar_resnet56": (9, 0.85, 2),
    "cifar_resnet110": (18, 1.7, 1),
}


@pytest.mark.parametrize("stem", sorted(TABLE6))
def test_parameters_match_table6(stem):
    n, millions, digits = TABLE6[stem]
    analysis = analyse(load(SPECS / f"{stem}.arch"))
    assert analysis.ok
    assert round(analysis.params / 1e6, digits) == millions
    # 6n + 2 weighted layers: convolutions and the fully connected layer.
    weighted = [la for la in analysis.layers if la.op in ("conv", "linear")]
    assert len(weighted) == 6 * n + 2
    assert analysis.output == (10,)


# ---------------------------------------------------------------------------------------------
# The reference (akamaster/pytorch_resnet_cifar10, resnet.py), written out

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from batchnorms import randomise_batchnorms  # noqa: E402


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, option="A"):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                # "For CIFAR10 ResNet paper uses option A."
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(
                        x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0
                    )
                )
            elif option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(
                        in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                    ),
                    nn.BatchNorm2d(self.expansion * planes),
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, option="A"):
        super().__init__()
        self.in_planes = 16
        self.option = option
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(block, 16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s, self.option))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


def reference(n: int, option: str = "A") -> ResNet:
    return ResNet(BasicBlock, [n, n, n], option=option)


# ---------------------------------------------------------------------------------------------


def _model(stem: str):
    from resgen.build import import_source

    spec = load(SPECS / f"{stem}.arch")
    module = import_source(generate(spec), stem)
    return getattr(module, stem)()


def _max_difference(ours: nn.Module, ref: nn.Module) -> float:
    randomise_batchnorms(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    ref.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(x) - ref(x)).abs().max().item()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("stem,n", [("cifar_resnet20", 3), ("cifar_resnet56", 9)])
def test_option_a_matches_reference(stem, n):
    torch.manual_seed(0)
    ref, ours = reference(n, "A"), _model(stem)
    assert _params(ours) == _params(ref)
    assert _max_difference(ours, ref) <= 1e-5


@pytest.mark.parametrize("stem,n", [(s, v[0]) for s, v in TABLE6.items()])
def test_option_a_parameter_counts_match_reference(stem, n):
    assert analyse(load(SPECS / f"{stem}.arch")).params == _params(reference(n, "A"))


@pytest.mark.parametrize("stem,n", [("cifar_resnet20_b", 3), ("cifar_resnet56_b", 9)])
def test_option_b_matches_reference(stem, n):
    ref = reference(n, "B")
    assert analyse(load(SPECS / f"{stem}.arch")).params == _params(ref)
    assert _max_difference(_model(stem), ref) <= 1e-5


# ---------------------------------------------------------------------------------------------
# pad_channels

PAD = """
network pad {{
    input {c}x8x8
    stem {{ pad = pad_channels({channels}) }}
}}
"""


def _pad_analysis(tmp_path, c: int, channels: int):
    path = tmp_path / "pad.arch"
    path.write_text(PAD.format(c=c, channels=channels))
    return analyse(load(path)), path


@pytest.mark.parametrize("c,channels", [(16, 32), (3, 8), (5, 5)])
def test_pad_channels_split_and_counts(tmp_path, c, channels):
    from resgen.build import import_source

    analysis, path = _pad_analysis(tmp_path, c, channels)
    assert analysis.ok and analysis.output == (channels, 8, 8)
    assert analysis.params == analysis.macs == analysis.buffers == 0
    net = import_source(generate(load(path)), "pad").pad()
    x = torch.randn(2, c, 8, 8)
    y = net(x)
    before = (channels - c) // 2
    assert y.shape == (2, channels, 8, 8)
    assert torch.equal(y[:, before : before + c], x)
    assert not y[:, :before].any() and not y[:, before + c :].any()
    if channels - c == 16:  # the reference's planes // 4 on each side
        assert torch.equal(y, F.pad(x, (0, 0, 0, 0, channels // 4, channels // 4)))


def test_pad_channels_refuses_to_shrink(tmp_path):
    analysis, path = _pad_analysis(tmp_path, 32, 16)
    assert not analysis.ok
    [error] = analysis.errors
    assert error.code == "channels" and "shrink" in error.message
    line = PAD.format(c=32, channels=16).split("\n")[error.span.line - 1]
    assert line[error.span.column - 1 : error.span.end_column - 1] == "16"


def test_helper_class_only_where_used():
    assert "class PadChannels" in generate(load(SPECS / "cifar_resnet20.arch"))
    assert "PadChannels" not in generate(load(SPECS / "cifar_resnet20_b.arch"))
    assert "PadChannels" not in generate(load(SPECS / "resnet18.arch"))


def test_generated_code_verifies():
    from resgen.build import verify

    for stem in ("cifar_resnet20", "cifar_resnet20_b"):
        spec = load(SPECS / f"{stem}.arch")
        differences, checked = verify(spec, analyse(spec))
        assert not differences and checked > 50
