"""resgen: an architecture-spec language (.arch) and code generator for ResNet-family networks.

    import resgen

    spec = resgen.load("specs/resnet50.arch", params={"groups": 32}, input=(3, 320, 320))
    resgen.check(spec)            # [] when ok; else the diagnostics, as `check --json` gives them
    data = resgen.summary(spec)   # `summary --json`'s object: shapes, parameters, MACs
    analysis = resgen.analyse(spec)          # the full record (resgen.shapes.Analysis)
    source = resgen.generate(spec)           # standalone PyTorch source text
    model = resgen.build_module(spec, num_classes=10)  # an nn.Module (imports torch)

Importing resgen imports nothing else: each function loads what it needs, so `check`,
`summary` and `analyse` never import torch, Jinja or Graphviz.
"""

from __future__ import annotations

from collections.abc import Mapping


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's, read when asked
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("resgen")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'resgen' has no attribute {name!r}")


def load(path, params: Mapping[str, object] | None = None, input=None):
    """The resolved spec of an .arch file (resgen.spec.Spec), as `resgen check` reads it.

    params  network `param` values to use instead of the spec's defaults, as `--param`:
            {"groups": 32, "width_mult": 0.5, "stride": (2, 1), "bias": True}; ints, floats,
            booleans and (h, w) pairs
    input   the input size instead of the spec's, as `--input`: (C, H, W) or (H, W), in
            channels and pixels

    Raises resgen.diagnostics.SpecError (every diagnostic located in the file: syntax, names,
    unknown params) or UsageError (the file cannot be read). Shape problems are not errors
    here: see `check`.
    """
    from resgen.api import load_spec

    return load_spec(path, params, input)


def check(spec_or_path) -> list[dict]:
    """The diagnostics of a spec (or the path of one), as `resgen check --json` gives them: a
    list of {file, line, column, end_line, end_column, severity, code, message, layer, hint,
    notes}; lines and columns count from 1. Empty when the spec is fine; warnings have severity
    "warning", and the spec is ok when none has severity "error". Never raises for a problem of
    the spec; a file that cannot be read raises UsageError."""
    from resgen.api import check_spec

    return check_spec(spec_or_path)


def analyse(spec_or_path, input=None):
    """The shape analysis (resgen.shapes.Analysis) of a spec or path: per-node shapes
    (`analysis.shapes`, C x H x W tuples, or (F,) after flatten), parameters, buffers and MACs
    (torchvision's convention: conv and linear multiply-accumulates per image), stages with
    output stride and receptive field in input pixels, accepted input sizes, and
    `analysis.diagnostics`. `input` as in `load`. Raises SpecError only when there is no
    network to analyse (a library file) or the file does not resolve."""
    from resgen.api import analyse_spec

    return analyse_spec(spec_or_path, input)


def summary(spec_or_path, input=None) -> dict:
    """`resgen summary --json`'s object for a spec or path: network, input and output shapes,
    params, buffers and macs (counts; macs per image), params_exact/macs_exact (false when
    errors left counts partial), output_stride and receptive_field (pixels), input_sizes, and
    per stage and per layer the same, with the diagnostics. Raises as `analyse` does."""
    from resgen.report import to_json

    return to_json(analyse(spec_or_path, input))


def generate(spec, analysis=None, *, templates=None) -> str:
    """The generated PyTorch module for a spec (or the path of one), as source text. Raises
    SpecError when the spec has errors (no code is generated for them)."""
    from resgen.build import generate as _generate

    return _generate(spec, analysis, templates=templates)


def build_module(spec_or_path, **overrides):
    """An nn.Module built from the generated source; `overrides` go to the factory
    (num_classes=10, zero_init_residual=True). Imports torch."""
    from resgen.build import build_module as _build_module

    return _build_module(spec_or_path, **overrides)


__all__ = ["analyse", "build_module", "check", "generate", "load", "summary"]
