"""Memory per batch, before training: parameters, gradients, optimizer state, the activations
autograd saves, the inference peak and a training peak estimate, per stage and in total.

Every number comes from the analysed graph and each op's declaration (resgen.ops: its
parameters, buffers, where its output lives and what it saves for backward), walked by
resgen.storage; nothing here imports torch. Sizes are bytes; a count of elements times the size
of its dtype (float32 4, bfloat16 and float16 2, int64 8, bool 1).

    parameters_bytes        sum(p.numel() * p.element_size() for p in model.parameters())
    buffers_bytes           the same over model.buffers() (num_batches_tracked stays int64)
    gradients_bytes         one gradient per parameter, in its dtype
    optimizer_bytes         the state torch.optim keeps after the first step: none for plain SGD,
                            momentum_buffer for SGD with momentum, exp_avg and exp_avg_sq for
                            Adam and AdamW plus a float32 `step` tensor per parameter tensor
                            (kept on the CPU unless `capturable` or `fused`); amsgrad, which adds
                            max_exp_avg_sq, is not modelled
    activations_saved_bytes the distinct storages autograd saves in one training forward pass
                            (saved_tensors_hooks' view), parameters and buffers excluded; the
                            input batch is counted when the first layer saves it, and under
                            autocast its low-precision copies of inputs and weights are
    inference_peak_bytes    the largest total of live activation storages during a no-grad,
                            eval-mode forward pass of the generated code, counting the input
                            batch (the caller holds it throughout) and the output once it exists
                            (and, under autocast, its cached weight copies)
    training_peak_bytes     the estimate of README's "Memory" section: parameters, buffers and
                            optimizer state, plus the largest of (a) the training forward pass
                            (saved activations accumulating, the rest as in inference), (b) each
                            step of the backward pass in reverse layer order (saved activations
                            still needed, the parameter gradients made so far, the gradient the
                            layer receives and the one it produces, and the gradient a residual
                            block holds for its other path), (c) the optimizer step (all
                            gradients and the step's temporaries: foreach Adam on CUDA takes one
                            copy of every parameter for sqrt(exp_avg_sq), the per-tensor loop on
                            the CPU two of one tensor and one of the one before). Not modelled:
                            cuDNN/cuBLAS workspaces, the CUDA caching allocator's rounding and
                            fragmentation, the loss function's own tensors, GradScaler.

Every total is affine in the batch size (fixed bytes + bytes per sample), so the largest batch
that fits a budget is exact: the smallest, over every point of the passes, of
(budget - fixed) // per_sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from resgen import codes
from resgen.diagnostics import Diagnostic
from resgen.graph import INPUT, OUTPUT, SHORTCUT
from resgen.ops.base import Merge
from resgen.precision import DTYPE_BYTES, STATE_BUFFERS, STEP_BYTES, Settings
from resgen.storage import Pass, inputs_of, kept_outputs, numel, walk
from resgen.text import bytes_text

TERMS = ("parameters", "buffers", "optimizer", "gradients", "activations_saved", "transient")
TERM_TEXT = {
    "parameters": "parameters",
    "buffers": "buffers",
    "optimizer": "optimizer state",
    "gradients": "gradients",
    "activations_saved": "saved activations",
    "transient": "temporaries",
}


class Affine(NamedTuple):
    """Bytes as `fixed + per_sample * batch`."""

    fixed: int = 0
    per_sample: int = 0

    def at(self, batch: int) -> int:
        return self.fixed + self.per_sample * batch


ZERO = Affine()


class Point(NamedTuple):
    """One moment of the training step: where it is, and each term's bytes there (TERMS
    order), fixed and per sample."""

    phase: str  # "forward", "backward", "optimizer step"
    node: str | None
    fixed: tuple[int, ...]
    per_sample: tuple[int, ...]

    @property
    def terms(self) -> tuple[Affine, ...]:
        return tuple(Affine(f, p) for f, p in zip(self.fixed, self.per_sample, strict=True))

    @property
    def total(self) -> Affine:
        return Affine(sum(self.fixed), sum(self.per_sample))


@dataclass
class StageMemory:
    name: str
    parameters_bytes: int = 0
    gradients_bytes: int = 0
    optimizer_bytes: int = 0
    buffers_bytes: int = 0
    activations_saved_bytes: int = 0
    inference_peak_bytes: int = 0

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "name"}


class Memory:
    """The estimate of one analysed network for `settings`; every `*_bytes` is at
    settings.batch. The training step (saved activations, its moments and peak) is worked out
    the first time it is asked for: an inference-only summary does not pay for it.

    stages  per stage (stem, each stage, head): StageMemory
    live    per node: live bytes while it runs in inference (Affine), for summary rows
    saved   per node: the saved activations it allocates (Affine)
    points  the training step's moments (Point); `totals` their affine totals, for budgets
    """

    def __init__(self, spec, analysis, settings: Settings):
        self.settings = settings
        self._analysis = analysis
        precision = settings.precision
        nodes, shapes = analysis.nodes, analysis.shapes
        self._inputs = inputs_of(analysis.nodes, analysis.lowering.edges)
        sources = {
            name: block.shortcut.source
            for name, block in spec.blocks.items()
            if block.shortcut is not None and block.shortcut.source is not None
        }
        self._kept = kept_outputs(nodes, analysis.block_types, sources)
        batch = settings.batch
        param_size = self._param_size = DTYPE_BYTES[precision.param_dtype]
        stages = {s.name: StageMemory(s.name) for s in analysis.stages}
        self._stages = stages

        # parameters, buffers, gradients, optimizer state
        params = buffers = tensors = 0
        sizes: list[int] = []  # elements of each parameter tensor, in model.parameters() order
        memo: dict[tuple, tuple[list[int], int]] = {}
        first = {name for name, block in spec.blocks.items() if block.shortcut_first}
        for node_id in _registration_order(nodes, analysis.block_types, first):
            node = nodes[node_id]
            if node.kind in (INPUT, OUTPUT) or node.module not in (None, node_id):
                continue  # a reused module's parameters are its first application's
            result = shapes[node_id]
            if not result.params and not result.buffers:
                continue
            key = (node.op, id(node.args), result.in_shape)
            found = memo.get(key)
            if found is None:
                found = memo[key] = (
                    _parameter_tensors(node, result),
                    _buffer_bytes(node, result, param_size),
                )
            tensor_sizes, buffer_bytes = found
            params += result.params
            buffers += buffer_bytes
            tensors += len(tensor_sizes)
            sizes += tensor_sizes
            stage = stages.get(node.stage)
            if stage is not None:
                p = result.params * param_size
                stage.parameters_bytes += p
                stage.gradients_bytes += p
                stage.optimizer_bytes += _optimizer(settings.optimizer, p, len(tensor_sizes))
                stage.buffers_bytes += buffer_bytes
        self.parameters_bytes = self.gradients_bytes = params * param_size
        self.buffers_bytes = buffers
        self.parameter_tensors = tensors
        self.optimizer_bytes = _optimizer(settings.optimizer, self.parameters_bytes, tensors)
        self._step_transient = _step_transient(settings, [n * param_size for n in sizes])

        # inference: eval mode, no grad
        inference = walk(
            nodes,
            self._inputs,
            shapes,
            precision=precision,
            training=False,
            device=settings.device,
            kept=self._kept,
            held=analysis.lowering.held_locals,
        )
        live = _sweep(inference, saved_stay=False)
        self.live = {n: Affine(*amount) for n, amount in zip(inference.order, live, strict=True)}
        self.inference = max(self.live.values(), key=lambda a: a.at(batch), default=ZERO)
        self.inference_peak_bytes = self.inference.at(batch)
        for node_id, amount in self.live.items():
            node = nodes[node_id]
            stage = stages.get(node.stage)
            if stage is not None and node.kind not in (INPUT, OUTPUT):
                stage.inference_peak_bytes = max(stage.inference_peak_bytes, amount.at(batch))

    # -- the training step, on first use
    @cached_property
    def _training(self) -> tuple[int, dict[str, Affine], list[Point], list[Affine]]:
        analysis, settings = self._analysis, self.settings
        nodes, batch = analysis.nodes, settings.batch
        training = walk(
            nodes,
            self._inputs,
            analysis.shapes,
            precision=settings.precision,
            training=True,
            device=settings.device,
            kept=self._kept,
            held=analysis.lowering.held_locals,
        )
        saved_by_node: dict[str, list[int]] = {}
        saved_fixed = saved_per = 0
        for store in training.stores:
            if not store.saved_by:
                continue
            fixed, per = store.affine
            saved_fixed += fixed
            saved_per += per
            share = saved_by_node.setdefault(store.node, [0, 0])
            share[0] += fixed
            share[1] += per
            stage = self._stages.get(nodes[store.node].stage)
            if stage is not None:
                stage.activations_saved_bytes += fixed + per * batch
        persistent = (self.parameters_bytes, self.buffers_bytes, self.optimizer_bytes)
        points, totals = _training_points(
            analysis,
            training,
            persistent,
            self.parameters_bytes,
            self._step_transient,
            self._param_size,
        )
        saved = {n: Affine(*share) for n, share in saved_by_node.items()}
        return saved_fixed + saved_per * batch, saved, points, totals

    @property
    def activations_saved_bytes(self) -> int:
        return self._training[0]

    @property
    def saved(self) -> dict[str, Affine]:
        return self._training[1]

    @property
    def points(self) -> list[Point]:
        return [Point(*raw) for raw in self._training[2]]

    @property
    def totals(self) -> list[tuple[int, int]]:
        """Each moment's (fixed, per-sample) total bytes."""
        return self._training[3]

    @property
    def training_peak_bytes(self) -> int:
        return self.training_peak(self.settings.batch)

    @property
    def stages(self) -> list[StageMemory]:
        """Per stage, every field (working out the training step)."""
        self._training  # noqa: B018 - fills in each stage's saved activations
        return list(self._stages.values())

    @property
    def stage_peaks(self) -> dict[str, int]:
        """Per stage, the inference peak only (no training step needed)."""
        return {name: stage.inference_peak_bytes for name, stage in self._stages.items()}

    # -- budgets
    def peak(self, batch: int) -> Point:
        """The moment of the training step with the most memory at `batch`."""
        totals = self.totals
        best = max(range(len(totals)), key=lambda i: totals[i][0] + totals[i][1] * batch)
        return Point(*self._training[2][best])

    def training_peak(self, batch: int) -> int:
        return max(fixed + per * batch for fixed, per in self.totals)

    def max_batch(self, budget: int) -> int | None:
        """The largest batch whose training peak fits `budget` bytes; None when 1 does not."""
        best: int | None = None
        for fixed, per in self.totals:
            if per <= 0:
                if fixed > budget:
                    return None
                continue
            fits = (budget - fixed) // per
            best = fits if best is None or fits < best else best
        if best is None or best < 1:
            return None
        return best

    def dominant(self, batch: int) -> tuple[str, float]:
        """The largest term of the training peak at `batch`, and its share of the total."""
        point = self.peak(batch)
        values = [f + p * batch for f, p in zip(point.fixed, point.per_sample, strict=True)]
        index = max(range(len(values)), key=values.__getitem__)
        total = sum(values)
        return TERMS[index], (values[index] / total if total else 0.0)

    def as_dict(self, budget: int | None = None) -> dict:
        result = {
            **self.settings.as_dict(),
            "parameters_bytes": self.parameters_bytes,
            "gradients_bytes": self.gradients_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "buffers_bytes": self.buffers_bytes,
            "activations_saved_bytes": self.activations_saved_bytes,
            "inference_peak_bytes": self.inference_peak_bytes,
            "training_peak_bytes": self.training_peak_bytes,
        }
        if budget is not None:
            result["budget_bytes"] = budget
            result["max_batch"] = self.max_batch(budget)
        return result


def estimate(spec, analysis, settings: Settings | None = None) -> Memory:
    """The memory of `spec`'s network as analysed (resgen.shapes.Analysis, best without errors:
    shapes an error left unknown count as nothing) for `settings` (default: batch 1, float32,
    SGD with momentum, CUDA)."""
    return Memory(spec, analysis, settings or Settings())


# ---------------------------------------------------------------------------------------------
# Parameters and optimizer state


def _registration_order(nodes, block_types, first: set[str]) -> list[str]:
    """The nodes in the order their modules are registered (`model.parameters()` order): the
    forward order, except that a block whose shortcut is written before its main path (`first`:
    those block types) registers the shortcut's modules first."""
    early: dict[str, list[str]] = {}  # block instance -> its shortcut's nodes
    for node_id, node in nodes.items():
        if node.branch == SHORTCUT and block_types.get(node.block) in first:
            early.setdefault(node.block, []).append(node_id)
    if not early:
        return list(nodes)
    moved = {node_id for ids in early.values() for node_id in ids}
    order: list[str] = []
    for node_id, node in nodes.items():
        if node_id in moved:
            continue
        block = node.block
        while block:  # entering a block (or a block nested in it): its shortcut first
            if block in early:
                order += early.pop(block)
            block = block.rpartition(".")[0]
        order.append(node_id)
    return order


def _parameter_tensors(node, result) -> list[int]:
    """The sizes (elements) of a node's parameter tensors, in `module.parameters()` order. An op
    whose declared shapes do not add up to its count is taken as one tensor."""
    if not result.params:
        return []
    shapes = ()
    if node.known and result.in_shape is not None:
        try:
            shapes = node.op.parameters(node.args, result.in_shape)
        except (KeyError, TypeError, IndexError):
            shapes = ()
    sizes = [numel(s) for s in shapes]
    return sizes if sum(sizes) == result.params else [result.params]


def _buffer_bytes(node, result, param_size: int) -> int:
    if not result.buffers:
        return 0
    fixed = 0
    if node.known and result.in_shape is not None:
        fixed = sum(
            numel(b.shape)
            for b in node.op.buffers(node.args, result.in_shape)
            if b.dtype == "int64"
        )
    return (result.buffers - fixed) * param_size + fixed * DTYPE_BYTES["int64"]


def _optimizer(optimizer: str, parameter_bytes: int, tensors: int) -> int:
    state = STATE_BUFFERS[optimizer] * parameter_bytes
    return state + (STEP_BYTES * tensors if optimizer in ("adam", "adamw") else 0)


def _step_transient(settings: Settings, sizes: list[int]) -> int:
    """What optimizer.step() allocates for a moment (torch/optim/adam.py, sgd.py), `sizes` the
    parameter tensors' bytes in order. SGD updates in place. Adam's foreach implementation
    (CUDA's default) takes torch._foreach_sqrt(exp_avg_sqs), a copy of every parameter; its
    per-tensor loop (the CPU's) makes `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt)`
    while the previous tensor's `denom` is still bound: two of one size and one of the last."""
    if settings.optimizer not in ("adam", "adamw") or not sizes:
        return 0
    if settings.device == "cuda":
        return sum(sizes)
    return max(2 * size + previous for previous, size in zip([0, *sizes], sizes, strict=False))


# ---------------------------------------------------------------------------------------------
# Live bytes over a pass


def _sweep(walked: Pass, saved_stay: bool) -> list[tuple[int, int]]:
    """Live (fixed, per-sample) bytes at each position: every store from its allocation to its
    release (saved stores, with `saved_stay`, to the end of the pass)."""
    size = len(walked.order)
    delta_fixed = [0] * (size + 1)
    delta_per = [0] * (size + 1)
    for store in walked.stores:
        fixed, per = store.affine
        end = size - 1 if saved_stay and store.saved_by else store.release
        delta_fixed[store.at] += fixed
        delta_per[store.at] += per
        delta_fixed[end + 1] -= fixed
        delta_per[end + 1] -= per
    live, fixed, per = [], 0, 0
    for i in range(size):
        fixed += delta_fixed[i]
        per += delta_per[i]
        live.append((fixed, per))
    return live


def _training_points(
    analysis, training: Pass, persistent, parameter_bytes, step_transient, param_size
) -> tuple[list[tuple], list[tuple[int, int]]]:
    """The moments of one training step (see the module docstring): (phase, node, fixed terms,
    per-sample terms) tuples in TERMS order, and each one's (fixed, per-sample) total."""
    nodes, shapes = analysis.nodes, analysis.shapes
    order, values, stores = training.order, training.values, training.stores
    size = len(order)
    parameters, buffers, optimizer = persistent
    base = parameters + buffers + optimizer
    points: list[tuple] = []
    totals: list[tuple[int, int]] = []

    # (a) forward: saved stores accumulate; the rest live as the code holds them
    saved_at_fixed, saved_at_per = [0] * size, [0] * size
    for store in stores:
        if store.saved_by:
            fixed, per = store.affine
            saved_at_fixed[store.at] += fixed
            saved_at_per[store.at] += per
    live = _sweep(training, saved_stay=True)
    saved_fixed = saved_per = 0
    for i, node_id in enumerate(order):
        saved_fixed += saved_at_fixed[i]
        saved_per += saved_at_per[i]
        live_fixed, live_per = live[i]
        points.append(
            (
                "forward",
                node_id,
                (parameters, buffers, optimizer, 0, saved_fixed, live_fixed - saved_fixed),
                (0, 0, 0, 0, saved_per, live_per - saved_per),
            )
        )
        totals.append((base + live_fixed, live_per))

    # (b) backward, last layer first. The caller holds the input batch and the output (logits,
    # loss) throughout; a saved store is freed after the backward of its first saver.
    held_fixed = held_per = 0
    for node_id in (INPUT, OUTPUT):
        store = stores[values[node_id].store] if node_id in values else None
        if store is not None and not store.saved_by:
            fixed, per = store.affine
            held_fixed += fixed
            held_per += per
    freed_fixed, freed_per = [0] * size, [0] * size
    for store in stores:
        if store.saved_by:
            fixed, per = store.affine
            first = min(store.saved_by)
            freed_fixed[first] += fixed
            freed_per[first] += per
    pending = _pending(analysis, training)
    grads = 0
    for i in range(size - 1, -1, -1):
        node_id = order[i]
        node = nodes[node_id]
        if node.kind not in (INPUT, OUTPUT) and values[node_id].requires_grad:
            if node.module in (None, node_id):
                grads += shapes[node_id].params * param_size
            transient = _gradient(training, node) + pending[i] + held_per
            points.append(
                (
                    "backward",
                    node_id,
                    (parameters, buffers, optimizer, grads, saved_fixed, held_fixed),
                    (0, 0, 0, 0, saved_per, transient),
                )
            )
            totals.append((base + grads + saved_fixed + held_fixed, saved_per + transient))
        saved_fixed -= freed_fixed[i]
        saved_per -= freed_per[i]

    # (c) the optimizer step
    points.append(
        (
            "optimizer step",
            None,
            (parameters, buffers, optimizer, parameter_bytes, 0, step_transient),
            (0, 0, 0, 0, 0, 0),
        )
    )
    totals.append((base + parameter_bytes + step_transient, 0))
    return points, totals


def _value_bytes(walked: Pass, node_id: str) -> int:
    """A node's output, per sample."""
    value = walked.values[node_id]
    if value.shape is None:
        return 0
    return numel(value.shape) * DTYPE_BYTES[value.dtype]


def _gradient(walked: Pass, node) -> int:
    """The gradient a node's backward receives (its output's size) and the ones it produces
    (its inputs' sizes; none for a view or the input itself, nor for a residual sum, whose
    backward hands the gradient to both inputs unchanged), per sample."""
    received = _value_bytes(walked, node.id)
    passes = isinstance(node.op, Merge) and node.op.residual
    if walked.storage.get(node.id) == "input" or passes:
        return received
    produced = 0
    for source, _ in walked.inputs[node.id]:
        if walked.values[source].requires_grad:
            produced += _value_bytes(walked, source)
    return received + produced


def _pending(analysis, walked: Pass) -> list[int]:
    """Per position, per sample: the gradients residual blocks hold for their other path while
    this node's backward runs (the block input's gradient, from the shortcut or the identity)."""
    size = len(walked.order)
    delta = [0] * (size + 1)
    first: dict[str, int] = {}
    for i, node_id in enumerate(walked.order):
        block = analysis.nodes[node_id].block
        if block is not None and block not in first:
            while block:
                first.setdefault(block, i)
                block = block.rpartition(".")[0]
    for i, node_id in enumerate(walked.order):
        node = analysis.nodes[node_id]
        if not isinstance(node.op, Merge) or node.block not in first:
            continue
        start = first[node.block]
        sources = walked.inputs[walked.order[start]]
        block_input = sources[0][0] if sources else None
        if block_input is None or not walked.values[block_input].requires_grad:
            continue
        amount = _value_bytes(walked, block_input)
        delta[start] += amount
        delta[i] -= amount
    result, running = [], 0
    for i in range(size):
        running += delta[i]
        result.append(running)
    return result


# ---------------------------------------------------------------------------------------------
# Words

OPTIMIZER_NAMES = {"sgd": "SGD", "momentum": "SGD with momentum", "adam": "Adam", "adamw": "AdamW"}


def describe(settings: Settings) -> str:
    """`bfloat16, AdamW, on CUDA` or `mixed precision (float16), SGD with momentum, on CUDA`."""
    dtype = f"mixed precision ({settings.dtype})" if settings.amp else settings.dtype
    device = "CUDA" if settings.device == "cuda" else "the CPU"
    return f"{dtype}, {OPTIMIZER_NAMES[settings.optimizer]}, on {device}"


def budget_warning(spec, memory: Memory, budget: int) -> Diagnostic | None:
    """The `over-budget` warning of `check --batch B --budget SIZE`, at the network; None when
    the training peak at B fits."""
    settings = memory.settings
    peak = memory.training_peak_bytes
    if peak <= budget:
        return None
    fits = memory.max_batch(budget)
    term, share = memory.dominant(settings.batch)
    answer = "not even batch 1 fits" if fits is None else f"the largest batch that fits is {fits}"
    message = (
        f"training at batch {settings.batch} ({describe(settings)}) needs an estimated "
        f"{bytes_text(peak)}, over the budget of {bytes_text(budget)}: {answer} "
        f"({TERM_TEXT[term]}: {share:.0%} of the peak)"
    )
    hint = "a smaller --batch, --dtype bfloat16 or --amp, or an optimizer with less state"
    return Diagnostic(spec.network.span, codes.OVER_BUDGET, message, "warning", hint=hint)
