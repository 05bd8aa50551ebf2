"""`check --json` and `summary --json` match the JSON Schemas shipped in resgen/schemas
(issue 12, item 15), validated with the `jsonschema` library, for healthy specs and for every kind
of broken one: `summary --json` prints its object (diagnostics and what could be computed) even
when the spec does not parse."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from resgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.arch"))


def _schema(name: str) -> dict:
    return json.loads(resources.files("resgen.schemas").joinpath(name).read_text("utf-8"))


CHECK, SUMMARY = _schema("check.schema.json"), _schema("summary.schema.json")
REGISTRY = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in (CHECK, SUMMARY)
)


def _validate(data, schema) -> None:
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(data)


def _json(capsys, *argv: str) -> tuple[int, object]:
    capsys.readouterr()
    status = main(list(argv))
    out = capsys.readouterr().out
    return status, json.loads(out)


BROKEN = {
    "syntax": "network n { input 3x8x8 stem { c = conv(4, 3 } }\n",
    "unexpected-eof": "network n {\n",
    "encoding": b"network n { input 3x8x8 }\n\xff\n",
    "unknown-name": "network n { input 3x8x8 stem { c = conv(width, 3) } }\n",
    "shape": "network n { input 3x8x8 stem { c = conv(4, 99) } }\n",
    "note": "import std.resnet\nnetwork n { input 3x8x8 stem { c = conv(8, 3) }\n"
    "    stage layer1 = 1 x BasicBlock(8, stride=true) }\n",
    "warning": "network n { input 3x9x9 stem { c = conv(4, 2, stride=2) } }\n",
    "library": "block B(p = 1) { main { c = conv(4, 1) } }\n",
    "import-not-found": 'import "missing.arch"\nnetwork n { input 3x8x8 }\n',
}


def test_the_schemas_are_valid_schemas():
    for schema in (CHECK, SUMMARY):
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_json_matches_its_schema(case, tmp_path, capsys):
    spec = tmp_path / "net.arch"
    data = BROKEN[case]
    spec.write_bytes(data if isinstance(data, bytes) else data.encode())
    status, records = _json(capsys, "check", "--json", str(spec))
    assert status in (0, 1)
    _validate(records, CHECK)
    assert case in ("library", "warning") or records  # a broken spec has diagnostics


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_summary_json_matches_its_schema_for_broken_specs(case, tmp_path, capsys):
    """Before: a spec that did not parse printed no JSON at all."""
    spec = tmp_path / "net.arch"
    data = BROKEN[case]
    spec.write_bytes(data if isinstance(data, bytes) else data.encode())
    status, summary = _json(capsys, "summary", "--json", str(spec))
    _validate(summary, SUMMARY)
    assert summary["diagnostics"] or case == "warning"
    assert status == (0 if case == "warning" else 1)
    if case in ("shape", "note"):  # analysed: what could be computed is there
        assert summary["network"] == "n" and summary["params_exact"] is not None
    elif case in ("syntax", "encoding", "unknown-name", "library", "import-not-found"):
        assert all(value is None for key, value in summary.items() if key != "diagnostics")


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_summary_json_of_every_spec_matches_its_schema(spec, capsys):
    status, summary = _json(capsys, "summary", "--json", str(spec))
    assert status == 0
    _validate(summary, SUMMARY)


def test_check_json_of_all_specs_at_once(capsys):
    status, records = _json(capsys, "check", "--json", *map(str, SPECS))
    assert status == 0
    _validate(records, CHECK)


def test_the_summary_schema_names_every_member():
    """Members are required and documented: a new one is added to the schema (as a nullable
    property) or validation fails, so the schema never lags the output."""
    assert set(SUMMARY["required"]) == set(SUMMARY["properties"])
    assert SUMMARY["additionalProperties"] is False
