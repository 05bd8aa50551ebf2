"""How many of timm's ResNet-family models resgen reproduces weight for weight from a spec.

    python3 tests/timm_coverage.py [--json] [--write-manifest] [--only GLOB] [--kind TEXT]
                                   [--input N]

The models are the names of tests/data/timm_resnet_family.txt (timm 1.0.31). A spec reproduces
a model when some specs/**/*.arch defines a network of the model's name and `compare_with_timm`
finds no problem: the same state_dict keys and shapes as `timm.create_model(name)`, a strict
load of timm's weights, the same parameter count, and the same eval-mode outputs with random
batch-norm statistics and random values for every constant-initialised parameter. Each name
is `reproduced`, `failed` (a spec exists; the reason says what differs) or `missing` (no
spec).

--write-manifest records the reproduced models in tests/data/timm_manifest.json, which
tests/test_timm_manifest.py checks on every test run, with timm's `feature_info` of each (num_chs,
reduction, module, in timm's order), which tests/test_feature_taps.py compares with resgen's static
feature taps. --feature-info records only that, for the manifest's models (with --only/--kind:
those matching), from timm's model built on the meta device (no weights: cheap for any size).
--write-manifest refuses to drop a model the manifest already lists; to give one up on purpose,
delete its entry and lower `minimum_reproduced` by hand. With --only/--kind the other entries are
kept as they are.

Exit status: 0 when nothing failed (missing specs are no failure), 1 when a spec failed, a spec
file does not load, two spec files define one network, or the manifest would lose a model.
This is a script, not a test module (pytest collects test_*.py only); the test imports it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from batchnorms import randomise_batchnorms, randomise_constant_parameters

import resgen
from resgen.build import analyse, build_module
from resgen.diagnostics import SpecError
from resgen.resolve import UsageError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
FAMILY = ROOT / "tests" / "data" / "timm_resnet_family.txt"
MANIFEST = ROOT / "tests" / "data" / "timm_manifest.json"

BIG_MODEL = 40_000_000  # parameters; bigger models are compared on a smaller input
BIG_MODEL_INPUT = 128
TOLERANCE = 1e-4  # max |ours - timm| <= TOLERANCE * max(1, max |timm|)
SIGNAL = 1e-2  # max |timm output| must exceed this: an all-zero output compares blind
EXAMPLES = 3  # keys or shapes quoted in a reason


@dataclass(frozen=True)
class Model:
    """One line of the family list: name, timm module file, kind, parameters, state_dict size."""

    name: str
    module: str
    kind: str
    params: int
    entries: int


def read_family(path: Path = FAMILY) -> list[Model]:
    """The family list (tab-separated; `#` lines are comments)."""
    models = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, module, kind, params, entries = line.split("\t")
            models.append(Model(name, module, kind, int(params), int(entries)))
    return models


@dataclass
class SpecIndex:
    """The networks of specs/**/*.arch: name -> the one file defining it; names two or more
    files define (an error); files that do not load (an error), with the reason."""

    by_name: dict[str, Path]
    duplicates: dict[str, list[Path]]
    broken: dict[Path, str]

    def errors(self) -> list[str]:
        return [f"{relative(p)} does not load: {why}" for p, why in self.broken.items()] + [
            f"{len(paths)} spec files define {name}: " + ", ".join(map(relative, paths))
            for name, paths in self.duplicates.items()
        ]


def find_specs(specs: Path = SPECS) -> SpecIndex:
    """Index every .arch file under `specs` by the network it defines (library files: none)."""
    found: dict[str, list[Path]] = {}
    broken = {}
    for path in sorted(specs.rglob("*.arch")):
        try:
            network = resgen.load(path).network
        except (SpecError, UsageError) as err:
            broken[path] = str(err)
            continue
        if network is not None:
            found.setdefault(network.name, []).append(path)
    return SpecIndex(
        {name: paths[0] for name, paths in found.items() if len(paths) == 1},
        {name: paths for name, paths in found.items() if len(paths) > 1},
        broken,
    )


def relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def state_dict_layout(module: torch.nn.Module) -> list[tuple[str, list[int]]]:
    """(key, shape) of every state_dict entry, in order."""
    return [(key, list(value.shape)) for key, value in module.state_dict().items()]


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def feature_info_of(model: torch.nn.Module) -> list[dict]:
    """timm's `feature_info` of a full model: num_chs, reduction and module of each feature map
    features_only returns, in timm's order (the list `out_indices` indexes)."""
    return [
        {"num_chs": info["num_chs"], "reduction": info["reduction"], "module": info["module"]}
        for info in model.feature_info
    ]


def timm_feature_info(name: str) -> list[dict]:
    """`feature_info_of` timm's model `name`, built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return feature_info_of(timm.create_model(name, pretrained=False))


def build_on_meta(path: Path) -> torch.nn.Module:
    """The generated model with meta tensors: its structure without allocating any weights."""
    with torch.device("meta"):
        return build_module(path)


def default_input(path: Path, params: int) -> tuple[int, int, int]:
    """The spec's analysed input (C, H, W); at most 128x128 for models over 40M parameters."""
    c, h, w = analyse(resgen.load(path)).input
    if params > BIG_MODEL:
        h, w = min(h, BIG_MODEL_INPUT), min(w, BIG_MODEL_INPUT)
    return c, h, w


def _some(keys) -> str:
    keys = sorted(keys)
    more = ", ..." if len(keys) > EXAMPLES else ""
    return ", ".join(keys[:EXAMPLES]) + more


@dataclass
class Comparison:
    """What `compare_with_timm` found; `problems` is empty when the spec reproduces the model."""

    problems: list[str] = field(default_factory=list)
    key_order_matches: bool | None = None
    max_abs_diff: float | None = None
    params: int | None = None  # timm's
    layout: list[tuple[str, list[int]]] = field(default_factory=list)  # timm's state_dict
    feature_info: list[dict] = field(default_factory=list)  # timm's, see `feature_info_of`
    input: tuple[int, int, int] | None = None


def compare_with_timm(
    name: str, path: Path, size: int | None = None, listed: Model | None = None
) -> Comparison:
    """Compare the network of spec `path` with `timm.create_model(name, pretrained=False)`:
    the state_dict key sets and shapes, a strict load of timm's state_dict into ours, the key
    order (recorded, not required), the parameter count (ours, timm's, and the family list's
    counts in `listed`), and eval-mode outputs on a seeded random input of size `size` x `size`
    (default: see `default_input`). Every BatchNorm gets random statistics and affine values
    first (small weights keep deep nets finite; timm zero-initialises the last BN of a block,
    which would hide a whole branch), and so does every parameter timm initialises to a
    constant (ConvNeXt's layer scale of 1e-6 and GRN's zeros would hide a block too), and
    timm's output must be a real signal."""
    result = Comparison()
    torch.manual_seed(0)
    try:
        reference = timm.create_model(name, pretrained=False).eval()
    except Exception as err:
        result.problems.append(f"timm.create_model: {type(err).__name__}: {err}")
        return result
    result.params = count_params(reference)
    result.layout = state_dict_layout(reference)
    result.feature_info = feature_info_of(reference)
    try:
        model = build_module(path).eval()
    except Exception as err:
        result.problems.append(f"build_module: {type(err).__name__}: {err}")
        return result

    randomise_batchnorms(reference, seed=1, weight=(0.2, 0.5), var=(0.5, 1.5))
    randomise_constant_parameters(reference, seed=3)
    theirs, ours = reference.state_dict(), model.state_dict()
    missing, unexpected = theirs.keys() - ours.keys(), ours.keys() - theirs.keys()
    if missing:
        result.problems.append(f"{len(missing)} timm keys missing: {_some(missing)}")
    if unexpected:
        result.problems.append(f"{len(unexpected)} keys unexpected: {_some(unexpected)}")
    shapes = [
        f"{key} {list(ours[key].shape)} vs timm {list(value.shape)}"
        for key, value in theirs.items()
        if key in ours and ours[key].shape != value.shape
    ]
    if shapes:
        result.problems.append(f"{len(shapes)} shape mismatches: {_some(shapes)}")
    if result.problems:
        return result
    result.key_order_matches = list(ours) == list(theirs)
    try:
        model.load_state_dict(theirs, strict=True)
    except Exception as err:
        result.problems.append(f"strict load_state_dict: {err}")
        return result
    if count_params(model) != result.params:
        result.problems.append(f"{count_params(model)} parameters, timm has {result.params}")
    if listed and (listed.params, listed.entries) != (result.params, len(theirs)):
        result.problems.append(
            f"timm has {result.params} parameters and {len(theirs)} state_dict entries, "
            f"the family list says {listed.params} and {listed.entries}"
        )

    result.input = default_input(path, result.params)
    if size:
        result.input = (result.input[0], size, size)
    x = torch.randn(1, *result.input, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            expected, actual = reference(x), model(x)
    except Exception as err:
        result.problems.append(
            f"forward on 1x{'x'.join(map(str, result.input))}: {type(err).__name__}: {err}"
        )
        return result
    if expected.shape != actual.shape:
        result.problems.append(f"output shape {list(actual.shape)} vs {list(expected.shape)}")
        return result
    scale = expected.abs().max().item()
    result.max_abs_diff = (actual - expected).abs().max().item()
    if not scale > SIGNAL or not torch.isfinite(expected).all():
        result.problems.append(f"timm's output is no signal: max |output| = {scale:.3g}")
    if not result.max_abs_diff <= TOLERANCE * max(1.0, scale):
        result.problems.append(
            f"max output difference {result.max_abs_diff:.3g} "
            f"(max |timm| {scale:.3g}, input {result.input[1]}x{result.input[2]})"
        )
    return result


# ---------------------------------------------------------------------------------------------
# The measure


@dataclass
class Record:
    name: str
    module: str
    kind: str
    status: str  # reproduced | failed | missing
    reason: str
    spec: str | None
    key_order_matches: bool | None
    max_abs_diff: float | None
    seconds: float


def measure(model: Model, specs: SpecIndex, size: int | None) -> tuple[Record, Comparison | None]:
    """The record of one listed model, and the comparison when there was one."""
    record = Record(
        model.name, model.module, model.kind, "missing", "no spec", None, None, None, 0.0
    )
    if model.name in specs.duplicates:
        record.status = "failed"
        record.reason = "more than one spec file defines it: " + ", ".join(
            map(relative, specs.duplicates[model.name])
        )
        return record, None
    if model.name not in specs.by_name:
        broken = [p for p in specs.broken if p.stem == model.name]
        if broken:  # most likely the spec of this model
            record.status, record.spec = "failed", relative(broken[0])
            record.reason = f"the spec does not load: {specs.broken[broken[0]]}"
        return record, None
    path = specs.by_name[model.name]
    start = time.perf_counter()
    comparison = compare_with_timm(model.name, path, size, model)
    record.seconds = round(time.perf_counter() - start, 2)
    record.spec = relative(path)
    record.status = "failed" if comparison.problems else "reproduced"
    record.reason = "; ".join(comparison.problems)
    record.key_order_matches = comparison.key_order_matches
    record.max_abs_diff = comparison.max_abs_diff
    return record, comparison


def table(records: list[Record]) -> str:
    """Reproduced / total per kind, and in total."""
    kinds: dict[str, list[int]] = {}
    for record in records:
        counts = kinds.setdefault(record.kind, [0, 0])
        counts[0] += record.status == "reproduced"
        counts[1] += 1
    width = max([len(k) for k in kinds] + [5])
    rows = [f"{'kind':<{width}}  reproduced  fraction", "-" * (width + 22)]
    done = sum(c[0] for c in kinds.values())
    for kind, (n, total) in sorted(kinds.items()) + [("total", (done, len(records)))]:
        if kind == "total":
            rows.append("-" * (width + 22))
        rows.append(f"{kind:<{width}}  {n:>4} / {total:<4}  {n / total:6.1%}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# The manifest


def read_manifest(path: Path = MANIFEST) -> dict:
    if not path.exists():
        return {"minimum_reproduced": 0, "models": []}
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_entry(model: Model, record: Record, comparison: Comparison) -> dict:
    return {
        "name": model.name,
        "kind": model.kind,
        "spec": record.spec,
        "params": comparison.params,
        "key_order_matches": comparison.key_order_matches,
        "representative": False,
        "feature_info": comparison.feature_info,
        "state_dict": comparison.layout,
    }


def new_manifest(old: dict, run: dict[str, dict | None]) -> tuple[dict, list[str]]:
    """`old` with the entries of this run's names replaced (`run`: name -> entry, None when
    not reproduced), and the names `old` lists that this run did not reproduce."""
    lost = sorted(e["name"] for e in old["models"] if e["name"] in run and run[e["name"]] is None)
    entries = {e["name"]: e for e in old["models"] if e["name"] not in run}
    entries.update({name: entry for name, entry in run.items() if entry is not None})
    models = [entries[name] for name in sorted(entries)]
    smallest: dict[str, dict] = {}
    for entry in models:
        best = smallest.get(entry["kind"])
        if best is None or (entry["params"], entry["name"]) < (best["params"], best["name"]):
            smallest[entry["kind"]] = entry
    for entry in models:
        entry["representative"] = smallest[entry["kind"]] is entry
    manifest = {
        "about": "timm models resgen reproduces: written by tests/timm_coverage.py "
        "--write-manifest, checked by tests/test_timm_manifest.py",
        "timm_version": timm.__version__,
        "minimum_reproduced": len(models),
        "models": models,
    }
    return manifest, lost


def dump_manifest(manifest: dict) -> str:
    """Deterministic JSON, one state_dict entry per line (diffs stay readable)."""

    def entry(e: dict) -> str:
        fields = [f'   "{k}": {json.dumps(v)}' for k, v in e.items() if k != "state_dict"]
        rows = ",\n".join(
            f"    {json.dumps(row, separators=(',', ':'))}" for row in e["state_dict"]
        )
        return "  {\n" + ",\n".join([*fields, f'   "state_dict": [\n{rows}\n   ]']) + "\n  }"

    head = [f' "{k}": {json.dumps(v)}' for k, v in manifest.items() if k != "models"]
    models = ",\n".join(entry(e) for e in manifest["models"])
    return "{\n" + ",\n".join([*head, f' "models": [\n{models}\n ]']) + "\n}\n"


# ---------------------------------------------------------------------------------------------


def with_feature_info(entry: dict, info: list[dict]) -> dict:
    """`entry` with `feature_info` set, placed before its state_dict (the manifest's order)."""
    fields = {k: v for k, v in entry.items() if k not in ("feature_info", "state_dict")}
    return {**fields, "feature_info": info, "state_dict": entry["state_dict"]}


def record_feature_info(names: set[str]) -> int:
    """Record timm's feature_info in the manifest's entries named in `names`; the rest stay."""
    manifest = read_manifest()
    models = []
    for entry in manifest["models"]:
        if entry["name"] in names:
            entry = with_feature_info(entry, timm_feature_info(entry["name"]))
            print(f"feature_info {entry['name']}: {len(entry['feature_info'])} features")
        models.append(entry)
    MANIFEST.write_text(dump_manifest({**manifest, "models": models}), encoding="utf-8")
    print(
        f"wrote {relative(MANIFEST)}: feature_info of {len(names & {e['name'] for e in models})} "
        "models",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON record per name")
    parser.add_argument(
        "--write-manifest",
        action="store_true",
        help=f"record the reproduced models in {relative(MANIFEST)}",
    )
    parser.add_argument(
        "--feature-info",
        action="store_true",
        help=f"only record timm's feature_info of the models {relative(MANIFEST)} lists",
    )
    parser.add_argument("--only", metavar="GLOB", help="only names matching GLOB")
    parser.add_argument("--kind", metavar="TEXT", help="only kinds containing TEXT")
    parser.add_argument("--input", metavar="N", type=int, help="compare on NxN inputs")
    args = parser.parse_args(argv)

    models = [
        m
        for m in read_family()
        if (args.only is None or fnmatch.fnmatchcase(m.name, args.only))
        and (args.kind is None or args.kind.lower() in m.kind.lower())
    ]
    if args.feature_info:
        return record_feature_info({m.name for m in models})
    specs = find_specs()
    for error in specs.errors():
        print(f"timm_coverage: error: {error}", file=sys.stderr)

    records, run = [], {}
    for model in models:
        record, comparison = measure(model, specs, args.input)
        records.append(record)
        reproduced = record.status == "reproduced"
        run[model.name] = manifest_entry(model, record, comparison) if reproduced else None
        if not args.json and record.status != "missing":
            diff = "" if record.max_abs_diff is None else f", max diff {record.max_abs_diff:.2g}"
            print(
                f"{record.status:<10} {record.name} ({record.seconds:.1f} s{diff}) {record.reason}"
            )

    if args.json:
        print("[\n" + ",\n".join(json.dumps(asdict(r)) for r in records) + "\n]")
    else:
        print(table(records))

    status = int(any(r.status == "failed" for r in records) or bool(specs.errors()))
    if args.write_manifest:
        manifest, lost = new_manifest(read_manifest(), run)
        if lost:
            print(
                f"timm_coverage: error: not writing {relative(MANIFEST)}: no longer reproduced: "
                + ", ".join(lost),
                file=sys.stderr,
            )
            return 1
        MANIFEST.write_text(dump_manifest(manifest), encoding="utf-8")
        print(f"wrote {relative(MANIFEST)}: {len(manifest['models'])} models", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
