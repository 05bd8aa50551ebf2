"""resgen's static feature taps are timm's feature_info, for every model the manifest lists.

tests/data/timm_manifest.json records timm's `feature_info` of each reproduced model (num_chs,
reduction and module of each feature map, in timm's order: the list `out_indices` indexes),
written by `python3 tests/timm_coverage.py --write-manifest` or `--feature-info`. Here, without
building timm, the spec's analysed taps (resgen.features) must be that list, entry for entry.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import timm_coverage as coverage  # noqa: E402
from batchnorms import randomise_batchnorms, randomise_constant_parameters  # noqa: E402

import resgen  # noqa: E402
from resgen.build import analyse, generate, import_source  # noqa: E402

ENTRIES = {entry["name"]: entry for entry in coverage.read_manifest()["models"]}

# torchvision's module names: the specs of specs/*.arch follow torchvision.models (the golden
# files are torchvision's code), and so do the timm specs derived from them (resnext101_32x4d
# from specs/resnext50_32x4d.arch); torchvision's ResNet calls timm's `act1` `relu`. Same
# tensor, same place, no parameters: only the name differs.
TORCHVISION_NAMES = {"relu": "act1"}


def static_feature_info(path) -> list[dict]:
    """num_chs, reduction and module of each tap, from the shape analysis only."""
    analysis = analyse(resgen.load(path))
    return [
        {"num_chs": tap.channels, "reduction": tap.reduction, "module": tap.module}
        for tap in analysis.features
    ]


def test_every_entry_records_feature_info():
    assert all(entry.get("feature_info") for entry in ENTRIES.values())


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_feature_info_is_timms(name):
    """The taps of the spec of `name`, in order, are timm's feature_info for `name`."""
    entry = ENTRIES[name]
    ours = static_feature_info(coverage.ROOT / entry["spec"])
    for info in ours:
        info["module"] = TORCHVISION_NAMES.get(info["module"], info["module"])
    assert ours == entry["feature_info"]


# One small model per kind of tap, compared with timm's own features_only model: a stage list
# (ConvNeXt, RegNetY), ByobNet's tiered stem (`stem.conv3`, before its pool) and its
# nn.Identity `final_conv`, ResNetV2's `stem.conv` inside its stem, NFNet's `stem.conv3` before
# an activation (a `features` section) and `final_conv`, Res2Net's multi-branch stages, RegNetZ's
# `final_conv` (a ConvNormAct after the last stage).
KINDS = {
    "convnext": "convnext_atto",
    "byobnet": "resnext26ts",
    "regnetz": "regnetz_005",
    "resnetv2": "resnetv2_18",
    "regnety": "regnety_002",
    "nfnet": "test_nfnet",
    "res2net": "res2net50_14w_8s",
    "byob-final-conv": "regnetz_b16",
}
SIZE = 64


def timm_key_names(model) -> dict[str, str]:
    """timm's features_only module names -> the full model's paths: its FeatureListNet
    flattens the first level of an nn.Sequential into `stem_conv1` (timm/models/_features.py,
    _module_list; a private helper of timm's, used so that the renaming is timm's own)."""
    from timm.models._features import _module_list

    return {new: old for new, old, _ in _module_list(model, flatten_sequential=True)}


def with_full_paths(state: dict, names: dict[str, str]) -> dict:
    renamed = {}
    for key, value in state.items():
        first, _, rest = key.partition(".")
        renamed[f"{names.get(first, first)}.{rest}"] = value
    return renamed


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("which", ["all", "first"])
def test_features_only_equals_timm(kind, which):
    """build_module(spec, features_only=True, out_indices) loads the weights of
    timm.create_model(name, features_only=True, out_indices) strict (timm's module names
    mapped back to the model's paths by timm's own rule) and returns the same tensors: every
    feature, and the first alone (the model pruned after a tap inside the stem)."""
    name = KINDS[kind]
    entry = ENTRIES[name]
    count = len(entry["feature_info"])
    out_indices = tuple(range(count)) if which == "all" else (0,)
    torch.manual_seed(0)
    with torch.device("meta"):
        names = timm_key_names(timm.create_model(name, pretrained=False))
    reference = timm.create_model(
        name, pretrained=False, features_only=True, out_indices=out_indices
    ).eval()
    randomise_batchnorms(reference, seed=1, weight=(0.2, 0.5), var=(0.5, 1.5))
    randomise_constant_parameters(reference, seed=3)
    model = resgen.build_module(
        coverage.ROOT / entry["spec"], features_only=True, out_indices=out_indices
    ).eval()
    model.load_state_dict(with_full_paths(reference.state_dict(), names), strict=True)
    assert model.feature_info.get_dicts(keys=["num_chs", "reduction", "module"]) == [
        entry["feature_info"][i] for i in out_indices
    ]
    assert model.feature_info.module_name() == reference.feature_info.module_name()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert len(ours) == len(theirs) == len(out_indices)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)


# Every model with RESGEN_ALL_FEATURE_MAPS=1 (about 6 minutes on 2 cores), else the smallest
# model of each kind.
EVERY_MODEL = os.environ.get("RESGEN_ALL_FEATURE_MAPS") == "1"


@pytest.mark.parametrize(
    "name",
    sorted(name for name, entry in ENTRIES.items() if EVERY_MODEL or entry["representative"]),
)
def test_features_only_returns_every_tap(name):
    """The features-only model (built on the meta device: shapes only) returns one map per
    feature_info entry, with timm's channels, at the input's size over timm's reduction."""
    spec = resgen.load(coverage.ROOT / ENTRIES[name]["spec"])
    analysis = analyse(spec)
    module = import_source(generate(spec, analysis), spec.network.name)
    channels, height, width = analysis.input
    with torch.device("meta"):
        model = getattr(module, spec.network.name)(features_only=True).eval()
        maps = model(torch.empty(1, channels, height, width))
    expected = ENTRIES[name]["feature_info"]
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in expected]
    for m, info in zip(maps, expected, strict=True):
        assert m.shape[2:] == (-(-height // info["reduction"]), -(-width // info["reduction"]))
