"""The memory options of summary, check and diagram (issue 18): what they print, the JSON, the
budget arithmetic, and their usage errors. No torch here; tests/test_memory.py checks the
numbers against torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resgen.cli import main
from resgen.memory import estimate
from resgen.precision import Settings
from resgen.resolve import load
from resgen.shapes import analyse
from resgen.text import bytes_text, parse_size

ROOT = Path(__file__).resolve().parents[1]
RESNET50 = str(ROOT / "specs" / "resnet50.arch")
FIELDS = {
    "parameters_bytes",
    "gradients_bytes",
    "optimizer_bytes",
    "buffers_bytes",
    "activations_saved_bytes",
    "inference_peak_bytes",
    "training_peak_bytes",
}


@pytest.fixture(scope="module")
def resnet50():
    spec = load(RESNET50)
    return spec, analyse(spec)


def test_sizes_need_a_unit_and_tell_gib_from_gb():
    assert parse_size("24GiB") == 24 * 2**30
    assert parse_size("24 GB") == 24 * 10**9
    assert parse_size("1.5tib") == int(1.5 * 2**40)
    assert parse_size("512MiB") == 512 * 2**20
    for bad in ("24", "24 gigs", "-1GiB", "GiB", "0B"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert bytes_text(1536) == "1.50 KiB"
    assert bytes_text(24 * 2**30) == "24.0 GiB"
    assert bytes_text(512) == "512 B"


def test_json_carries_the_memory_object_with_the_issues_field_names(capsys):
    argv = ["summary", RESNET50, "--json", "--batch", "8", "--dtype", "bfloat16"]
    assert main([*argv, "--optimizer", "adamw", "--budget", "24GiB"]) == 0
    data = json.loads(capsys.readouterr().out)
    memory = data["memory"]
    assert FIELDS <= set(memory)
    assert memory["batch"] == 8 and memory["dtype"] == "bfloat16" and memory["amp"] is False
    assert memory["optimizer"] == "adamw" and memory["device"] == "cuda"
    assert memory["budget_bytes"] == 24 * 2**30 and memory["max_batch"] > 8
    stages = {s["name"]: s["memory"] for s in data["stages"]}
    for field in FIELDS - {"training_peak_bytes"}:
        per_stage = [s[field] for s in stages.values()]
        if field == "inference_peak_bytes":
            assert max(per_stage) == memory[field]
        else:
            assert sum(per_stage) == memory[field], field
    assert main(["summary", RESNET50, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memory"] is None


def test_the_largest_batch_fits_and_one_more_does_not(resnet50):
    spec, analysis = resnet50
    for settings in (
        Settings(1, "float32"),
        Settings(1, "bfloat16", optimizer="adamw"),
        Settings(1, "float16", amp=True, optimizer="adam", device="cpu"),
    ):
        memory = estimate(spec, analysis, settings)
        budget = 24 * 2**30
        best = memory.max_batch(budget)
        assert memory.training_peak(best) <= budget < memory.training_peak(best + 1)
        at_best = estimate(spec, analysis, Settings(**{**settings.as_dict(), "batch": best}))
        assert at_best.training_peak_bytes == memory.training_peak(best)
    assert memory.max_batch(memory.training_peak(1) - 1) is None


def test_budget_says_which_term_dominates_and_when_nothing_fits(capsys):
    assert main(["summary", RESNET50, "--budget", "24GiB", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "Budget:             25,769,803,776 bytes (24.00 GiB)" in out
    assert "Largest batch:" in out and "saved activations" in out
    assert "Memory at batch " in out  # shown at the largest batch
    assert main(["summary", RESNET50, "--budget", "100MB", "--optimizer", "adam"]) == 0
    assert "Largest batch:      none: batch 1 needs" in capsys.readouterr().out


def test_summary_table_gains_a_memory_column(capsys):
    assert main(["summary", RESNET50, "--batch", "256"]) == 0
    out = capsys.readouterr().out
    assert " Peak" in out.splitlines()[2] and "Inference peak:" in out
    assert "Training peak" not in out
    assert main(["summary", RESNET50, "--batch", "256", "--train", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert " Saved" in out.splitlines()[2]
    assert "Training peak:" in out and "Optimizer state:" in out and "momentum_buffer" in out


def test_check_warns_over_budget_with_the_largest_batch(capsys):
    argv = ["check", RESNET50, "--batch", "512", "--budget", "24GiB"]
    assert main(argv) == 0  # a warning: the spec is fine
    captured = capsys.readouterr()
    assert "warning: training at batch 512 (float32, SGD with momentum, on CUDA)" in captured.err
    assert "the largest batch that fits is" in captured.err and "[over-budget]" in captured.err
    assert main([*argv[:3], "64", *argv[4:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", RESNET50, "--dtype", "bfloat16"], "--dtype needs --batch B"),
        (["summary", RESNET50, "--train"], "--train needs --batch B"),
        (["summary", RESNET50, "--batch", "2", "--amp", "--dtype", "float32"], "--amp computes"),
        (["check", RESNET50, "--batch", "2"], "check --batch B needs --budget SIZE"),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_bare_number_is_not_a_budget(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", RESNET50, "--budget", "24"])
    assert exit_info.value.code == 2
    assert "expected a size with a unit" in capsys.readouterr().err


def test_diagram_shows_stage_activation_memory(tmp_path):
    out = tmp_path / "d.dot"
    argv = ["diagram", RESNET50, "--format", "dot", "-o", str(out)]
    assert main([*argv, "--batch", "256", "--train"]) == 0
    text = out.read_text()
    assert "activations saved for backward: batch 256, float32" in text
    assert text.count("activations: saves ") == 6  # stem, four stages, head
    assert main([*argv, "--force"]) == 0
    assert "activations" not in out.read_text()


def test_every_dtype_and_device_is_estimated(resnet50):
    """(tests/benchmark.py measures what --batch adds to `summary`; timings are not asserted.)"""
    spec, analysis = resnet50
    for dtype in ("float32", "bfloat16", "float16"):
        for device in ("cuda", "cpu"):
            memory = estimate(spec, analysis, Settings(256, dtype, device=device))
            assert memory.training_peak_bytes > memory.activations_saved_bytes > 0
