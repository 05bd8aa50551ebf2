"""resgen: an architecture-spec language (.arch) and code generator for ResNet-family networks.

spec = resgen.load("specs/resnet50.arch")     # the resolved spec
source = resgen.generate(spec)                # standalone PyTorch source text
model = resgen.build_module(spec, num_classes=10)  # an nn.Module (imports torch)
"""

from __future__ import annotations


def load(path):
    """The resolved spec of an .arch file (resgen.spec.Spec); raises SpecError or UsageError."""
    from resgen.build import load as _load

    return _load(path)


def generate(spec, analysis=None, *, templates=None) -> str:
    """The generated PyTorch module for a spec (or the path of one), as source text."""
    from resgen.build import generate as _generate

    return _generate(spec, analysis, templates=templates)


def build_module(spec_or_path, **overrides):
    """An nn.Module built from the generated source; `overrides` go to the factory."""
    from resgen.build import build_module as _build_module

    return _build_module(spec_or_path, **overrides)


__all__ = ["build_module", "generate", "load"]
