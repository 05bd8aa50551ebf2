"""Each spec's `metadata` section, from the library whose weights the spec loads: timm's
pretrained_cfg of the model of that name (its default tag, timm.models.get_pretrained_cfg, no
model built) for specs/timm/*.arch and the specs/*.arch timm names, and the DEFAULT weights'
transforms of torchvision's model of that name for the specs/*.arch torchvision names
(crop_pct = crop size / resize size, as timm converts them). Specs of no library's model (the
CIFAR, dilated and pre-activation ones) have no section.

    python tests/spec_metadata.py            # report specs whose section is not the library's
    python tests/spec_metadata.py --write    # rewrite the sections
    python tests/spec_metadata.py --derived  # also compare what resgen derives (slow: codegen)
    python tests/spec_metadata.py --write specs/timm/NAME.arch  # one spec's section

The section holds every key of resgen.metadata.KEYS the library gives, except what resgen
derives (input_size, num_classes, first_conv, classifier) where the derived value is the
library's. tests/test_interface.py runs the same comparison (`expected`, `written`).
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resgen import metadata  # noqa: E402

DERIVED = ("input_size", "num_classes", "first_conv", "classifier")
COMMENT = (
    "    # The pretrained weights' data (timm's pretrained_cfg fields), by tests/spec_metadata.py."
)


def spec_paths() -> list[Path]:
    return sorted((ROOT / "specs").glob("*.arch")) + sorted((ROOT / "specs/timm").glob("*.arch"))


def network_name(path: Path) -> str:
    match = re.search(r"^network\s+(\w+)", path.read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else ""


def library_cfg(path: Path) -> dict[str, object] | None:
    """The library's values for the spec's network, as resgen.metadata keys and types."""
    name = network_name(path)
    if path.parent.name != "timm":
        cfg = _torchvision_cfg(name)
        if cfg is not None:
            return cfg
    import timm

    if name not in _names("timm"):
        return None
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    values = {}
    for key in metadata.KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        values[key] = tuple(value) if isinstance(value, list | tuple) else value
    return {key: metadata._typed(key, value) for key, value in values.items()}


@functools.cache
def _names(library: str) -> frozenset[str]:
    """The model names of timm or torchvision's classification models."""
    if library == "timm":
        import timm

        return frozenset(timm.list_models())
    import torchvision

    return frozenset(torchvision.models.list_models(torchvision.models))


def _torchvision_cfg(name: str) -> dict[str, object] | None:
    import torchvision

    if name not in _names("torchvision"):
        return None
    weights = torchvision.models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return {
        "input_size": (3, crop, crop),
        "interpolation": transforms.interpolation.value,
        "crop_pct": crop / resize,
        "crop_mode": "center",
        "mean": tuple(map(float, transforms.mean)),
        "std": tuple(map(float, transforms.std)),
        "num_classes": len(weights.meta["categories"]),
    }


def written(path: Path, loader=None) -> dict[str, object]:
    """The metadata of the spec's network as resgen resolves it (a derived network's: its
    base's with its own keys changed)."""
    from resgen.resolve import Loader

    network = (loader or Loader()).load(path).network
    entries = network.metadata or ()
    return {entry.key: metadata._typed(entry.key, entry.value) for entry in entries}


def generated(path: Path) -> dict[str, object]:
    """The generated model's pretrained_cfg, read from the generated source (no torch)."""
    import resgen

    tree = ast.parse(resgen.generate(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Attribute)
            and node.targets[0].attr == "pretrained_cfg"
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path}: no pretrained_cfg")


def section(cfg: dict[str, object], derived: dict[str, object]) -> list[str]:
    lines = [COMMENT, "    metadata {"]
    for key, value in cfg.items():
        if key in DERIVED and derived.get(key) == value:
            continue
        lines.append(f"        {key} = {_arch(value)}")
    return lines + ["    }"]


def _arch(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        items = ", ".join(_arch(v) for v in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    return metadata.python(value)


_OLD = re.compile(re.escape(COMMENT) + r"\n    metadata \{[^{}]*\}\n")


def rewrite(text: str, lines: list[str]) -> str:
    """The spec's text with `lines` as its section: after the `input` line of a network with
    a body, in a body of its own after a derived network's call."""
    text = _OLD.sub("", text)
    text = re.sub(r" \{\n\}\n", "\n", text)  # a derived network's body left empty
    block = "\n".join(lines) + "\n"
    found = re.search(r"^    input .*\n", text, re.M)
    if found:
        return text[: found.end()] + block + text[found.end() :]
    start = re.search(r"^network\s+\w+\s*=\s*\w+\(", text, re.M)
    depth, end = 0, start.end() - 1
    for end in range(start.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            break
    return text[: end + 1] + " {\n" + block + "}" + text[end + 1 :]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the sections")
    parser.add_argument("--derived", action="store_true", help="compare derived keys too")
    parser.add_argument("paths", nargs="*", type=Path, help="these specs only (default: all)")
    args = parser.parse_args()
    from resgen.resolve import Loader

    differ = 0
    for path in [p.resolve() for p in args.paths] or spec_paths():
        cfg = library_cfg(path)
        if cfg is None:
            continue
        if args.write:  # what resgen derives, with an empty section (not a base's)
            text = path.read_text(encoding="utf-8")
            path.write_text(rewrite(text, [COMMENT, "    metadata {", "    }"]), encoding="utf-8")
            derived = generated(path)
            lines = section(cfg, {k: v for k, v in derived.items() if k in DERIVED})
            path.write_text(rewrite(text, lines), encoding="utf-8")
            continue
        derived = generated(path) if args.derived else {}
        ours = written(path, Loader())
        wrong = {
            k: (ours.get(k), v) for k, v in cfg.items() if k not in DERIVED and ours.get(k) != v
        }
        if args.derived:
            wrong |= {k: (derived.get(k), v) for k, v in cfg.items() if derived.get(k) != v}
        if wrong:
            differ += 1
            print(f"{path.relative_to(ROOT)}: {wrong}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
