"""resgen's benchmark: medians and ratios measured in one run (issue 8).

Not collected by pytest (the file name does not start with test_). Run from the repository root:

    python3 tests/benchmark.py            # about 3 minutes on a 2-core machine
    python3 tests/benchmark.py --quick    # fewer repetitions, for a smoke run
    python3 tests/benchmark.py --ab REV   # per-stage timings of commit REV vs the working tree

Every ratio compares two things measured in this same run, on this machine, so the numbers move
together when the machine is slower or busier.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run_process(argv: list[str], cwd: Path) -> tuple[float, int]:
    """Wall time and peak RSS (MiB) of one child process, measured by the kernel (wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{proc.stderr.read()}")
    return elapsed, usage.ru_maxrss // 1024  # ru_maxrss is KiB on Linux


def whole_process(argv: list[str], repeats: int, cwd: Path) -> tuple[float, int]:
    runs = [run_process(argv, cwd) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), max(m for _, m in runs)


def section(title: str) -> None:
    print(f"\n== {title}")


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<48} {value:>14}  {note}")


def bench_whole_process(repeats: int, out_dir: Path) -> None:
    section("whole process (median wall time, peak RSS)")
    py = sys.executable
    spec = str(SPECS / "resnet152.arch")
    check = whole_process([py, "-m", "resgen", "check", spec], repeats, ROOT)
    build = whole_process(
        [py, "-m", "resgen", "build", spec, "-o", str(out_dir), "--no-diagram"], repeats, ROOT
    )
    torchinfo_cmd = (
        "import torch, torchvision, torchinfo; torch.set_num_threads(2); "
        "torchinfo.summary(torchvision.models.resnet152(), (1, 3, 224, 224), verbose=0)"
    )
    reference = whole_process([py, "-c", torchinfo_cmd], max(3, repeats // 2), ROOT)
    row("resgen check specs/resnet152.arch", f"{check[0]:.3f} s", f"{check[1]} MiB")
    row("resgen build specs/resnet152.arch", f"{build[0]:.3f} s", f"{build[1]} MiB")
    row("torchinfo.summary(resnet152) (reference)", f"{reference[0]:.3f} s", f"{reference[1]} MiB")
    row(
        "speed-up of check over torchinfo",
        f"{reference[0] / check[0]:.1f}x",
        "target >= 15x",
    )
    row("speed-up of build over torchinfo", f"{reference[0] / build[0]:.1f}x")
    row("memory of check vs torchinfo", f"{check[1] / reference[1]:.2f}", "target: check <= 60 MiB")


def bench_memory(repeats: int) -> None:
    """What `--batch` adds to `resgen summary` (issue 18, target: under 5%): whole processes,
    interleaved so machine load hits all alike, and the estimate itself in process."""
    from resgen import memory, shapes
    from resgen.precision import Settings
    from resgen.resolve import load

    section("memory per batch: what --batch adds to summary, specs/resnet152.arch (median)")
    py, spec = sys.executable, str(SPECS / "resnet152.arch")
    variants = {
        "summary": [py, "-m", "resgen", "summary", spec],
        "summary --batch 256": [py, "-m", "resgen", "summary", spec, "--batch", "256"],
        "summary --batch 256 --train --budget 24GiB": [
            *[py, "-m", "resgen", "summary", spec, "--batch", "256", "--train"],
            *["--budget", "24GiB"],
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, argv in variants.items():
            times[name].append(run_process(argv, ROOT)[0])
    base = statistics.median(times["summary"])
    for name, samples in times.items():
        value = statistics.median(samples)
        note = "" if name == "summary" else f"{(value / base - 1) * 100:+.1f}% (target < 5%)"
        row(name, f"{value:.3f} s", note)
    loaded = load(spec)
    analysis = shapes.analyse(loaded)
    settings = Settings(256)
    timings = {
        "analyse (for scale)": lambda: shapes.analyse(loaded),
        "estimate: parameters, inference peak": lambda: memory.estimate(loaded, analysis, settings),
        "estimate with the training step": lambda: (
            memory.estimate(loaded, analysis, settings).training_peak_bytes
        ),
    }
    for label, fn in timings.items():
        row(label, f"{median_time(fn, repeats * 3) * 1000:.1f} ms")


def bench_stages(repeats: int) -> None:
    from resgen import codegen, diagram, graph, shapes
    from resgen.parser import parse_text
    from resgen.resolve import load

    section("in process, per stage, specs/resnet152.arch (median)")
    path = SPECS / "resnet152.arch"
    text = path.read_text()
    parse_text(text, str(path))  # warm the cached LALR parser
    spec = load(path)
    analysis = shapes.analyse(spec)
    timings = {
        "parse (text -> SpecFile)": lambda: parse_text(text, str(path)),
        "load (parse + imports + resolve)": lambda: load(path),
        "lower to the graph": lambda: graph.lower(spec),
        "shapes + checks + counts (analyse)": lambda: shapes.analyse(spec),
        "code rendering (generate)": lambda: codegen.generate(spec, analysis),
        "DOT rendering, layers level": lambda: diagram.to_dot(spec, analysis, detail="layers"),
    }
    for label, fn in timings.items():
        row(label, f"{median_time(fn, repeats) * 1000:.1f} ms")


# One round of the per-stage timings, run in a child process against one checkout (A/B runs).
_STAGE_ROUND = r"""
import json, statistics, sys, time
from resgen import codegen, diagram, graph, shapes
from resgen.parser import parse_text
from resgen.resolve import load

path, repeats = sys.argv[1], int(sys.argv[2])
text = open(path).read()
parse_text(text, path)
spec = load(path)
analysis = shapes.analyse(spec)
stages = {
    "parse": lambda: parse_text(text, path),
    "load": lambda: load(path),
    "lower": lambda: graph.lower(spec),
    "analyse": lambda: shapes.analyse(spec),
    "generate": lambda: codegen.generate(spec, analysis),
    "dot (layers)": lambda: diagram.to_dot(spec, analysis, detail="layers"),
}
samples = {}
for name, fn in stages.items():
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    samples[name] = times
print(json.dumps(samples))
"""


def _checkout(rev: str, into: Path) -> Path:
    """`rev` (or the working tree for "WORKTREE") as an importable copy: the package with its
    templates inside it, as the wheel ships them, so nothing resolves to another checkout."""
    import shutil

    tree = into / "tree"
    if rev == "WORKTREE":
        shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    else:
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x"], cwd=tree, input=archive.stdout, check=True)
    overlay = into / "overlay"
    shutil.copytree(tree / "resgen", overlay / "resgen")
    shutil.copytree(tree / "templates", overlay / "resgen" / "templates", dirs_exist_ok=True)
    return overlay


def bench_ab(base: str, rounds: int, repeats: int, tmp: Path) -> None:
    """Per-stage timings of `base` (A) and the working tree (B), interleaved round by round in
    one run so machine load hits both alike; prints medians and the ratio B/A per stage."""
    section(f"A/B per stage, specs/resnet152.arch: A = {base}, B = working tree (median)")
    overlays = {"A": _checkout(base, tmp / "A"), "B": _checkout("WORKTREE", tmp / "B")}
    spec = str(SPECS / "resnet152.arch")
    samples: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    for _ in range(rounds):
        for label, overlay in overlays.items():
            env = {**os.environ, "PYTHONPATH": str(overlay)}
            out = subprocess.run(
                [sys.executable, "-c", _STAGE_ROUND, spec, str(repeats)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for stage, times in json.loads(out).items():
                samples[label].setdefault(stage, []).extend(times)
    for stage in samples["A"]:
        a, b = (statistics.median(samples[k][stage]) for k in ("A", "B"))
        row(stage, f"{a * 1000:.2f} / {b * 1000:.2f} ms", f"B/A = {b / a:.3f}")


def synthetic_spec(blocks: int) -> str:
    per_stage = [blocks // 4 + (1 if i < blocks % 4 else 0) for i in range(4)]
    stages = "\n".join(
        f"    stage layer{i + 1} = {n} x BasicBlock({16 << i}{', stride=2' if i else ''})"
        for i, n in enumerate(per_stage)
        if n
    )
    return f"""import std.resnet
network synthetic_{blocks} {{
    input 3x64x64
    stem {{ conv1 = conv(16, 3, padding=1, bias=false) bn1 = batchnorm relu = relu }}
{stages}
    head {{ avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(10) }}
}}
"""


def bench_scaling(tmp: Path) -> None:
    from resgen import shapes
    from resgen.resolve import load

    section("scaling: check a synthetic spec of N blocks (target: flat time per block)")
    for blocks in (100, 1_000, 10_000):
        path = tmp / f"synthetic_{blocks}.arch"
        path.write_text(synthetic_spec(blocks))
        seconds = median_time(lambda p=path: shapes.analyse(load(p)), 3 if blocks < 10_000 else 1)
        note = "target <= 3 s" if blocks == 10_000 else ""
        row(
            f"{blocks:>6} blocks",
            f"{seconds:.3f} s",
            f"{seconds / blocks * 1e6:.0f} us/block  {note}",
        )


def bench_throughput(tmp: Path, count: int) -> None:
    from resgen import shapes
    from resgen.resolve import load

    section(f"throughput: check {count} variant specs in one process")
    rng = random.Random(0)
    paths = []
    for i in range(count):
        depths = [rng.randint(1, 6) for _ in range(4)]
        width = rng.choice([32, 48, 64, 96])
        block = rng.choice(["BasicBlock", "Bottleneck"])
        stages = "\n".join(
            f"    stage layer{j + 1} = {d} x {block}({width << j}{', stride=2' if j else ''})"
            for j, d in enumerate(depths)
        )
        path = tmp / f"variant_{i}.arch"
        path.write_text(f"""import std.resnet
network variant_{i} {{
    input 3x{rng.choice([128, 160, 224])}x{rng.choice([128, 192, 224])}
    stem {{ conv1 = conv({width}, 7, stride=2, padding=3, bias=false) bn1 = batchnorm
           relu = relu maxpool = maxpool(3, stride=2, padding=1) }}
{stages}
    head {{ avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(1000) }}
}}
""")
        paths.append(path)
    start = time.perf_counter()
    errors = sum(not shapes.analyse(load(p)).ok for p in paths)
    seconds = time.perf_counter() - start
    row(
        f"{count} specs",
        f"{seconds:.2f} s",
        f"{count / seconds:.0f} specs/s (target >= 200); {errors} with errors",
    )


SWEEP_SPEC = """import std.resnet
network variant {
    input 3x224x224
    param width = 64
    param d1 = 3
    param d2 = 4
    param d3 = 6
    param d4 = 3
    stem { conv1 = conv(width, 7, stride=2, padding=3, bias=false) bn1 = batchnorm
           relu = relu maxpool = maxpool(3, stride=2, padding=1) }
    stage layer1 = d1 x Bottleneck(width)
    stage layer2 = d2 x Bottleneck(width * 2, stride=2)
    stage layer3 = d3 x Bottleneck(width * 4, stride=2)
    stage layer4 = d4 x Bottleneck(width * 8, stride=2)
    head { avgpool = adaptive_avgpool(1) flatten = flatten fc = linear(1000) }
}
"""


def bench_sweep(tmp: Path, count: int) -> None:
    """The same `count` resnet50-sized variants (depths 1..6 per stage, four widths, nine input
    sizes) three ways: one spec file per variant, loaded and analysed in one process (the route
    before `resgen sweep`), `Sweep.run` in one process, and `Sweep.run` in two processes."""
    from resgen import shapes
    from resgen.resolve import load
    from resgen.sweep import Sweep

    section(f"sweep: {count} resnet50-sized variants (Bottleneck, 4 stages, 1-6 blocks each)")
    rng = random.Random(1)
    variants = [
        {
            "width": rng.choice([32, 48, 64, 96]),
            **{f"d{j}": rng.randint(1, 6) for j in range(1, 5)},
            "input": (None, rng.choice([128, 160, 224]), rng.choice([128, 192, 224])),
        }
        for _ in range(count)
    ]
    spec = tmp / "sweep_variant.arch"
    spec.write_text(SWEEP_SPEC)
    paths = []
    for i, v in enumerate(variants):
        text = SWEEP_SPEC.replace("input 3x224x224", f"input 3x{v['input'][1]}x{v['input'][2]}")
        for name in ("width", "d1", "d2", "d3", "d4"):
            text = text.replace(f"param {name} = ", f"param {name} = {v[name]}  # ")
        path = tmp / f"sweep_file_{i}.arch"
        path.write_text(text)
        paths.append(path)

    start = time.perf_counter()
    files = [shapes.analyse(load(p)) for p in paths]
    per_file = time.perf_counter() - start

    def swept(jobs: int) -> tuple[float, list]:
        start = time.perf_counter()
        sweep = Sweep.load(str(spec))
        work = [  # each variant at its own input size, as its file has it
            (i, {k: v[k] for k in ("width", "d1", "d2", "d3", "d4")}, v["input"])
            for i, v in enumerate(variants)
        ]
        records = sweep.run_work(work, jobs=jobs)
        return time.perf_counter() - start, records

    one, records = swept(1)
    two, _ = swept(2)
    agree = sorted((a.params, a.macs) for a in files) == sorted(
        (r.param_count, r.macs) for r in records
    )
    row(
        "one spec file per variant (load + analyse)",
        f"{per_file:.2f} s",
        f"{count / per_file:.0f} variants/s",
    )
    row(
        "Sweep.run, one process",
        f"{one:.2f} s",
        f"{count / one:.0f} variants/s, {per_file / one:.1f}x the files (target >= 5x)",
    )
    row(
        "Sweep.run, --jobs 2",
        f"{two:.2f} s",
        f"{count / two:.0f} variants/s, {one / two:.2f}x one process",
    )
    row("same params and MACs both ways", "yes" if agree else "NO")


def bench_forward(repeats: int) -> None:
    import torch
    import torchvision

    from resgen import build_module

    section("generated resnet50 vs torchvision resnet50: CPU forward, eval, 1x3x224x224")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ours = build_module(SPECS / "resnet50.arch").eval()
    reference = torchvision.models.resnet50().eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 224, 224)
    samples: dict[str, list[float]] = {"resgen": [], "torchvision": []}
    with torch.inference_mode():
        for model in (ours, reference):  # warm-up
            model(x)
        for _ in range(repeats):  # interleaved, so drift hits both equally
            for name, model in (("resgen", ours), ("torchvision", reference)):
                start = time.perf_counter()
                model(x)
                samples[name].append(time.perf_counter() - start)
    ours_t, ref_t = (statistics.median(samples[k]) for k in ("resgen", "torchvision"))
    row("generated resnet50", f"{ours_t * 1000:.1f} ms")
    row("torchvision resnet50 (reference)", f"{ref_t * 1000:.1f} ms")
    row("ratio generated / torchvision", f"{ours_t / ref_t:.3f}", "target within 3%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--ab",
        metavar="REV",
        help="only compare per-stage timings of commit REV with the working tree, interleaved",
    )
    args = parser.parse_args()
    if args.ab:
        with tempfile.TemporaryDirectory() as tmp_name:
            bench_ab(args.ab, 3 if args.quick else 10, 5 if args.quick else 15, Path(tmp_name))
        return
    repeats = 3 if args.quick else 9
    print(f"resgen benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bench_whole_process(repeats, tmp / "out")
        bench_memory(repeats)
        bench_stages(repeats)
        bench_scaling(tmp)
        bench_throughput(tmp, 200 if args.quick else 1000)
        bench_sweep(tmp, 300 if args.quick else 2000)
        bench_forward(10 if args.quick else 30)


if __name__ == "__main__":
    main()
