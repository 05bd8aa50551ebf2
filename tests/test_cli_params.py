"""`--param NAME=VALUE` sets a network param for one command, as a derived network would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resgen.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_params_turn_resnet50_into_resnext50(capsys):
    # torchvision's resnext50_32x4d is resnet50 with groups=32, width_per_group=4: 25,028,904.
    assert (
        main(
            [
                "summary",
                "specs/resnet50.arch",
                "--json",
                "--param",
                "groups=32",
                "--param",
                "width_per_group=4",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["params"] == 25_028_904


def test_build_bakes_the_values_in_as_defaults(tmp_path):
    assert (
        main(
            [
                "build",
                "specs/resnet18.arch",
                "--param",
                "num_classes=10",
                "-o",
                str(tmp_path),
                "--no-diagram",
            ]
        )
        == 0
    )
    assert "num_classes: int = 10," in (tmp_path / "resnet18.py").read_text()


def test_a_param_that_breaks_the_network_is_reported(capsys):
    # groups=0 makes the bottleneck's width 0: located at the conv in std.resnet that uses it.
    assert main(["check", "specs/resnet50.arch", "--param", "groups=0"]) == 1
    err = capsys.readouterr().err
    assert "`channels` of conv must be at least 1, not 0 (`width`) [bad-argument]" in err
    assert "note: `layer1.0.conv1` comes from stage `layer1`" in err


@pytest.mark.parametrize(
    "option, code, column",
    [
        ("widht_per_group=4", "unknown-argument", 5),
        ("groups=(", "unexpected-eof", 14),
        ("groups=other", "unknown-name", 14),
        ("groups=rund(1.5)", "unknown-function", 14),
        ("groups=1 block Z() { main { c = conv(1, 1) } }", "syntax", 1),
    ],
)
def test_bad_params_are_located_in_the_option(capsys, option, code, column):
    assert main(["check", "specs/resnet50.arch", "--param", option, "--json"]) == 1
    (record,) = json.loads(capsys.readouterr().out)
    name = option.split("=")[0]
    assert (record["file"], record["line"], record["column"], record["code"]) == (
        f"--param {name}",
        1,
        column,
        code,
    )


def test_a_param_given_twice_is_an_error(capsys):
    assert (
        main(
            ["check", "specs/resnet50.arch", "--param", "groups=2", "--param", "groups=3", "--json"]
        )
        == 1
    )
    (record,) = json.loads(capsys.readouterr().out)
    assert record["code"] == "duplicate-argument"


def test_an_op_is_a_param_value(capsys):
    """`--param act_layer=silu(inplace=true)` swaps every activation, as a derived network
    would: the parameter count stays timm's resnet50_gn's, and the summary names the new op."""
    gn = "specs/timm/resnet50_gn.arch"
    args = ["--param", "act_layer=silu(inplace=true)", "--param", "drop_path_rate=0.1"]
    assert main(["summary", gn, "--json", "--depth", "3", *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params"] == 25_557_032  # timm.create_model("resnet50_gn")
    ops_used = {layer["op"] for layer in summary["layers"]}
    assert {"silu", "drop_path", "groupnorm"} <= ops_used and "relu" not in ops_used


@pytest.mark.parametrize(
    "option, code, column",
    [
        ("norm_layer=groupnorm(bogus=1)", "unknown-argument", 28),
        ("norm_layer=groupnorm(x)", "bad-argument", 28),
        ("norm_layer=groupnrom(32)", "unknown-function", 18),
    ],
)
def test_bad_op_values_are_located_in_the_option(capsys, option, code, column):
    assert main(["check", "specs/timm/resnet50_gn.arch", "--param", option, "--json"]) == 1
    record = json.loads(capsys.readouterr().out)[0]
    where = (record["file"], record["column"], record["code"])
    assert where == ("--param norm_layer", column, code)
