"""The `resgen` command line. Each sub-command is a thin function over the library.

Exit codes: 0 ok, 1 a spec has errors (or verification found a difference), 2 usage error.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from resgen.diagnostics import Diagnostic, SpecError, UsageError, print_diagnostics
from resgen.precision import AUTOCAST_DEFAULT, DEVICES, FLOATS, OPTIMIZERS, Settings
from resgen.resolve import Loader
from resgen.text import parse_size

EXIT_OK, EXIT_SPEC_ERROR, EXIT_USAGE = 0, 1, 2


def parse_input(text: str) -> tuple[int | None, int, int]:
    """`3x512x512` or `512x384` (H x W, channels from the spec)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} has four sizes: 3-D (video) inputs, C x T x H x W, are out of scope; "
            "resgen's networks are 2-D (nn.Conv2d): give CxHxW or HxW"
        )
    if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected CxHxW or HxW, e.g. 3x224x224, not {text!r}")
    values = [int(p) for p in parts]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be at least 1: {text!r}")
    return (values[0], values[1], values[2]) if len(values) == 3 else (None, *values)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _memory_size(text: str) -> float:
    """`8GiB`, `512MiB`, `8GB` (resgen.text.parse_size: a unit is required, as for --budget) or
    `none` (no limit: infinity)."""
    if text.strip().lower() == "none":
        return math.inf
    return _size(text)


def _add_input(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        type=parse_input,
        metavar="[C]xHxW",
        help="override the spec's input shape, e.g. 3x512x512 or 512x384",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a network param, e.g. --param width_mult=0.5 (repeatable)",
    )


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_memory(p: argparse.ArgumentParser, command: str) -> None:
    """The memory options (README, "Memory"): summary and diagram report, check warns."""
    g = p.add_argument_group("memory per batch (no torch needed)")
    g.add_argument(
        "--batch",
        type=_positive,
        metavar="B",
        help="estimate memory for a batch of B samples"
        + (" (with --budget: warn when it does not fit)" if command == "check" else ""),
    )
    g.add_argument(
        "--dtype",
        choices=FLOATS,
        help="the model's dtype (default float32); with --amp, autocast's low precision",
    )
    g.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: float32 parameters and optimizer state, autocast to --dtype "
        "(default: float16 on cuda, bfloat16 on cpu)",
    )
    if command != "check":
        g.add_argument(
            "--train",
            action="store_true",
            help="show the training step: gradients, optimizer state, saved activations, peak",
        )
    g.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        help="the optimizer whose state to count (default momentum)",
    )
    g.add_argument(
        "--device",
        choices=DEVICES,
        help="where it trains (default cuda): dropout's saved mask and the optimizer step differ",
    )
    g.add_argument(
        "--budget",
        type=_size,
        metavar="SIZE",
        help="memory available, e.g. 24GiB (2^30 bytes) or 24GB (10^9): the largest batch whose "
        "training peak fits",
    )


def memory_settings(args) -> Settings | None:
    """The Settings the memory options ask for; None when none was given. Raises UsageError
    for options that do not go together."""
    batch, budget = getattr(args, "batch", None), getattr(args, "budget", None)
    given = [
        flag
        for flag, value in (
            ("--dtype", args.dtype),
            ("--amp", args.amp),
            ("--train", getattr(args, "train", False)),
            ("--optimizer", args.optimizer),
            ("--device", args.device),
        )
        if value
    ]
    check = args.command == "check"
    if check and batch is not None and budget is None:
        raise UsageError("check --batch B needs --budget SIZE: it warns when B does not fit")
    if batch is None and budget is None:
        if given:
            needs = "--batch B --budget SIZE" if check else "--batch B (or --budget SIZE)"
            raise UsageError(f"{given[0]} needs {needs}")
        return None
    device = args.device or "cuda"
    dtype = args.dtype or (AUTOCAST_DEFAULT[device] if args.amp else "float32")
    if args.amp and dtype == "float32":
        raise UsageError(
            "--amp computes in a low precision: give --dtype bfloat16 or float16 (or leave "
            "--dtype out)"
        )
    return Settings(batch or 1, dtype, args.amp, args.optimizer or "momentum", device)


def loader_for(args) -> Loader:
    """A Loader that applies the command's --param options."""
    return Loader(params=tuple(getattr(args, "param", None) or ()))


def _version() -> str:
    import resgen

    return resgen.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resgen",
        description="Check, summarise, draw and generate ResNet-family networks from .arch specs.",
    )
    parser.add_argument(
        "--version", action="version", version=f"resgen {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="parse and validate specs (syntax, names, shapes)")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--json", action="store_true", help="print diagnostics as JSON")
    _add_input(p)
    _add_memory(p, "check")

    p = sub.add_parser("summary", help="a per-layer table of shapes, parameters and MACs")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--depth",
        type=_positive,
        default=None,
        help="1: stages, 2: blocks, 3: layers inside blocks",
    )
    p.add_argument("--json", action="store_true")
    _add_input(p)
    _add_memory(p, "summary")

    p = sub.add_parser("build", help="generate PyTorch source (and diagrams) for specs")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("-o", "--output", default="generated", metavar="DIR")
    p.add_argument("--templates", default=None, metavar="DIR", help="use your own templates")
    p.add_argument(
        "--force", action="store_true", help="overwrite files that resgen did not generate"
    )
    p.add_argument("--no-diagram", action="store_true", help="write only the Python module")
    _add_input(p)

    p = sub.add_parser(
        "verify", help="build the model in torch and compare with the static prediction"
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "--max-memory",
        type=_memory_size,
        default=None,
        metavar="SIZE",
        help="refuse a model whose estimated memory is over SIZE (e.g. 8GiB, 512MiB; 'none': "
        "no limit; default: half the available memory)",
    )
    _add_input(p)

    p = sub.add_parser("diagram", help="draw the architecture with Graphviz")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--format",
        choices=["svg", "png", "pdf", "dot"],
        default=None,
        help="default: from -o FILE's extension, else svg",
    )
    p.add_argument("--detail", choices=["stages", "blocks", "layers"], default="stages")
    p.add_argument("--rankdir", choices=["LR", "TB"], default="TB")
    p.add_argument("-o", "--output", default=None, metavar="FILE")
    p.add_argument(
        "--force", action="store_true", help="replace a file that resgen did not generate"
    )
    _add_input(p)
    _add_memory(p, "diagram")

    _add_sweep(sub)
    return parser


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="check and count many variants of a spec (grids, ranges, random samples)",
        description="Check and count variants of a spec's params: every combination of the "
        "--param values, or --sample N random ones. Invalid variants are reported as data: "
        "the exit code is 0 whenever the sweep ran.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUES",
        help="values of a network param: 18,34,50 or (2, 1),(1, 2) (a list), 32..128:16 (a "
        "range), 8..256:8~log (log-uniform when sampled); repeatable",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[C]xHxW[,...]",
        help="check each variant at these input sizes (default: the spec's); repeatable",
    )
    p.add_argument("--sample", type=_positive, metavar="N", help="draw N random variants")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="for --sample (default 0)")
    p.add_argument(
        "--where",
        metavar="COND",
        help="keep variants where COND holds, e.g. "
        '"macs <= 4e9 and params <= 25e6" (.arch expressions)',
    )
    p.add_argument(
        "--sort", metavar="KEYS", help="sort by metrics or params: macs, params:desc, depth,macs"
    )
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the records as CSV")
    p.add_argument("--plot", metavar="FILE", help="plot params vs MACs to FILE.png or FILE.svg")
    p.add_argument(
        "--colour",
        "--color",
        dest="colour",
        metavar="NAME",
        help="the metric or param that colours the plot (default: the first swept param)",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=_positive,
        default=None,
        metavar="N",
        help="processes (default: the machine's cores)",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite a --csv/--plot file resgen did not write"
    )


def report(diagnostics: Sequence[Diagnostic], loader: Loader) -> None:
    print_diagnostics(diagnostics, loader.sources)


# ---------------------------------------------------------------------------------------------
# The commands: each imports what it needs, so `resgen check` loads no torch, Jinja or Graphviz.


def cmd_check(args) -> int:
    status = EXIT_OK
    records = []
    settings = memory_settings(args)
    for path in args.specs:
        loader = loader_for(args)
        try:
            diagnostics = list(_check_one(loader, path, args.input, settings, args.budget))
        except SpecError as err:
            diagnostics = err.diagnostics
        except UsageError as err:  # a missing file does not stop the others being checked
            print(f"resgen: error: {err}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        if any(d.severity == "error" for d in diagnostics):
            status = max(status, EXIT_SPEC_ERROR)
        if args.json:
            records.extend(d.as_dict() for d in diagnostics)
        else:
            report(diagnostics, loader)
            if not any(d.severity == "error" for d in diagnostics):
                warnings = sum(d.severity == "warning" for d in diagnostics)
                print(
                    f"{path}: ok"
                    + (f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else "")
                )
    if args.json:
        print(json.dumps(records, indent=2))
    return status


def _check_one(loader: Loader, path: str, input_shape, settings=None, budget=None):
    spec = loader.load(path)
    if spec.network is None:  # a library of blocks: names checked, nothing to lower
        return []
    from resgen.shapes import analyse

    analysis = analyse(spec, input_shape)
    if settings is None or budget is None or not analysis.ok:
        return analysis.diagnostics
    from resgen.memory import budget_warning, estimate

    warning = budget_warning(spec, estimate(spec, analysis, settings), budget)
    return analysis.diagnostics + ([warning] if warning else [])


def cmd_summary(args) -> int:
    from resgen.report import DEFAULT_DEPTH, failed_json, render, to_json
    from resgen.shapes import analyse

    settings = memory_settings(args)
    loader = loader_for(args)
    try:
        spec = loader.load(args.spec)
        analysis = analyse(spec, args.input)  # no network: a no-network error
    except SpecError as err:
        report(err.diagnostics, loader)
        if args.json:  # the diagnostics as data, like check --json, and nothing computed
            print(json.dumps(failed_json(err.diagnostics), indent=2))
        return EXIT_SPEC_ERROR
    if analysis.diagnostics:
        report(analysis.diagnostics, loader)
    memory = _memory(spec, analysis, settings, args)
    if settings is not None and memory is None:
        print("resgen: memory not estimated: the spec has errors", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json(analysis, memory, args.budget), indent=2))
    else:
        depth = DEFAULT_DEPTH if args.depth is None else args.depth
        train = args.train or args.optimizer is not None or args.budget is not None
        print(render(analysis, depth, memory, args.budget, train))
    return EXIT_OK if analysis.ok else EXIT_SPEC_ERROR


def _memory(spec, analysis, settings, args):
    """The memory estimate the options ask for, at --batch (or, given only --budget, at the
    largest batch that fits); None when not asked for or when the spec has errors."""
    if settings is None or not analysis.ok:
        return None
    from dataclasses import replace

    from resgen.memory import estimate

    memory = estimate(spec, analysis, settings)
    if args.batch is None and args.budget is not None:
        fits = memory.max_batch(args.budget)
        if fits is not None and fits != settings.batch:
            memory = estimate(spec, analysis, replace(settings, batch=fits))
    return memory


def cmd_build(args) -> int:
    from resgen.build import build_files, checked, duplicate_stems, output_dir_problem
    from resgen.output import Transaction
    from resgen.render import template_dir

    out_dir = Path(args.output)
    specs = list(dict.fromkeys(args.specs))  # the same path twice is one spec
    problem = duplicate_stems(specs) or output_dir_problem(out_dir)
    if problem:
        raise UsageError(problem)
    templates = template_dir(args.templates)  # missing, unreadable, empty: said before any work
    status = EXIT_OK
    done = []
    with Transaction(
        force=args.force, make_dirs=True
    ) as files:  # all or nothing: see resgen.output
        for path in specs:
            loader = loader_for(args)
            try:
                spec, analysis = checked(loader, path, args.input)
                produced = build_files(
                    spec,
                    analysis,
                    out_dir,
                    Path(path).stem,
                    templates=templates,
                    diagrams=not args.no_diagram,
                )
            except SpecError as err:
                report(err.diagnostics, loader)
                status = EXIT_SPEC_ERROR
                continue
            for i, (target, data) in enumerate(produced):
                refusal = files.stage(target, data)
                if refusal:  # the user's own file is in the way: a usage error, like a bad path
                    print(f"resgen: error: {refusal}", file=sys.stderr)
                    status = max(status, EXIT_USAGE)
                    if i == 0:  # no diagram beside a module that was not written
                        break
                elif i == 0:
                    done.append(f"{path} -> {target}")
    for line in done:
        print(line)
    return status


def cmd_verify(args) -> int:
    from resgen.build import checked, verify
    from resgen.text import shape_text

    status = EXIT_OK
    for path in args.specs:
        loader = loader_for(args)
        try:
            spec, analysis = checked(loader, path, args.input)
            differences, compared = verify(spec, analysis, max_memory=args.max_memory)
        except SpecError as err:
            report(err.diagnostics, loader)
            status = EXIT_SPEC_ERROR
            continue
        if differences:
            status = EXIT_SPEC_ERROR
            print(
                f"{path}: {len(differences)} difference{'s' * (len(differences) != 1)} "
                f"between the prediction and torch:"
            )
            for d in differences:
                print(f"  {d}")
        else:
            print(
                f"{path}: ok ({compared} layer outputs, {analysis.params:,} parameters, "
                f"output {shape_text(analysis.output, unknown='none')} at input "
                f"{shape_text(analysis.input)})"
            )
    return status


def cmd_diagram(args) -> int:
    from resgen import diagram
    from resgen.output import KINDS, Transaction, target_problem
    from resgen.shapes import analyse

    settings = memory_settings(args)
    given = Path(args.output) if args.output and not Path(args.output).is_dir() else None
    suffix = given.suffix.lower() if given is not None else ""
    implied = diagram.KNOWN_SUFFIXES.get(suffix)
    if args.format is None:  # from the file name: `-o net.png` draws a PNG
        args.format = implied or "svg"
    if suffix and implied != args.format:  # never an SVG inside a .jpg
        known = ", ".join(sorted(diagram.KNOWN_SUFFIXES))
        print(
            f"resgen: error: {given} "
            + (
                f"looks like {implied}, but the format is {args.format}: pass --format {implied}"
                if implied
                else f"is not a diagram file resgen writes ({known}): use one of those"
            ),
            file=sys.stderr,
        )
        return EXIT_USAGE
    out = diagram.output_path(args.spec, args.detail, args.format, args.output)
    # Refused before any work: a file of the user's, a directory, a device, a FIFO.
    problem = target_problem(out, KINDS[args.format], args.force)
    if problem:
        raise UsageError(problem)
    loader = loader_for(args)
    try:
        spec = loader.load(args.spec)
        analysis = analyse(spec, args.input)
    except SpecError as err:  # not even a graph to draw
        report(err.diagnostics, loader)
        return EXIT_SPEC_ERROR
    report(analysis.diagnostics, loader)
    status = EXIT_OK if analysis.ok else EXIT_SPEC_ERROR
    memory = _memory(spec, analysis, settings, args)
    try:
        source = diagram.to_dot(spec, analysis, args.detail, args.rankdir, memory, args.train)
    except diagram.TooLarge as err:
        raise UsageError(str(err)) from None
    target, data = out, source.encode("utf-8")
    if args.format != "dot":
        try:
            target, data = out, diagram.render(source, args.format)
        except diagram.GraphvizMissing:
            target = out.with_suffix(".dot")
            status = EXIT_USAGE
        except RuntimeError as err:
            raise UsageError(f"cannot draw {out}: {err}") from None
    with Transaction(force=args.force) as files:
        problem = files.stage(target, data, KINDS[args.format if target == out else "dot"])
        if problem:
            raise UsageError(problem)
    if target != out:
        print(diagram.missing_dot_line(target, out), file=sys.stderr)
    else:
        print(f"wrote {out}")
    return status


def cmd_sweep(args) -> int:
    from resgen.sweep.command import run

    return run(args)


COMMANDS = {
    "check": cmd_check,
    "summary": cmd_summary,
    "build": cmd_build,
    "verify": cmd_verify,
    "diagram": cmd_diagram,
    "sweep": cmd_sweep,
}


class _Stream:
    """A standard stream whose writes never raise: `resgen check bad.arch | head -1` must still
    exit 1, not 0 and not with a traceback. A write that fails (the reader left: EPIPE; a full
    disk; /dev/full: ENOSPC) is remembered and the rest of the output dropped; text the stream's
    encoding cannot hold (a spec's comment on an ASCII terminal) is written with backslash
    escapes instead of failing."""

    def __init__(self, stream):
        self.stream = stream
        self.error: OSError | None = None

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                try:
                    self.stream.write(text)
                except UnicodeEncodeError:
                    encoding = getattr(self.stream, "encoding", None) or "ascii"
                    self.stream.write(
                        text.encode(encoding, "backslashreplace").decode(encoding, "replace")
                    )
            except OSError as err:
                self.error = err
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as err:
                self.error = err

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _silence(stream) -> None:
    """Point a failed stream's descriptor at /dev/null, so the interpreter's own flush at exit
    neither fails again nor prints 'Exception ignored'."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing will flush it at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    real = sys.stdout, sys.stderr
    out, err = _Stream(sys.stdout), _Stream(sys.stderr)
    sys.stdout, sys.stderr = out, err
    try:
        status = _main(argv)
        out.flush()
        err.flush()
    finally:
        sys.stdout, sys.stderr = real
    if err.error is not None:
        _silence(real[1])
    if out.error is not None:
        _silence(real[0])
        if out.error.errno != errno.EPIPE:  # the reader leaving is no error of ours
            reason = (out.error.strerror or str(out.error)).lower()
            if err.error is None:
                print(f"resgen: error: cannot write the output: {reason}", file=real[1])
            status = max(status, EXIT_USAGE)
    return status


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"resgen: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
