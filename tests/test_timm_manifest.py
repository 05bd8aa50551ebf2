"""The timm models resgen reproduces stay reproduced.

tests/data/timm_manifest.json (written by `python3 tests/timm_coverage.py --write-manifest`)
records each reproduced model with timm's state_dict layout and parameter count. Here, for every
entry: its spec still defines the network, and the generated model, built on the meta device (no
weights allocated), has exactly that layout and count. For the smallest model of each kind, the
full comparison with timm itself (`timm_coverage.compare_with_timm`, shared with the script).
The manifest never lists fewer models than the number it records, and lists every spec named
after a model of tests/data/timm_resnet_family.txt.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import timm_coverage as coverage  # noqa: E402

import resgen  # noqa: E402
from resgen.build import analyse  # noqa: E402

MANIFEST = coverage.read_manifest()
ENTRIES = {entry["name"]: entry for entry in MANIFEST["models"]}
FAMILY = {model.name: model for model in coverage.read_family()}
SMALL_INPUT = 64  # for the output comparison, when the network accepts it


def recorded_layout(entry: dict) -> list[tuple[str, list[int]]]:
    return [(key, shape) for key, shape in entry["state_dict"]]


def test_manifest_does_not_shrink():
    """No name twice, and at least as many models as the manifest says were reproduced."""
    assert len(ENTRIES) == len(MANIFEST["models"])
    assert len(ENTRIES) >= MANIFEST["minimum_reproduced"] > 0


def test_manifest_agrees_with_family_list():
    """Each entry is a listed model of its listed kind, with the listed parameter and
    state_dict counts; each kind's representative is its smallest entry."""
    for name, entry in ENTRIES.items():
        model = FAMILY[name]
        assert (entry["kind"], entry["params"], len(entry["state_dict"])) == (
            model.kind,
            model.params,
            model.entries,
        ), name
    for kind in {entry["kind"] for entry in ENTRIES.values()}:
        entries = [e for e in ENTRIES.values() if e["kind"] == kind]
        smallest = min(entries, key=lambda e: (e["params"], e["name"]))
        assert [e["name"] for e in entries if e["representative"]] == [smallest["name"]]


def test_every_timm_named_spec_is_recorded():
    """Spec files are unambiguous and load, and a spec named after a listed timm model is in the
    manifest (run the script with --write-manifest after adding one)."""
    specs = coverage.find_specs()
    assert specs.errors() == []
    named = {name for name in specs.by_name if name in FAMILY}
    assert named - ENTRIES.keys() == set()


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_still_reproduces(name):
    """The spec defines `name`; its generated model has timm's recorded state_dict keys and
    shapes (in timm's order when they matched it) and parameter count, and each feature_info
    module is one of its modules."""
    entry = ENTRIES[name]
    path = coverage.ROOT / entry["spec"]
    assert path.is_file()
    assert resgen.load(path).network.name == name
    model = coverage.build_on_meta(path)
    ours, recorded = coverage.state_dict_layout(model), recorded_layout(entry)
    assert dict(ours) == dict(recorded)
    if entry["key_order_matches"]:
        assert [key for key, _ in ours] == [key for key, _ in recorded]
    assert coverage.count_params(model) == entry["params"]
    for info in model.feature_info:  # every tap names a module of the model (`stem.conv2`)
        model.get_submodule(info["module"])


@pytest.mark.parametrize(
    "name", sorted(name for name, entry in ENTRIES.items() if entry["representative"])
)
def test_representative_matches_timm(name):
    """The whole comparison with timm (keys, shapes, strict load, parameters, outputs with
    random batch norms), on a 64x64 input; timm's layout is still the recorded one."""
    entry = ENTRIES[name]
    path = coverage.ROOT / entry["spec"]
    spec = resgen.load(path)
    small = analyse(spec, (analyse(spec).input[0], SMALL_INPUT, SMALL_INPUT)).ok
    comparison = coverage.compare_with_timm(
        name, path, SMALL_INPUT if small else None, FAMILY[name]
    )
    assert comparison.problems == []
    assert comparison.key_order_matches == entry["key_order_matches"]
    assert comparison.layout == recorded_layout(entry)
