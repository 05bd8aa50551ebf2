"""Backbones (issue 17): feature taps and timm's model interface on generated networks, checked
against the real libraries: timm's features_only models (same state_dict, same tensors, same
feature_info), torchvision's FX feature extractor and FPN, TorchScript and torch.export.

Every model here is pretrained=False (nothing is downloaded); weights are timm's random ones,
loaded strict, and batch-norm statistics are randomised so eval outputs test every layer.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest

import resgen
from resgen import codes

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # small inputs: the equalities do not depend on the resolution

# (spec, timm model name, timm arguments): one of each kind the issue names.
KINDS = {
    "resnet50": ("specs/resnet50.arch", "resnet50", {}),
    "resnet50d": ("specs/resnet50d.arch", "resnet50d", {}),
    "dilated_os8": ("specs/resnet50_dilated.arch", "resnet50", {"output_stride": 8}),
    "regnetx_002": ("specs/timm/regnetx_002.arch", "regnetx_002", {}),
}


def _randomise_statistics(model) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_features_only_equals_timm(kind):
    """build_module(spec, features_only=True, out_indices=(1, 2, 3, 4)) loads the state_dict of
    timm's features_only model strict, in timm's key order, and returns the same tensors;
    feature_info's channels, reductions and modules are timm's."""
    spec, name, options = KINDS[kind]
    torch.manual_seed(0)
    reference = timm.create_model(
        name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4), **options
    ).eval()
    _randomise_statistics(reference)
    model = resgen.build_module(spec, features_only=True, out_indices=(1, 2, 3, 4)).eval()
    state = reference.state_dict()
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    info, expected = model.feature_info, reference.feature_info
    assert info.channels() == expected.channels()
    assert info.reduction() == expected.reduction()
    assert info.module_name() == expected.module_name()
    assert info.get_dicts(keys=["num_chs", "reduction"]) == expected.get_dicts(
        keys=["num_chs", "reduction"]
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_full_feature_info_is_timms(kind):
    """The full model's feature_info lists timm's taps in timm's order: resnet50's act1 (here
    `relu`, torchvision's name) at reduction 2, then layer1..layer4; out_indices index it."""
    spec, name, options = KINDS[kind]
    reference = timm.create_model(name, pretrained=False, **options)
    ours = resgen.build_module(spec).feature_info
    assert [(f["num_chs"], f["reduction"]) for f in ours] == [
        (f["num_chs"], f["reduction"]) for f in reference.feature_info
    ]
    assert [f["module"] for f in ours][1:] == [f["module"] for f in reference.feature_info][1:]


def test_static_features_are_the_real_ones():
    """check/summary's feature shapes (resgen.features) are the tensors the model returns, at
    another input size too; reductions follow from them."""
    spec = resgen.load("specs/resnet50d.arch", input=(3, 160, 128))
    taps = resgen.analyse(spec).features
    model = resgen.build_module(spec, features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 160, 128))
    assert [t.shape for t in taps] == [tuple(m.shape[1:]) for m in maps]
    assert [t.reduction for t in taps] == [160 // m.shape[2] for m in maps]
    assert [t.receptive_field for t in taps][:2] == [(11, 11), (39, 39)]  # 3 convs 3x3, s2


def test_model_interface_equals_timm_resnet50():
    """forward_features, forward_head(pre_logits=...), get_classifier, reset_classifier and
    num_features of the full model, against timm's resnet50 with the same weights."""
    torch.manual_seed(0)
    reference = timm.create_model("resnet50", pretrained=False).eval()
    _randomise_statistics(reference)
    model = resgen.build_module("specs/resnet50.arch").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(features, reference.forward_features(x))
        torch.testing.assert_close(
            model.forward_head(features, pre_logits=True),
            reference.forward_head(features, pre_logits=True),
        )
        torch.testing.assert_close(model(x), reference(x))
    assert model.num_features == reference.num_features == 2048
    assert type(model.get_classifier()) is type(reference.get_classifier())
    model.reset_classifier(10)
    reference.reset_classifier(10)
    assert model.get_classifier().weight.shape == reference.get_classifier().weight.shape
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (1, 2048)


def test_drop_rate_is_dropout_before_the_classifier():
    """drop_rate (timm's) drops pooled features in training, as F.dropout does with that seed."""
    model = resgen.build_module("specs/resnet18.arch", drop_rate=0.5, num_classes=7).train()
    assert model.drop_rate == 0.5
    x = torch.randn(2, 512, 2, 2)
    torch.manual_seed(3)
    out = model.forward_head(x, pre_logits=True)
    torch.manual_seed(3)
    pooled = torch.nn.functional.dropout(x.mean((2, 3)), p=0.5, training=True)
    torch.testing.assert_close(out, pooled)


def test_reset_classifier_keeps_the_pre_logits_width(tmp_path):
    """Pre-logits layers that change the width (a block flattening 4x4x4 = 64 features before
    the classifier): reset_classifier builds the new classifier on head_hidden_size, 64."""
    path = _write(
        tmp_path,
        "block Flat() { main { p = avgpool(2)  f = flatten } }\n"
        "network p { input 3x8x8  stem { c = conv(4, 3, padding=1) }"
        "  head { h = Flat()  fc = linear(10) } }\n",
    )
    model = resgen.build_module(path)
    assert (model.num_features, model.head_hidden_size) == (4, 64)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3)


def test_regnet_head_roles_inside_a_sequential():
    """RegNet's head is one nn.Sequential (head.global_pool, head.flatten, head.fc): the
    classifier is head.fc, the pool and flatten are forward_head's."""
    model = resgen.build_module("specs/timm/regnetx_002.arch").eval()
    assert model.get_classifier() is model.head.fc
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert model.num_features == 368


def test_out_indices_as_timm_takes_them():
    """An int n: the last n features; negative indices count from the end; the model keeps no
    module after the last feature it returns (timm's pruning), so the state_dict is smaller."""
    last_two = resgen.build_module("specs/resnet18.arch", features_only=True, out_indices=2)
    assert last_two.feature_info.out_indices == [3, 4]
    early = resgen.build_module("specs/resnet18.arch", features_only=True, out_indices=(0, -4))
    assert early.feature_info.module_name() == ["relu", "layer1"]
    assert not any(k.startswith(("layer2", "layer3", "layer4", "fc")) for k in early.state_dict())
    reference = timm.create_model("resnet18", features_only=True, out_indices=(0, 1))
    assert list(early.state_dict()) == list(reference.state_dict())
    with pytest.raises(ValueError, match="out_indices: 5 is not a feature index"):
        resgen.build_module("specs/resnet18.arch", features_only=True, out_indices=(5,))


def test_fx_feature_extractor_and_fpn():
    """torchvision's create_feature_extractor (FX) takes the generated model's module names,
    agrees with the features-only model, and torchvision's FPN runs on the features with the
    channels feature_info gives."""
    fx = pytest.importorskip("torchvision.models.feature_extraction")
    ops = pytest.importorskip("torchvision.ops")
    torch.manual_seed(0)
    backbone = resgen.build_module("specs/resnet18.arch", features_only=True, out_indices=(2, 3, 4))
    backbone.eval()
    full = resgen.build_module("specs/resnet18.arch").eval()
    full.load_state_dict(backbone.state_dict(), strict=False)
    nodes = {name: name for name in backbone.feature_info.module_name()}
    extractor = fx.create_feature_extractor(full, return_nodes=nodes)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x)
        extracted = extractor(x)
        for a, name in zip(maps, nodes, strict=True):
            torch.testing.assert_close(a, extracted[name])
        fpn = ops.FeaturePyramidNetwork(backbone.feature_info.channels(), out_channels=32)
        pyramid = fpn(OrderedDict(zip(backbone.feature_info.module_name(), maps, strict=True)))
    assert [tuple(p.shape[1:]) for p in pyramid.values()] == [(32, 8, 8), (32, 4, 4), (32, 2, 2)]
    traced = torch.fx.symbolic_trace(backbone)  # the features-only forward traces too
    with torch.no_grad():
        for a, b in zip(traced(x), maps, strict=True):
            torch.testing.assert_close(a, b)


def test_features_only_scripts_and_exports():
    """torch.jit.script and torch.export of a features-only model return its maps; a stage in a
    container (RegNet-style `stages.0`) is called by position."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    for spec in ("specs/resnet18.arch", "specs/timm/regnetx_002.arch"):
        model = resgen.build_module(spec, features_only=True, out_indices=(1, 3)).eval()
        with torch.no_grad():
            expected = model(x)
            scripted = torch.jit.script(model)
            for a, b in zip(scripted(x), expected, strict=True):
                torch.testing.assert_close(a, b)
        exported = torch.export.export(model, (x,))
        for a, b in zip(exported.module()(x), expected, strict=True):
            torch.testing.assert_close(a, b)


def test_full_model_scripts_with_its_interface():
    model = resgen.build_module("specs/resnet18.arch", num_classes=3).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(
            scripted.forward_head(scripted.forward_features(x), pre_logits=True),
            model.forward_head(model.forward_features(x), pre_logits=True),
        )


def test_readme_backbone_hands_its_features_to_fpn():
    """README's three lines: the C3-C5 spec (timm's features_only resnet50 weights at
    out_indices=(2, 3, 4) load strict) feeds torchvision's FPN with feature_info's channels."""
    ops = pytest.importorskip("torchvision.ops")
    torch.manual_seed(0)
    reference = timm.create_model("resnet50", features_only=True, out_indices=(2, 3, 4)).eval()
    _randomise_statistics(reference)
    backbone = resgen.build_module(ROOT / "specs/resnet50_c3c5.arch", features_only=True)
    backbone.load_state_dict(reference.state_dict(), strict=True)
    backbone.eval()
    images = torch.randn(1, 3, 64, 64)
    fpn = ops.FeaturePyramidNetwork(backbone.feature_info.channels(), out_channels=256)
    with torch.no_grad():
        names = backbone.feature_info.module_name()
        pyramid = fpn(OrderedDict(zip(names, backbone(images), strict=True)))
        for ours, theirs in zip(backbone(images), reference(images), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert {name: tuple(p.shape) for name, p in pyramid.items()} == {
        "layer2": (1, 256, 8, 8),
        "layer3": (1, 256, 4, 4),
        "layer4": (1, 256, 2, 2),
    }
    assert backbone.feature_info.get("name") == ["c3", "c4", "c5"]


# ---------------------------------------------------------------------------------------------
# The `features` section


C3_C5 = """\
import std.resnet

network backbone {
    input 3x128x128
    stem {
        conv1 = conv(64, kernel=7, stride=2, padding=3, bias=false)
        bn1 = batchnorm
        relu = relu(inplace=true)
        maxpool = maxpool(3, stride=2, padding=1)
    }
    stage layer1 = 2 x BasicBlock(64)
    stage layer2 = 2 x BasicBlock(128, stride=2)
    stage layer3 = 2 x BasicBlock(256, stride=2)
    stage layer4 = 2 x BasicBlock(512, stride=2)
    features {
        c3 = layer2
        c4 = layer3
        c5 = layer4
    }
}
"""


def _write(tmp_path, text: str, name: str = "net.arch") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_features_section_names_and_taps(tmp_path):
    path = _write(tmp_path, C3_C5)
    data = resgen.summary(path)
    assert [(f["name"], f["module"], f["num_chs"], f["reduction"]) for f in data["features"]] == [
        ("c3", "layer2", 128, 8),
        ("c4", "layer3", 256, 16),
        ("c5", "layer4", 512, 32),
    ]
    model = resgen.build_module(path, features_only=True).eval()
    assert [d["name"] for d in model.feature_info.get_dicts()] == ["c3", "c4", "c5"]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 128, 128))
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 16, 16), (256, 8, 8), (512, 4, 4)]
    full = resgen.build_module(path)  # no head: forward_head passes the features through
    assert not hasattr(full, "get_classifier")
    assert full.num_features == 512


@pytest.mark.parametrize(
    ("features", "code", "column"),
    [
        ("c3 = layer9", codes.UNKNOWN_FEATURE, 21),
        ("c3 = layer3  c2 = layer2", codes.FEATURE_ORDER, 34),
        ("c3 = layer2  c3 = layer3", codes.DUPLICATE_NAME, 29),
        ("out = fc", codes.FEATURE_NOT_SPATIAL, 22),
    ],
)
def test_features_section_errors_are_located(tmp_path, features, code, column):
    text = C3_C5.replace(
        "    features {\n        c3 = layer2\n        c4 = layer3\n        c5 = layer4\n    }\n",
        "    head { pool = adaptive_avgpool(1)  flat = flatten  fc = linear(10) }\n"
        f"    features {{ {features} }}\n",
    )
    found = [d for d in resgen.check(_write(tmp_path, text)) if d["severity"] == "error"]
    assert [(d["code"], d["line"], d["column"]) for d in found] == [(code, 16, column)]


def test_summary_json_features_match_the_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    schema = json.loads(
        resources.files("resgen.schemas").joinpath("summary.schema.json").read_text("utf-8")
    )
    registry = None
    check = json.loads(
        resources.files("resgen.schemas").joinpath("check.schema.json").read_text("utf-8")
    )
    from referencing import Registry, Resource

    registry = Registry().with_resource("check.schema.json", Resource.from_contents(check))
    data = resgen.summary(_write(tmp_path, C3_C5))
    jsonschema.Draft202012Validator(schema, registry=registry).validate(data)


# ---------------------------------------------------------------------------------------------
# Starting from pretrained weights after an edit


@pytest.mark.parametrize("in_chans", [1, 5])
def test_load_pretrained_adapts_the_first_conv_and_skips_the_classifier(in_chans):
    """load_pretrained loads timm's regnetx_002 weights into the spec built for another input
    (in_chans) and class count: the first conv as timm's own adapt_input_conv makes it, the
    classifier of another size skipped and reported, everything else loaded (the features equal
    timm's model built with the same arguments and loaded the same way)."""
    from timm.models import adapt_input_conv

    torch.manual_seed(0)
    state = timm.create_model("regnetx_002", pretrained=False).state_dict()
    model = resgen.build_module("specs/timm/regnetx_002.arch", in_chans=in_chans, num_classes=10)
    report = model.load_pretrained(state)
    assert report == {
        "head.fc.weight": "a classifier of another size: [1000, 368], not [10, 368]",
        "head.fc.bias": "a classifier of another size: [1000], not [10]",
    }
    adapted = adapt_input_conv(in_chans, state["stem.conv.weight"])
    torch.testing.assert_close(model.stem.conv.weight, adapted, rtol=0, atol=0)
    reference = timm.create_model("regnetx_002", in_chans=in_chans, num_classes=10)
    kept = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    reference.load_state_dict({**kept, "stem.conv.weight": adapted}, strict=False)
    x = torch.randn(1, in_chans, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval().forward_features(x), reference.eval().forward_features(x)
        )


def test_load_pretrained_reports_every_key_it_did_not_load():
    """Keys the model lacks, keys of another shape and the model's own keys the checkpoint lacks
    are each reported with the reason; what fits is loaded."""
    model = resgen.build_module("specs/resnet18.arch")
    state = dict(resgen.build_module("specs/resnet18.arch", num_classes=10).state_dict())
    state["layer1.0.bn1.weight"] = torch.ones(3)
    state["extra.weight"] = torch.zeros(1)
    del state["layer4.1.bn2.bias"]
    report = model.load_pretrained(state)
    assert report == {
        "fc.weight": "a classifier of another size: [10, 512], not [1000, 512]",
        "fc.bias": "a classifier of another size: [10], not [1000]",
        "layer1.0.bn1.weight": "shape [3], the model's is [64]",
        "extra.weight": "not in the model",
        "layer4.1.bn2.bias": "not in the state_dict: left as initialised",
    }
    torch.testing.assert_close(model.layer4[1].conv1.weight, state["layer4.1.conv1.weight"])


@pytest.mark.slow  # Inductor compiles C++: about a minute on two cores; in the default run
def test_features_only_compiles():
    """torch.compile (the one compile test: it is slow on two cores) of a features-only model
    gives its maps."""
    torch.manual_seed(0)
    model = resgen.build_module("specs/resnet18.arch", features_only=True, out_indices=(2, 4))
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)
        for a, b in zip(compiled(x), expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
