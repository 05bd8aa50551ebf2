"""Feature taps: which module outputs a network returns as feature maps, and what each one is.

A network's `features` section names them (`c3 = layer2`: a stage, or a layer of the stem or
head written at network level); without one, the default rule gives timm's choice for its
ResNet-family models:
  - every stage's output, in order;
  - before them, for each output stride the stem reaches that no stage has, the stem's last layer
    at that stride (ResNet's `act1` at stride 2, before its max pool takes the stride to 4,
    where `layer1` is; RegNet's `stem` at 2; none for ConvNeXt, whose stem ends at layer 0's 4).
Each tap gets its static shape, channels, reduction (output stride, timm's `reduction`) and
receptive field from the shape analysis; `feature_info` of the generated model lists them in
this order, and `out_indices` indexes this list, as in timm (resnet50: 0 is act1, 4 is layer4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from resgen import codes
from resgen import spec as S
from resgen.diagnostics import Diagnostic, Span, did_you_mean


@dataclass(frozen=True)
class FeatureTap:
    """One feature map: `name` (the section's, else the module path), `module` (its module path
    in the generated model, timm's `module`), `node` (the graph node whose output it is), its
    shape (C x H x W at the analysed input), channels, reduction (output stride, an int when the
    two axes agree, else (h, w)) and receptive field in input pixels, (h, w)."""

    name: str
    module: str
    node: str
    shape: tuple[int, ...]
    reduction: int | tuple[int, int]
    receptive_field: tuple[int, int] | None
    span: Span

    @property
    def channels(self) -> int:
        return self.shape[0]

    def as_dict(self) -> dict:
        """`summary --json`'s entry (and timm's num_chs / reduction / module)."""
        return {
            "name": self.name,
            "module": self.module,
            "num_chs": self.channels,
            "reduction": self.reduction,
            "shape": list(self.shape),
            "receptive_field": list(self.receptive_field) if self.receptive_field else None,
        }


def feature_taps(
    network: S.Network,
    nodes: Sequence[str],
    shapes: Mapping[str, tuple | None],
    geometry: Mapping[str, tuple | None],
) -> tuple[list[FeatureTap], list[Diagnostic]]:
    """The network's taps and the errors of its `features` section. `nodes` lists the graph's
    node ids in forward order, `shapes` their output shapes and `geometry` their (stride h,
    stride w, receptive field h, receptive field w), None once global."""
    order = [layer.name for layer in network.stem]
    order += [stage.name for stage in network.stages]
    order += [layer.name for layer in network.head]
    spans = {layer.name: layer.span for layer in (*network.stem, *network.head)}
    spans.update({stage.name: stage.span for stage in network.stages})
    outputs = _outputs(order, nodes)
    if network.features is None:
        return _default(network, outputs, shapes, geometry, spans), []
    taps: list[FeatureTap] = []
    diagnostics: list[Diagnostic] = []
    seen: dict[str, Span] = {}
    last = -1
    for feature in network.features:
        for key in {feature.name, feature.path}:
            if key in seen:
                diagnostics.append(
                    Diagnostic(
                        feature.span,
                        codes.DUPLICATE_NAME,
                        f"feature `{key}` appears twice (first at line {seen[key].line})",
                    )
                )
            seen.setdefault(key, feature.span)
        if feature.path not in outputs:
            diagnostics.append(
                Diagnostic(
                    feature.path_span,
                    codes.UNKNOWN_FEATURE,
                    f"`{feature.path}` is not a stage or a network-level layer of "
                    f"`{network.name}`" + did_you_mean(feature.path, order),
                    hint="a feature is the output of a stem or head layer, or of a stage, "
                    "by its name at network level",
                )
            )
            continue
        position = order.index(feature.path)
        if position < last:
            diagnostics.append(
                Diagnostic(
                    feature.path_span,
                    codes.FEATURE_ORDER,
                    f"feature `{feature.name}` comes before the one listed above it in the "
                    "forward pass; list features in forward order (out_indices counts them so)",
                )
            )
        last = max(last, position)
        output = outputs[feature.path]
        tap = _tap(feature.name, feature.path, output, shapes, geometry, feature.span)
        if tap is None:
            diagnostics.append(
                Diagnostic(
                    feature.path_span,
                    codes.FEATURE_NOT_SPATIAL,
                    f"`{feature.path}` gives no feature map (C x H x W): it comes after the "
                    "global pool or its shape is unknown",
                )
            )
            continue
        taps.append(tap)
    return taps, diagnostics


def _outputs(order: Sequence[str], nodes: Sequence[str]) -> dict[str, str]:
    """Each network-level layer's and stage's output node: the last node inside it in forward
    order (a reused module's later applications, `relu#2`, are not inside it)."""
    found: dict[str, str] = {}
    names = set(order)
    for node in nodes:
        top = node
        while top not in names and "." in top:
            top = top.rsplit(".", 1)[0]
        if top in names:
            found[top] = node
    return found


def _tap(name, module, node, shapes, geometry, span) -> FeatureTap | None:
    shape = shapes.get(node)
    where = geometry.get(node)
    if shape is None or len(shape) != 3 or where is None:
        return None
    stride = where[0] if where[0] == where[1] else (where[0], where[1])
    return FeatureTap(name, module, node, tuple(shape), stride, (where[2], where[3]), span)


def _default(network, outputs, shapes, geometry, spans) -> list[FeatureTap]:
    stages = [
        _tap(s.name, s.name, outputs[s.name], shapes, geometry, s.span)
        for s in network.stages
        if s.name in outputs
    ]
    stages = [t for t in stages if t is not None]
    reached = {t.reduction for t in stages}
    stem: dict[object, FeatureTap] = {}  # the stem's last layer at each reduction
    for layer in network.stem:
        if layer.name in outputs:
            tap = _tap(layer.name, layer.name, outputs[layer.name], shapes, geometry, layer.span)
            if tap is not None:
                stem[tap.reduction] = tap
    return [t for r, t in stem.items() if r not in reached] + stages
