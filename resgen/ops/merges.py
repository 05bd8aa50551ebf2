"""The built-in merges: how a block joins its main path with its shortcut (`merge add|mul`)."""

from __future__ import annotations

from resgen.ops.base import Merge, Saved


class Add(Merge):
    name = "add"
    doc = "element-wise sum: the residual connection"
    glyph = "+"
    statement = "out += identity"
    residual = True

    def apply(self, main, other):
        return main + other

    def storage(self, args, training):
        return "in-place"  # `out += identity` overwrites the main path's output

    def saves(self, args, x, y, device):
        return ()  # the gradient passes to both inputs unchanged


class Mul(Merge):
    name = "mul"
    doc = "element-wise product, broadcasting a size of 1 (squeeze-excite's gate)"
    glyph = "×"
    statement = "out = out * identity"
    inline = "out = x * out"

    def saves(self, args, x, y, device):
        # mul: `other` for the input's gradient, the input for `other`'s (derivatives.yaml)
        return (Saved("input", needed_by="other"), Saved("other", needed_by="input"))

    def apply(self, main, other):
        return main * other

    def zero_when(self, main, other):
        return main or other

    def combine(self, main, other):
        """Broadcasting as torch does: C x H x W times C x 1 x 1 is C x H x W."""
        if main == other:
            return main
        if len(main) != len(other) or not all(
            a == b or 1 in (a, b) for a, b in zip(main, other, strict=True)
        ):
            return None
        return tuple(max(a, b) for a, b in zip(main, other, strict=True))


BUILTIN: tuple[Merge, ...] = (Add(), Mul())
