"""The RegNet design space as a spec (specs/regnet/regnetx.arch, regnety.arch) against timm and
against the paper's equations.

- The stage widths, depths and group widths the spec computes equal timm's (generate_regnet +
  adjust_widths_groups_comp, float32) for every published regnetx_*/regnety_* configuration.
- At timm's published parameters the spec builds timm's regnetx_002 and regnety_032: strict
  state_dict load, equal eval outputs.
- `resgen sweep --sample 500` over the space against an independent sampler written here from
  the paper (Radosavovic et al. 2020, section 3.3): the same variants, the same fraction of
  four-stage models, and parameter and MAC quantiles within 1%; counts from first principles.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from resgen import cli
from resgen.resolve import Loader
from resgen.shapes import analyse

ROOT = Path(__file__).resolve().parents[1]
REGNETX = ROOT / "specs" / "regnet" / "regnetx.arch"
REGNETY = ROOT / "specs" / "regnet" / "regnety.arch"


def _published():
    regnet = pytest.importorskip("timm.models.regnet")
    return {
        name: cfg
        for name, cfg in regnet.model_cfgs.items()
        if name.startswith(("regnetx_", "regnety_"))
        and cfg.group_min_ratio == 0.0
        and cfg.downsample == "conv1x1"
        and not cfg.preact
        and cfg.act_layer == "relu"
        and cfg.norm_layer == "batchnorm"
    }


def _params(cfg) -> tuple[str, ...]:
    return (f"d={cfg.depth}", f"w0={cfg.w0}", f"wa={cfg.wa}", f"wm={cfg.wm}", f"g={cfg.group_size}")


def test_stage_widths_equal_timms_for_every_published_config():
    regnet = pytest.importorskip("timm.models.regnet")
    published = _published()
    assert len(published) >= 25
    for name, cfg in published.items():
        widths, stages, _ = regnet.generate_regnet(
            cfg.wa, cfg.w0, cfg.wm, cfg.depth, cfg.group_size
        )
        stage_widths, depths = [], []
        for w in widths:
            if w in stage_widths:
                depths[-1] += 1
            else:
                stage_widths.append(w)
                depths.append(1)
        groups = [cfg.group_size] * len(stage_widths)
        final, groups = regnet.adjust_widths_groups_comp(stage_widths, [1.0] * 4, groups, 0.0)
        spec = REGNETY if cfg.se_ratio else REGNETX
        analysis = analyse(Loader(params=_params(cfg)).load(str(spec)), sizes=False)
        assert analysis.ok, name
        ours = [(s.repeats, s.out_shape[0]) for s in analysis.stages[1:-1]]
        assert ours == list(zip(depths, final, strict=True)), name
        convs = [n for n in analysis.nodes.values() if n.id.endswith("b1.conv2.conv")]
        expected = [w // g for w, g in zip(final, groups, strict=True)]
        assert [n.args["groups"] for n in convs] == expected, name


@pytest.mark.parametrize(
    ("spec", "name"),
    [(REGNETX, "regnetx_002"), (REGNETY, "regnety_032")],
)
def test_builds_timms_model(spec, name):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from batchnorms import randomise_batchnorms

    from resgen.build import build_module

    cfg = _published()[name]
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    randomise_batchnorms(reference, seed=1, weight=(0.2, 0.5), var=(0.5, 1.5))
    model = build_module(Loader(params=_params(cfg)).load(str(spec))).eval()
    theirs = reference.state_dict()
    assert list(model.state_dict()) == list(theirs)
    model.load_state_dict(theirs, strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        assert expected.abs().max().item() > 1e-2
        assert (model(x) - expected).abs().max().item() <= 1e-5


def test_a_sample_without_four_stages_is_a_located_design_space_error(capsys):
    argv = ["sweep", str(REGNETX), "--param", "wm=1.5", "--param", "d=3", "--json"]
    assert cli.main(argv) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert not record["valid"]
    error = record["error"]
    assert error["code"] == "design-space" and "not the 4 this network has" in error["message"]
    assert (error["file"], error["line"]) == (str(REGNETX), 24)  # the `let w1 = ...` line


# ---------------------------------------------------------------------------------------------
# The paper's design space, sampled independently

# pycls's RegNet sampler ranges (sweep/config.py REGNET_SAMPLER), the paper's section 3.3
SPACE = ["d=12..28", "w0=8..256:8~log", "wa=8..256:0.1~log", "wm=2..3:0.001~log", "g=8..128:8~log"]
SEED, SAMPLES = 2020, 500


def _log_uniform(u: float, low: float, high: float, q: float) -> float:
    """pycls's log_uniform: log-uniform on (low - min(q, low / 2), high], ceiled to q."""
    floor = low - min(q, low / 2)
    f = math.exp(math.log(floor) + u * (math.log(high) - math.log(floor)))
    return round(math.ceil(round(f / q, 9)) * q, 3)


def _paper_sample(rng: random.Random) -> dict:
    d = 12 + int(rng.random() * 17)
    w0 = int(_log_uniform(rng.random(), 8, 256, 8))
    wa = _log_uniform(rng.random(), 8, 256, 0.1)
    wm = _log_uniform(rng.random(), 2, 3, 0.001)
    g = int(_log_uniform(rng.random(), 8, 128, 8))
    return {"d": d, "w0": w0, "wa": wa, "wm": wm, "g": g}


def _paper_network(p: dict):
    """Stage widths, depths and group widths by the paper's equations (float64, as pycls)."""
    widths = []
    for j in range(p["d"]):
        u = p["w0"] + p["wa"] * j
        s = round(math.log(u / p["w0"]) / math.log(p["wm"]))
        widths.append(8 * round(p["w0"] * p["wm"] ** s / 8))
    stages = sorted(set(widths))
    if len(stages) != 4:
        return None
    result = []
    for w in stages:
        g = min(p["g"], w)
        result.append((round(w / g) * g, widths.count(w), g))
    return result


def _paper_counts(stages) -> tuple[int, int]:
    """Parameters and MACs of a RegNetX at 224x224 from first principles: a 3x3/2 stem of 32,
    per block 1x1, 3x3 grouped (stride 2 in the first), 1x1, each with batch norm, a strided
    1x1 projection where the shape changes, then a linear classifier of 1000."""
    params = 3 * 32 * 9 + 2 * 32
    size = 112
    macs = 3 * 32 * 9 * size * size
    c = 32
    for w, depth, g in stages:
        for i in range(depth):
            out = size // 2 if i == 0 else size
            params += c * w + 9 * w * (w // (w // g)) + w * w + 3 * 2 * w
            macs += c * w * size * size + 9 * w * g * out * out + w * w * out * out
            if i == 0:
                params += c * w + 2 * w
                macs += c * w * out * out
            c, size = w, out
    params += c * 1000 + 1000
    macs += c * 1000
    return params, macs


def _quantiles(values: list[int]) -> list[float]:
    values = sorted(values)
    return [values[min(int(q * len(values)), len(values) - 1)] for q in (0.1, 0.25, 0.5, 0.75, 0.9)]


def test_sampled_space_matches_the_papers_equations(capsys):
    argv = ["sweep", str(REGNETX), "--sample", str(SAMPLES), "--seed", str(SEED)]
    for option in SPACE:
        argv += ["--param", option]
    assert cli.main([*argv, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    rng = random.Random(SEED)
    samples = [_paper_sample(rng) for _ in range(SAMPLES)]
    assert [{k: r["params"][k] for k in "d w0 wa wm g".split()} for r in records] == samples
    paper = [_paper_network(p) for p in samples]
    valid = [r["valid"] for r in records]
    assert 0.2 < sum(valid) / SAMPLES < 0.95  # the four-stage rule does reject some
    assert abs(sum(valid) - sum(p is not None for p in paper)) <= SAMPLES * 0.01
    counts = [_paper_counts(p) for p in paper if p is not None]
    for index, name in ((0, "param_count"), (1, "macs")):
        ours = _quantiles([r[name] for r in records if r["valid"]])
        theirs = _quantiles([c[index] for c in counts])
        close = all(abs(a - b) <= 0.01 * b for a, b in zip(ours, theirs, strict=True))
        assert close, (name, ours, theirs)
