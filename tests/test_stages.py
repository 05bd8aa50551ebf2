"""Stages of several runs (`stage stages.1 = 1 x A(64, stride=2) + 1 x B(64) + 1 x A(64)`):
timm's byobnet stages that mix block types (byobnet.py `interleave_blocks`), checked against
timm's own ByobNet, never against resgen itself:

- a small ByobNet that timm builds from a ByoModelCfg with interleaved bottleneck and
  self-attention blocks: the same state_dict keys in timm's order (`stages.1.0`, `stages.1.1`,
  ...), a strict load, equal eval outputs; each stage's output shape and parameter count as
  torch gives them; the sweep's fast walk gives the analysis' counts;
- the stride goes to the stage's first block only, as timm's create_byob_stages gives it;
- bad runs are located errors (a run of 0 blocks, `stride` in a later run, an unknown block in
  a later run, a run whose blocks cannot take the channels the run before gives);
- a stage of one run is written as before (`nn.Sequential(first, *[rest for _ in range(n)])`),
  and splitting it into runs of the same block changes the code but not the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import timm_coverage as coverage  # noqa: E402

from resgen.api import check_spec  # noqa: E402
from resgen.build import analyse, build_module, generate, load  # noqa: E402
from resgen.graph import runs_text  # noqa: E402
from resgen.plan import elaborate  # noqa: E402
from resgen.sweep.evaluate import count  # noqa: E402

# timm's ByoModelCfg: stage 1 interleaves bottleneck, self-attention, bottleneck (every=1);
# stage 2 starts with the alternate type (first=True): a strided self-attention block, then a
# bottleneck. BoT's attention at 32 x 32 inputs: feat_size 4 in stage 1, 4 then 2 in stage 2.
TINY_BOT = """
import std.byoanet

network tiny_bot {
    class ByobNet
    input 3 x 32 x 32
    stem { stem = TieredStemMaxPool(16) }
    stage stages.0 = 1 x ByobBottleneckAct(32, bottle_ratio=0.25)
    stage stages.1 = 1 x ByobBottleneckAct(64, stride=2, bottle_ratio=0.25)
                   + 1 x FixedSizeSelfAttnBlock(64, 4, bottle_ratio=0.25)
                   + 1 x ByobBottleneckAct(64, bottle_ratio=0.25)
    stage stages.2 = 1 x FixedSizeSelfAttnBlock(96, 4, stride=2, bottle_ratio=0.25)
                   + 1 x ByobBottleneckAct(96, bottle_ratio=0.25)
    head {
        head = seq { global_pool = adaptive_avgpool(1)  flatten = flatten  fc = linear(10) }
    }
}
"""


def _timm_tiny_bot() -> torch.nn.Module:
    from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg, interleave_blocks

    cfg = ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=1, c=32, s=1, gs=0, br=0.25),
            interleave_blocks(types=("bottle", "self_attn"), d=3, c=64, s=2, gs=0, br=0.25),
            interleave_blocks(
                types=("bottle", "self_attn"), d=2, first=True, c=96, s=2, gs=0, br=0.25
            ),
        ),
        stem_chs=16,
        stem_type="tiered",
        stem_pool="maxpool",
        self_attn_layer="bottleneck",
        self_attn_kwargs=dict(),
    )
    return ByobNet(cfg, num_classes=10, img_size=32)


def _write(tmp_path: Path, text: str, name: str = "net.arch") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_bot(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("stages"), TINY_BOT, "tiny_bot.arch")


def test_mixed_stage_is_timms_byobnet(tiny_bot):
    """Keys in timm's order, a strict load, equal eval outputs with random batch-norm
    statistics (timm zero-initialises each block's last norm, which would hide the blocks)."""
    from batchnorms import randomise_batchnorms

    torch.manual_seed(0)
    reference = _timm_tiny_bot().eval()
    randomise_batchnorms(reference, seed=1, weight=(0.2, 0.5), var=(0.5, 1.5))
    with torch.no_grad():
        reference.head.fc.weight.copy_(0.1 * torch.randn(reference.head.fc.weight.shape))
    model = build_module(tiny_bot).eval()
    assert coverage.state_dict_layout(model) == coverage.state_dict_layout(reference)
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = reference(x), model(x)
    assert expected.abs().max().item() > 1e-2  # a signal
    assert (actual - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    # the block types in each stage, in timm's order
    kinds = [[type(block).__name__ for block in stage] for stage in reference.stages]
    ours = [[type(block).__name__ for block in stage] for stage in model.stages]
    assert kinds == [
        ["BottleneckBlock"],
        ["BottleneckBlock", "SelfAttnBlock", "BottleneckBlock"],
        ["SelfAttnBlock", "BottleneckBlock"],
    ]
    assert ours == [
        ["ByobBottleneckAct"],
        ["ByobBottleneckAct", "FixedSizeSelfAttnBlock", "ByobBottleneckAct"],
        ["FixedSizeSelfAttnBlock", "ByobBottleneckAct"],
    ]
    # the stride: only a stage's first block has a shortcut conv, strided after stage 0
    # (timm's is an nn.Identity where the shape stays, ours None)
    for number, (stage, theirs) in enumerate(zip(model.stages, reference.stages, strict=True)):
        for index, (block, their_block) in enumerate(zip(stage, theirs, strict=True)):
            conv = getattr(their_block.shortcut, "conv", None)
            assert (conv is not None) == (index == 0) == (block.shortcut is not None)
            if conv is not None:
                assert conv.stride == block.shortcut.conv.stride == ((2, 2) if number else (1, 1))


def test_stage_shapes_counts_and_runs_are_torchs(tiny_bot):
    """Each stage's output shape from torch's forward hooks, its parameters torch's numel
    sum; the runs as the summary lists them; the sweep's fast walk gives the same counts."""
    from resgen import summary

    analysis = analyse(load(tiny_bot))
    assert analysis.ok
    model = build_module(tiny_bot).eval()
    seen = {}
    for index, stage in enumerate(model.stages):
        stage.register_forward_hook(
            lambda _m, _i, out, index=index: seen.__setitem__(index, tuple(out.shape[1:]))
        )
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    infos = {info.name: info for info in analysis.stages}
    for index, stage in enumerate(model.stages):
        info = infos[f"stages.{index}"]
        assert tuple(info.out_shape) == seen[index]
        assert info.params == sum(p.numel() for p in stage.parameters())
        assert info.repeats == len(stage)
        assert info.blocks == [f"stages.{index}.{k}" for k in range(len(stage))]
    assert infos["stages.1"].runs == [
        (1, "ByobBottleneckAct"),
        (1, "FixedSizeSelfAttnBlock"),
        (1, "ByobBottleneckAct"),
    ]
    assert infos["stages.1"].text() == (
        "1 x ByobBottleneckAct + 1 x FixedSizeSelfAttnBlock + 1 x ByobBottleneckAct"
    )
    # runs that repeat a pattern (timm's interleave_blocks) are written once
    assert runs_text([(1, "A"), (1, "B")] * 3) == "3 x (1 x A + 1 x B)"
    assert runs_text([(3, "A"), (1, "B")] * 3, "×") == "3 × (3 × A + 1 × B)"
    assert runs_text([(1, "A"), (2, "A")]) == "1 x A + 2 x A"
    row = next(s for s in summary(tiny_bot)["stages"] if s["name"] == "stages.2")
    assert row["runs"] == [[1, "FixedSizeSelfAttnBlock"], [1, "ByobBottleneckAct"]]
    assert row["repeats"] == 2
    assert analysis.params == sum(p.numel() for p in model.parameters())
    counted = count(elaborate(load(tiny_bot)), None, {})
    assert counted is not None
    assert (counted.params, counted.macs) == (analysis.params, analysis.macs)
    assert tuple(counted.output) == tuple(analysis.output)


def test_block_positions_count_across_runs(tmp_path):
    """`named` patterns and `block_index` see one sequence of blocks across the runs."""
    spec = _write(
        tmp_path,
        """import std.resnet
network named_runs {
    input 3 x 32 x 32
    stem { conv1 = conv(16, 3, padding=1) }
    stage layer1 = 1 x BasicBlock(16) + 2 x Bottleneck(4) named "b{index + 1}"
}
""",
    )
    model = build_module(spec)
    assert list(dict(model.layer1.named_children())) == ["b1", "b2", "b3"]
    assert [type(b).__name__ for b in model.layer1] == ["BasicBlock", "Bottleneck", "Bottleneck"]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32, 32)


STAGE_ERRORS = {
    # a later run of no blocks: at its count
    "zero_run": (
        "stage layer1 = 2 x BasicBlock(16) + 0 x BasicBlock(16)",
        "bad-repeats",
        "0",
    ),
    # the stride belongs to the stage's first block
    "stride_later": (
        "stage layer1 = 1 x BasicBlock(16) + 1 x BasicBlock(32, stride=2)",
        "stage-sets-argument",
        "stride=2",
    ),
    "unknown_block_later": (
        "stage layer1 = 1 x BasicBlock(16) + 1 x BasicBlok(16)",
        "unknown-block",
        "BasicBlok",
    ),
    # a run whose block adds its input without a shortcut, after a run that widens: the
    # normal shape check of the block, at its merge
    "channels_between_runs": (
        "stage layer1 = 1 x BasicBlock(32) + 1 x Plain(16)",
        "merge-mismatch",
        None,
    ),
}

ERROR_SPEC = """import std.resnet
block Plain(channels) {{
    main {{
        conv1 = conv(channels, 3, padding=1)
    }}
    merge add
}}
network bad {{
    input 3 x 32 x 32
    stem {{ conv1 = conv(16, 3, padding=1) }}
    {stage}
}}
"""


@pytest.mark.parametrize("case", sorted(STAGE_ERRORS))
def test_bad_runs_are_located_errors(case, tmp_path):
    stage, code, text = STAGE_ERRORS[case]
    source = ERROR_SPEC.format(stage=stage)
    path = _write(tmp_path, source)
    errors = [d for d in check_spec(path) if d["severity"] == "error"]
    assert [d["code"] for d in errors] == [code], errors
    if text is not None:
        line = source.splitlines()[errors[0]["line"] - 1]
        column = errors[0]["column"] - 1
        assert line[column : column + len(text)] == text
    else:  # inside the block: the note points at the run that put the block there
        note = errors[0]["notes"][-1]
        line = source.splitlines()[note["line"] - 1]
        assert line[note["column"] - 1 :].startswith("1 x Plain(16)"), note
        assert "the run `1 x Plain` of stage `layer1`" in note["message"]


SINGLE = """import std.resnet
network single {{
    input 3 x 32 x 32
    stem {{ conv1 = conv(64, 3, padding=1) }}
    stage layer1 = {runs}
}}
"""


def test_single_run_code_is_unchanged_and_runs_keep_the_model(tmp_path):
    """A stage of one run is written as resgen always wrote it: its first block, then the
    rest in one list comprehension. The same blocks written as two runs are spelled out run by
    run, and the model is the same: keys, shapes and outputs with the same weights."""
    one = _write(tmp_path, SINGLE.format(runs="3 x Bottleneck(16, stride=2)"), "one.arch")
    two = _write(
        tmp_path,
        SINGLE.format(runs="1 x Bottleneck(16, stride=2) + 2 x Bottleneck(16)"),
        "two.arch",
    )
    code = generate(load(one))
    assert (
        "        # layer1: 3 x Bottleneck, 64x32x32 -> 64x16x16\n"
        "        self.layer1 = nn.Sequential(\n"
        "            Bottleneck(64, 16, stride=2), *[Bottleneck(64, 16) for _ in range(2)]\n"
        "        )\n"
    ) in code
    split = generate(load(two))
    assert "# layer1: 1 x Bottleneck + 2 x Bottleneck, 64x32x32 -> 64x16x16" in split
    torch.manual_seed(0)
    a = build_module(one).eval()
    b = build_module(two).eval()
    assert coverage.state_dict_layout(a) == coverage.state_dict_layout(b)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
