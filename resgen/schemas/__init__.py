"""JSON Schemas (draft 2020-12) of resgen's machine-readable output: `check --json`
(check.schema.json) and `summary --json` (summary.schema.json). tests/test_schemas.py validates
real output against them with the `jsonschema` library."""
