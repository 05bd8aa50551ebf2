"""Bounds that turn a hostile or mistaken spec into a clear error instead of a hang or an OOM.

Each bound can be raised with an environment variable of the same name, upper-cased and
prefixed with RESGEN_ (RESGEN_MAX_REPEATS=5000).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class Limits:
    max_file_bytes: int = 1_000_000  # one .arch file
    max_nesting: int = 64  # brackets: ( and {
    max_import_depth: int = 32
    max_repeats: int = 10_000  # blocks in one stage
    max_blocks: int = 20_000  # blocks in one network, nested ones included
    max_layers: int = 250_000  # layer instances in one network (~1.5 kB of memory each)
    max_channels: int = 1 << 20
    max_kernel: int = 1024
    max_spatial: int = 1 << 16  # input height or width
    max_int: int = 1 << 40  # any intermediate integer value of an expression
    max_expression_nodes: int = 2_000
    max_expression_depth: int = 100  # operators nested in one expression


def _from_environment() -> Limits:
    limits = Limits()
    for f in fields(Limits):
        raw = os.environ.get(f"RESGEN_{f.name.upper()}")
        if raw and raw.isdigit():
            setattr(limits, f.name, int(raw))
    return limits


LIMITS = _from_environment()
