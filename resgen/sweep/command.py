"""`resgen sweep`: the command's steps, from options to table, files and exit code.

Exit codes: 0 when the sweep ran (whatever fraction of variants is invalid: they are data), 1
when the spec itself cannot be read (a syntax or name error: there is nothing to sweep), 2 for a
usage error (a bad option, a file of someone else's in the way without --force).
"""

from __future__ import annotations

import sys
from pathlib import Path

from resgen.diagnostics import SpecError, UsageError, print_diagnostics

OK, SPEC_ERROR, USAGE = 0, 1, 2
MAX_VARIANTS = 1_000_000  # a grid beyond this is a mistake: --sample it instead
PROGRESS_DELAY = 1.0  # seconds before the progress bar shows: short sweeps print none


def parse_inputs(texts: list[str]) -> list:
    """`--input 224x224,3x320x320 --input 512x512` -> [(None, 224, 224), (3, 320, 320), ...];
    no option: [None] (the spec's own input)."""
    found = []
    for text in texts:
        for item in text.split(","):
            parts = item.strip().lower().replace("×", "x").split("x")
            if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
                raise UsageError(f"--input: expected CxHxW or HxW, e.g. 3x224x224, not {item!r}")
            values = [int(p) for p in parts]
            if any(v < 1 for v in values):
                raise UsageError(f"--input: sizes must be at least 1: {item!r}")
            shape = tuple(values) if len(values) == 3 else (None, *values)
            if shape not in found:
                found.append(shape)
    return found or [None]


def run(args) -> int:
    from resgen.sweep import Record, Sweep, default_jobs, query, report, space

    try:
        sweep = Sweep.load(args.spec)
    except SpecError as err:
        print_diagnostics(err.diagnostics, getattr(err, "sources", {}) or _sources(args.spec))
        return SPEC_ERROR
    sources = sweep.sources
    inputs = parse_inputs(args.input)
    try:
        axes = space.parse_axes(args.param, sweep.network, sources)
        stepless = [a.name for a in axes if a.values is None and a.range.step is None]
        if args.sample is None and stepless:
            raise UsageError(
                f"--param {stepless[0]}: a range of numbers with a fraction needs a STEP to be "
                "listed (LO..HI:STEP), or --sample N to draw from it"
            )
        if args.sample is None and space.grid_size(axes) > MAX_VARIANTS:
            raise UsageError(
                f"the grid has {space.grid_size(axes):,} variants: use --sample N to draw some"
            )
        example = Record(0, sweep.defaults(), (1, 1, 1), True, None, 1, 1, None, 1)
        where = (
            query.parse_where(args.where, sweep.network, sources, example)
            if args.where is not None
            else None
        )
    except SpecError as err:
        print_diagnostics(err.diagnostics, sources)
        return USAGE
    try:
        keys = query.parse_sort(args.sort, sweep.network) if args.sort else []
        colour = _colour(args, axes, sweep.network, query)
    except ValueError as err:
        raise UsageError(str(err)) from None
    targets = [(args.csv, "csv"), (args.plot, "plot")]
    for path, kind in targets:
        if path:
            _check_target(Path(path), kind, args.force)

    variants = (
        space.sample(axes, args.sample, args.seed)
        if args.sample is not None
        else list(space.grid(axes))
    )
    total = len(variants) * len(inputs)
    jobs = args.jobs or default_jobs()
    with _progress(total) as bar:
        records = sweep.run(variants, inputs, jobs=jobs, progress=bar)
    shown = [r for r in records if where is None or where.matches(r)]
    shown = query.sort_records(shown, keys) if keys else shown
    names = [a.name for a in axes] or []

    if args.csv:
        _write(
            Path(args.csv),
            report.to_csv(shown, [p.name for p in sweep.network.params]),
            "csv",
            args.force,
        )
    if args.plot:
        from resgen.sweep.plot import plot

        fmt = Path(args.plot).suffix.lower().lstrip(".")
        _write(
            Path(args.plot),
            plot(shown, colour, title=_title(args, sweep, total), fmt=fmt),
            "plot",
            args.force,
        )
    if args.json:
        print(report.to_json(shown))
    else:
        if shown:
            print(report.table(shown, names))
        print(report.summary_line(total, shown, where is not None))
    for path, _ in targets:
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return OK


def _sources(path: str) -> dict[str, str]:
    try:
        return {path: Path(path).read_text(encoding="utf-8", errors="replace")}
    except OSError:
        return {}


def _title(args, sweep, total: int) -> str:
    how = f"{args.sample} samples, seed {args.seed}" if args.sample else "grid"
    return f"{sweep.network.name}: {total} variants ({how})"


def _colour(args, axes, network, query) -> str | None:
    """The quantity that colours the plot: --colour, or the first swept param."""
    if not args.plot:
        return None
    if args.colour:
        problem = query._name_problem(args.colour, network)
        if problem:
            raise ValueError(f"--colour {args.colour}: {problem}")
        return args.colour
    return axes[0].name if axes else None


class _progress:
    """A tqdm bar on stderr when it is a terminal and the sweep takes more than a second."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __enter__(self):
        if sys.stderr.isatty():
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: --jobs forks this process
            self.bar = tqdm(
                total=self.total,
                unit="variant",
                delay=PROGRESS_DELAY,
                leave=False,
                file=sys.stderr,
            )
            return self.bar.update
        return None

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_target(path: Path, kind: str, force: bool) -> None:
    """Refuse before any work: a target of the wrong type, or a file resgen did not write."""
    from resgen.sweep.files import target_problem_for

    problem = target_problem_for(path, kind, force)
    if problem:
        raise UsageError(problem)


def _write(path: Path, data: bytes | str, kind: str, force: bool) -> None:
    from resgen.sweep.files import write

    write(path, data, kind, force)
