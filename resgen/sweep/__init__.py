"""Design-space sweeps: many variants of one spec, checked and counted in one run.

The spec is parsed, resolved and elaborated once (resgen.plan). A variant is a set of param
values and an input size: its plan is the elaborated one with the params' values bound, and it is
counted without a graph (resgen.sweep.evaluate); only a variant with an error gets the full
analysis, for its located diagnostic. Invalid variants are data: a sweep that ran exits 0.

    sweep = Sweep.load("specs/resnet50.arch")
    axes = space.parse_axes(["width_per_group=32..128:16"], sweep.network, sweep.sources)
    records = sweep.run(space.grid(axes), inputs=[None])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from resgen import spec as S
from resgen.diagnostics import Diagnostic
from resgen.expr import Value
from resgen.plan import NetworkPlan

# The metrics of a record, by the name --where and --sort use (reserved there: see where.py).
METRICS = (
    "valid",
    "param_count",
    "macs",
    "memory",
    "output_stride",
    "input_c",
    "input_h",
    "input_w",
)


@dataclass(frozen=True)
class Record:
    """One (variant, input) of a sweep: the JSON record of `resgen sweep --json`.

    params        the variant's param values (the spec's defaults for params not swept)
    input         [C, H, W] as analysed
    valid         the variant checks without errors (warnings allowed)
    error         the first error: code, message and where (file, line, column); None if valid
    param_count   parameters, as torch counts them; None when invalid
    macs          multiply-accumulates (torchvision's convention); None when invalid
    memory        training memory in bytes at a batch size; None (not estimated by this resgen)
    output_stride the last stage's output stride, an int (a [h, w] pair when they differ)
    """

    index: int
    params: dict[str, Value]
    input: tuple[int, int, int]
    valid: bool
    error: dict | None
    param_count: int | None
    macs: int | None
    memory: int | None = None
    output_stride: int | tuple[int, int] | None = None

    def as_json(self) -> dict:
        return {
            "params": {k: _json_value(v) for k, v in self.params.items()},
            "input": list(self.input),
            "valid": self.valid,
            "error": self.error,
            "param_count": self.param_count,
            "macs": self.macs,
            "memory": self.memory,
            "output_stride": _json_value(self.output_stride),
        }

    def metrics(self) -> dict[str, Value]:
        """The record's numbers by metric name, for --where and --sort (unknown ones left out)."""
        found = {
            "valid": self.valid,
            "param_count": self.param_count,
            "macs": self.macs,
            "memory": self.memory,
            "output_stride": self.output_stride,
            "input_c": self.input[0],
            "input_h": self.input[1],
            "input_w": self.input[2],
        }
        return {k: v for k, v in found.items() if v is not None}


def _json_value(value):
    return list(value) if isinstance(value, tuple) else value


def _stride(stride: tuple[int, int] | None):
    if stride is None:
        return None
    return stride[0] if stride[0] == stride[1] else tuple(stride)


def error_record(d: Diagnostic) -> dict:
    return {
        "code": str(d.code),
        "message": d.message,
        "file": d.span.file,
        "line": d.span.line,
        "column": d.span.column,
    }


@dataclass
class Sweep:
    """A spec loaded once, ready to count variants."""

    spec: S.Spec
    plan: NetworkPlan
    sources: dict[str, str]
    memo: dict = field(default_factory=dict)
    _defaults: dict | None = None

    @classmethod
    def load(cls, path: str) -> Sweep:
        """Raises SpecError (the spec itself has errors at its own defaults is fine: each
        variant is checked on its own) or UsageError."""
        from resgen.diagnostics import Diagnostic as D
        from resgen.diagnostics import SpecError
        from resgen.plan import elaborate
        from resgen.resolve import Loader

        loader = Loader()
        spec = loader.load(path)
        if spec.network is None:
            from resgen import codes

            raise SpecError(
                [D(spec.span, codes.NO_NETWORK, f"{spec.path} defines no network to sweep")]
            )
        return cls(spec, elaborate(spec), loader.sources)

    @property
    def network(self) -> S.Network:
        return self.spec.network

    def defaults(self) -> dict[str, Value | None]:
        """The spec's own param values (None for one whose default does not evaluate)."""
        if self._defaults is None:
            self._defaults = self._evaluate_defaults()
        return self._defaults

    def _evaluate_defaults(self) -> dict[str, Value | None]:
        from resgen import expr as E

        env: dict[str, Value] = {}
        for p in self.network.params:
            try:
                env[p.name] = E.evaluate(p.default, env) if p.default is not None else None
            except E.EvalError:
                env[p.name] = None
        return env

    def evaluate(self, index: int, values: Mapping[str, Value], input_shape) -> Record:
        """One variant at one input size (`input_shape` as --input gives it, None: the spec's)."""
        from resgen.sweep.evaluate import count, with_params

        plan = with_params(self.plan, values)
        params = {**self.defaults(), **values}
        counted = count(plan, input_shape, self.memo)
        if counted is not None:
            return Record(
                index,
                params,
                counted.input,
                True,
                None,
                counted.params,
                counted.macs,
                None,
                _stride(counted.output_stride),
            )
        return self._analysed(index, params, plan, input_shape)

    def _analysed(self, index, params, plan: NetworkPlan, input_shape) -> Record:
        from resgen.diagnostics import SpecError
        from resgen.shapes import analyse

        spec = self.spec.model_copy(update={"network": plan.network})
        try:
            analysis = analyse(spec, input_shape, plan, sizes=False)
        except SpecError as err:  # a limit: no graph at all
            first = err.diagnostics[0]
            shape = input_shape or (None, None, None)
            return Record(index, params, tuple(shape), False, error_record(first), None, None)
        errors = analysis.errors
        if not errors:  # the full analysis is the reference: trust it
            return Record(
                index,
                params,
                analysis.input,
                True,
                None,
                analysis.params,
                analysis.macs,
                None,
                _stride(analysis.output_stride),
            )
        # No counts: a variant with an error is not a network (a failed let leaves out whole
        # stages, and what the analysis could count is not the model's count).
        return Record(index, params, analysis.input, False, error_record(errors[0]), None, None)

    def run(
        self,
        variants: Iterable[Mapping[str, Value]],
        inputs: Sequence,
        jobs: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> list[Record]:
        """Every (variant, input), in order: variant by variant, each at every input size.
        `jobs` > 1 counts them in that many processes; `progress(n)` hears of n more done."""
        work = [
            (i * len(inputs) + k, dict(v), inp)
            for i, v in enumerate(variants)
            for k, inp in enumerate(inputs)
        ]
        return self.run_work(work, jobs, progress)

    def run_work(self, work: Sequence[tuple], jobs: int = 1, progress=None) -> list[Record]:
        """(index, values, input) items, counted in order (in `jobs` processes when many)."""
        if jobs > 1 and len(work) >= 2 * _CHUNK:
            return _parallel(self, list(work), jobs, progress)
        records = []
        for index, values, inp in work:
            records.append(self.evaluate(index, values, inp))
            if progress is not None:
                progress(1)
        return records


_CHUNK = 64  # variants a worker takes at a time: big enough to amortise the hand-over


# Set in each worker process (fork): the Sweep it counts with.
_WORKER: Sweep | None = None


def _work(chunk):
    return [_WORKER.evaluate(index, values, inp) for index, values, inp in chunk]


def _parallel(sweep: Sweep, work, jobs: int, progress) -> list[Record]:
    """Chunks of the work in `jobs` forked processes; the spec, already loaded, is inherited."""
    import multiprocessing

    global _WORKER
    _WORKER = sweep
    # Few, large chunks: each worker's block memo warms up once, and the results cross between
    # processes in a few batches; 8 per worker still keep the progress bar moving.
    size = max(_CHUNK, -(-len(work) // (8 * jobs)))
    chunks = [work[i : i + size] for i in range(0, len(work), size)]
    context = multiprocessing.get_context("fork")
    records: list[Record] = []
    with context.Pool(jobs) as pool:
        for done in pool.imap(_work, chunks):
            records.extend(done)
            if progress is not None:
                progress(len(done))
    _WORKER = None
    return records


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
