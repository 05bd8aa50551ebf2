"""Feature taps: which module outputs a network returns as feature maps, and what each one is.

A network's `features` section names them (`c3 = layer2`: a stage, a layer of the stem or head
written at network level, or a first-level item of a network-level `seq`, `stem.conv2`); without
one, the default rule gives timm's choice for its ResNet-family models. The units of the stem and
head are their network-level layers, a `seq` counting as its first-level items, as timm's
features_only models flatten one level of nn.Sequential (timm/models/_features.py, _module_list
with flatten_sequential):
  - every stage's output, in order (timm's ResNet, RegNet, ConvNeXt, ResNetV2: one per stage);
  - before them, for each output stride the stem reaches that no stage has, the stem's last unit
    at that stride (ResNet's `act1` at stride 2, before its max pool takes the stride to 4,
    where `layer1` is; RegNet's `stem` at 2; ByobNet's `Stem` (byobnet.py) the conv before its
    next strided layer, `stem.conv2` of the tiered stem; none for ConvNeXt, whose stem ends at
    layer 0's stride 4);
  - after them, the last head unit before the global pool that is not a norm or an activation
    (ByobNet's and NormFreeNet's `final_conv`, byobnet.py/nfnet.py: `feature_info += [...,
    module='final_conv']` after `stage_feat[:-1]`) stands for the last stage at its stride; a
    final norm and activation (ResNetV2's pre-activation `norm`, ConvNeXt's `norm_pre`) are not
    features (timm lists the stage before them).
Where timm's choice is per model (NFNet's stem tap before its last activation, BiT's conv before
its pad), a spec lists timm's taps in `features`.
Each tap gets its static shape, channels, reduction (output stride, timm's `reduction`) and
receptive field from the shape analysis; `feature_info` of the generated model lists them in
this order, and `out_indices` indexes this list, as in timm (resnet50: 0 is act1, 4 is layer4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from resgen import codes
from resgen import spec as S
from resgen.diagnostics import Diagnostic, Span, did_you_mean
from resgen.ops.base import ACT, NORM


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
    nodes: Mapping[str, object],
    shapes: Mapping[str, tuple | None],
    geometry: Mapping[str, tuple | None],
) -> tuple[list[FeatureTap], list[Diagnostic]]:
    """The network's taps and the errors of its `features` section. `nodes` maps the graph's
    node ids, in forward order, to their nodes (resgen.graph.Node), `shapes` gives their output
    shapes and `geometry` their (stride h, stride w, receptive field h, receptive field w), None
    once global."""
    stem, head = _units(network.stem), _units(network.head)
    order = [name for name, _ in stem]
    order += [stage.name for stage in network.stages]
    order += [name for name, _ in head]
    outputs = _outputs(order, nodes)
    if network.features is None:
        return _default(network, stem, head, outputs, nodes, shapes, geometry), []
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
                    "by its name at network level, or of an item of a network-level seq "
                    "(`stem.conv2`)",
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


def _units(layers: Sequence[S.Layer]) -> list[tuple[str, S.Layer]]:
    """The module paths a feature can name in the stem or head, in forward order: each
    network-level layer, after the first-level items of a `seq` (`stem.conv2`, `stem.0`)."""
    units = []
    for layer in layers:
        if layer.kind == "seq":
            for index, item in enumerate(layer.items):
                units.append((f"{layer.name}.{index if item.name is None else item.name}", item))
        units.append((layer.name, layer))
    return units


def _outputs(order: Sequence[str], nodes: Iterable[str]) -> dict[str, str]:
    """Each unit's and stage's output node: the last node inside it in forward order (a reused
    module's later applications, `relu#2`, are not inside it)."""
    found: dict[str, str] = {}
    names = set(order)
    for node in nodes:
        path = node
        while True:
            if path in names:
                found[path] = node
            if "." not in path:
                break
            path = path.rsplit(".", 1)[0]
    return found


def _outside(by_reduction, tap: FeatureTap) -> bool:
    """Whether a network-level layer (not a seq's item) is the stem's tap at `tap`'s reduction."""
    found = by_reduction.get(tap.reduction)
    return found is not None and "." not in found[1].module


def _tap(name, module, node, shapes, geometry, span) -> FeatureTap | None:
    shape = shapes.get(node)
    where = geometry.get(node)
    if shape is None or len(shape) != 3 or where is None:
        return None
    stride = where[0] if where[0] == where[1] else (where[0], where[1])
    return FeatureTap(name, module, node, tuple(shape), stride, (where[2], where[3]), span)


def _default(network, stem, head, outputs, nodes, shapes, geometry) -> list[FeatureTap]:
    """The module docstring's rule."""
    stages = [
        _tap(s.name, s.name, outputs[s.name], shapes, geometry, s.span)
        for s in network.stages
        if s.name in outputs
    ]
    stages = [t for t in stages if t is not None]
    reached = {t.reduction for t in stages}
    # the stem's last network-level layer at each reduction; where none is, a seq's last item
    by_reduction: dict[object, tuple[int, FeatureTap]] = {}
    for inside in (False, True):
        for position, (name, layer) in enumerate(stem):
            if name not in outputs or (layer.kind == "seq" and layer.items):
                continue
            if ("." in name) != inside:
                continue
            tap = _tap(name, name, outputs[name], shapes, geometry, layer.span)
            if tap is not None and not (inside and _outside(by_reduction, tap)):
                by_reduction[tap.reduction] = (position, tap)
    stem_taps = sorted(v for r, v in by_reduction.items() if r not in reached)
    taps = [t for _, t in stem_taps] + stages
    last = None  # the last head unit before the global pool that is no norm or activation
    for name, layer in head:
        if name not in outputs or (layer.kind == "seq" and layer.items):
            continue
        node = nodes.get(name)
        family = getattr(getattr(node, "op", None), "family", None)
        if family in (NORM, ACT):
            continue
        tap = _tap(name, name, outputs[name], shapes, geometry, layer.span)
        if tap is not None:
            last = tap
    if last is not None:
        if taps and taps[-1].reduction == last.reduction and stages and taps[-1] is stages[-1]:
            taps.pop()
        taps.append(last)
    return taps
