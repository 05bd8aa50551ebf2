"""Memory per batch (issue 18) against torch: autograd's saved tensors, live storages in a
no-grad forward pass, the optimizers' state, the parameters' and buffers' bytes.

Every expected value is measured on the generated model (tests/memory_oracle.py); exactness
does not depend on the image size, so inputs are small. `slow`: float16 and mixed precision.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strategies import examples, valid_specs  # noqa: E402

torch = pytest.importorskip("torch")

from memory_oracle import inference_peak, saved_bytes  # noqa: E402
from memory_oracle import optimizer as make_optimizer  # noqa: E402

from resgen import codegen, ops  # noqa: E402
from resgen.build import import_source  # noqa: E402
from resgen.memory import estimate  # noqa: E402
from resgen.ops import Emit, Op  # noqa: E402
from resgen.ops.base import Saved  # noqa: E402
from resgen.ops.convs import ChannelLinear  # noqa: E402
from resgen.precision import Settings  # noqa: E402
from resgen.resolve import Loader, load  # noqa: E402
from resgen.shapes import analyse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SPECS = sorted((ROOT / "specs").glob("*.arch"))  # the showcase specs (not specs/timm/)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def _model(spec, analysis):
    """The generated model, its parameters zero: memory does not depend on their values, and
    building on the meta device skips initialising ~100M parameters of the big specs."""
    source = codegen.generate(spec, analysis)
    module = import_source(source, spec.network.name)
    with torch.device("meta"):
        model = getattr(module, spec.network.name)()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.zero_()
    return model


def _input_size(spec) -> tuple[None, int, int]:
    """The smallest of 16, 32, 64 the network accepts: exactness does not depend on the size."""
    for size in (16, 32, 64):
        if analyse(spec, (None, size, size)).ok:
            return (None, size, size)
    raise AssertionError(f"{spec.network.name} accepts none of 16, 32, 64")


def _measure(model, analysis, batch, dtype, amp=False):
    """(saved bytes, inference peak) of the model as torch runs it, on the CPU."""
    low = DTYPES[dtype]
    model = model.float() if amp else model.to(low)
    x = torch.randn(batch, *analysis.input, dtype=torch.float32 if amp else low)
    autocast = low if amp else None
    return saved_bytes(model, x, autocast), inference_peak(model, x, autocast)


def _predict(spec, analysis, batch, dtype, amp=False):
    memory = estimate(spec, analysis, Settings(batch, dtype, amp, device="cpu"))
    return memory.activations_saved_bytes, memory.inference_peak_bytes


def _agrees(spec, analysis, model, batch, dtype, amp=False, peak=True):
    saved, live = _predict(spec, analysis, batch, dtype, amp)
    measured_saved, measured_live = _measure(model, analysis, batch, dtype, amp)
    where = f"{spec.network.name} at batch {batch}, {dtype}{' amp' if amp else ''}"
    assert saved == measured_saved, f"saved for backward, {where}"
    if peak:
        assert abs(live - measured_live) <= 0.01 * measured_live, f"inference peak, {where}"


# ---------------------------------------------------------------------------------------------
# Each op's declaration, one small network per op and argument kind


OP_CASES = {
    "conv": "conv(8, 3, padding=1)",
    "conv-strided-grouped": "conv(8, 3, stride=2, groups=4, bias=false)",
    "conv-dilated-pair": "conv(6, (1, 3), padding=(0, 2), dilation=2)",
    "batchnorm": "batchnorm",
    "relu": "relu",
    "relu-inplace": "relu(inplace=true)",
    "sigmoid": "sigmoid",
    "maxpool": "maxpool(3, stride=2, padding=1)",
    "maxpool-ceil-dilated": "maxpool(2, stride=2, dilation=2, ceil_mode=true)",
    "avgpool": "avgpool(2)",
    "avgpool-padded": "avgpool(3, stride=1, padding=1, count_include_pad=false)",
    "adaptive-avgpool-1": "adaptive_avgpool(1)",
    "adaptive-avgpool-2": "adaptive_avgpool(2)",
    "adaptive-avgpool-pair": "adaptive_avgpool((1, 3))",
    "flatten-linear": "flatten  fc = linear(5)",
    "flatten-linear-nobias": "flatten  fc = linear(5, bias=false)",
    "flatten-relu-inplace": "flatten  r = relu(inplace=true)",
    "dropout": "dropout(0.5)",
    "dropout-0": "dropout(0.0)",
    "dropout-1": "dropout(1.0)",
    "flat-dropout": "flatten  d = dropout(0.25)  fc = linear(3)",
    "identity": "identity",
    "pad-channels": "pad_channels(12)",
    # the ops of the layers issue (resgen.ops.activations, norms, pools, convs, attention)
    "silu": "silu",
    "silu-inplace": "silu(inplace=true)",
    "gelu": "gelu",
    "gelu-tanh": "gelu_tanh",
    "leaky-relu": "leaky_relu(0.2)",
    "leaky-relu-inplace": "leaky_relu(inplace=true)",
    "elu": "elu",
    "elu-inplace": "elu(inplace=true)",
    "hardswish": "hardswish",
    "hardswish-inplace": "hardswish(inplace=true)",
    "hardsigmoid": "hardsigmoid",
    "hardsigmoid-inplace": "hardsigmoid(inplace=true)",
    "mish": "mish",
    "mish-inplace": "mish(inplace=true)",
    "tanh": "tanh",
    "prelu": "prelu",
    "prelu-per-channel": "prelu(per_channel=true)",
    "groupnorm": "groupnorm(groups=4)",
    "groupnorm-group-size": "groupnorm(group_size=8)",
    "evonorms0": "evonorms0(groups=4)",
    "evonorms0-no-act": "evonorms0(apply_act=false)",
    "evonorms0a": "evonorms0a(group_size=2)",
    "evonorms0a-no-act": "evonorms0a(groups=2, apply_act=false)",
    "frntlu": "frntlu",
    "frntlu-no-act": "frntlu(apply_act=false)",
    "evonorms0-then-conv": "evonorms0(groups=2)  c2 = conv(8, 3, padding=1)",
    "layernorm2d": "layernorm2d",
    "rmsnorm2d": "rmsnorm2d",
    "simplenorm2d": "simplenorm2d",
    "grn": "grn",
    "frozen-batchnorm": "frozen_batchnorm",
    "rmsnorm2d-then-conv": "rmsnorm2d  c2 = conv(8, 3, padding=1)",
    "grn-then-relu": "grn  r = relu",
    "batchnorm1d": "flatten  b = batchnorm1d",
    "adaptive-maxpool-1": "adaptive_maxpool(1)",
    "adaptive-maxpool-pair": "adaptive_maxpool((2, 3))",
    "adaptive-avgmaxpool-1": "adaptive_avgmaxpool(1)",
    "adaptive-avgmaxpool-2": "adaptive_avgmaxpool(2)",
    "adaptive-catavgmaxpool-1": "adaptive_catavgmaxpool(1)",
    "adaptive-catavgmaxpool-pair": "adaptive_catavgmaxpool((1, 3))",
    "blurpool": "blurpool",
    "blurpool-5-s1": "blurpool(5, stride=1)",
    "constant-pad": "constant_pad(1, value=0.5)",
    "space-to-depth": "space_to_depth(2)",
    "std-conv": "std_conv(8, 3, padding=1)",
    "std-conv-strided-grouped-bias": "std_conv(6, 3, stride=2, groups=2, bias=true)",
    "scaled-std-conv": "scaled_std_conv(8, 3, padding=1)",
    "scaled-std-conv-nobias": "scaled_std_conv(6, (1, 3), groups=2, bias=false)",
    "scaled-std-conv-same": "scaled_std_conv_same(8, 3)",
    "scaled-std-conv-same-s2-even": "scaled_std_conv_same(8, 3, stride=2)",
    "scaled-std-conv-same-s2-odd": "conv(8, 2)  s = scaled_std_conv_same(6, 3, stride=2, groups=2)",
    "scaled-std-conv-same-even-kernel": "scaled_std_conv_same(8, 2, bias=false)",
    "channel-linear": "channel_linear(5)",
    "channel-linear-nobias": "channel_linear(5, bias=false)",
    "channel-linear-wider": "channel_linear(20)",
    "channel-linear-1x1": "adaptive_avgpool(1)  l = channel_linear(5)",
    "channel-linear-1x1-nobias": "adaptive_avgpool(1)  l = channel_linear(5, bias=false)",
    "channel-linear-one-channel": "conv(1, 1)  l = channel_linear(5)",
    "eca": "eca",
    "eca-kernel": "eca(kernel=5)",
    "eca-1x1": "adaptive_avgpool(1)  e = eca",
    "global-context": "global_context",
    "global-context-add": "global_context(fuse_add=true, fuse_scale=false)",
    "global-context-mean-both": "global_context(use_attn=false, fuse_add=true)",
    "global-context-1x1": "adaptive_avgpool(1)  g = global_context(fuse_add=true)",
    "scale": "scale(0.5)",
    "skipinit": "skipinit",
    "drop-path": "drop_path(0.25)",
    "drop-path-0": "drop_path(0.0)",
    "flat-drop-path": "flatten  d = drop_path(0.5)  fc = linear(3)",
    # self-attention (resgen.ops.selfattention)
    "attention-pool2d": "attention_pool2d(feat_size=6, head_dim=4, qkv_separate=true)",
    "attention-pool2d-qkv-dropout": "attention_pool2d(5, feat_size=3, head_dim=2, drop_rate=0.5)",
    "bottleneck-attn": "bottleneck_attn(feat_size=6, num_heads=2)",
    "bottleneck-attn-stride-2": "bottleneck_attn(12, feat_size=6, stride=2, dim_head=3)",
    "halo-attn": "halo_attn(num_heads=2, block_size=3, halo_size=1)",
    "halo-attn-stride-2": "constant_pad(1)  h = halo_attn(12, stride=2, num_heads=2, block_size=4)",
    "halo-attn-avg-down": "halo_attn(stride=2, num_heads=4, block_size=3, halo_size=1)",
    "lambda-layer": "lambda_layer(num_heads=2, dim_head=4, r=3)",
}

# Batch norm over flat features trains only on more than one value per feature (F.batch_norm:
# "Expected more than 1 value per channel when training"); and a channel linear's channels-last
# input reshapes to (N H W) x C as a view only for one sample, a copy otherwise (the batch-1
# exception resgen's per-sample model leaves out): batches of 2 and 3.
TWO_SAMPLES = {
    "batchnorm1d": (2, 3),
    "channel-linear": (2, 3),
    "channel-linear-nobias": (2, 3),
    "channel-linear-wider": (2, 3),
    # q, k and v reshaped across the batch are copies (views for one sample)
    "bottleneck-attn": (2, 3),
    "bottleneck-attn-stride-2": (2, 3),
    "lambda-layer": (2, 3),
}

BLOCKS = """
block Add() { main { c = conv(in_channels, 3, padding=1) bn = batchnorm } merge add }
block Mul() { main { p = adaptive_avgpool(1) c = conv(in_channels, 1) g = sigmoid } merge mul }
block Proj(width) {
    main { c = conv(width, 3, stride=2, padding=1) }
    shortcut down { conv(width, 1, stride=2) batchnorm }
    merge mul
    post { r = relu  d = dropout(0.5) }
}
block First(width) {
    shortcut down when in_channels != width { conv = conv(width, 1)  bn = batchnorm }
    main { c = conv(width, 3, padding=1)  s = sigmoid }
    merge mul
    post { r = relu(inplace=true) }
}
block From(width) {
    main { bn = batchnorm  a = relu(inplace=true)  c = conv(width, 1) }
    shortcut down from a when in_channels != width { conv(width, 1) }
    merge add
}
"""
BLOCK_CASES = {
    "merge-add": "stage s = 2 x Add()",
    "merge-mul-broadcast": "stage s = 2 x Mul()",
    "projection-mul-post": "stage s = 1 x Proj(12)",
    "shortcut-from": "stage s = 1 x From(12)\n    stage t = 1 x From(12)",
    "containers-named-shortcut-first": (
        'stage s1 = 2 x First(12) named "b{index + 1}"\n'
        "    stage stages.0 = 1 x Add()\n"
        "    stage stages.1 = 2 x Add() in blocks { norm = batchnorm }"
    ),
}


def _case_spec(tmp_path, name: str, body: str, stages: str = ""):
    layers = body.split("  ")
    stem = ["c = conv(8, 1)", f"x = {layers[0]}", *layers[1:]]
    text = (
        BLOCKS
        + "network net {\n    input 4x6x6\n    stem { "
        + "  ".join(stem)
        + " }\n    "
        + stages
        + "\n}\n"
    )
    path = tmp_path / f"{name.replace('-', '_')}.arch"
    path.write_text(text)
    spec = Loader().load(path)
    analysis = analyse(spec)
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    return spec, analysis


# Known gap: CPU autocast runs reflect padding in float32 (its float32 list), so blurpool under
# --amp saves a float32 copy of its input and its conv casts the padded input and the filter
# back down; the declarations cannot yet say how autocast depends on the device.
# Known gap: under autocast the attention pool's tokens (low-precision features plus the float32
# position embedding) promote to float32, and each of its Linears saves its own low-precision
# copy of them; the declaration counts the tokens once, in the activations' dtype.
AMP_GAPS = {
    "blurpool": "CPU autocast's float32 list",
    "blurpool-5-s1": "CPU autocast's float32 list",
    "attention-pool2d": "tokens promoted to float32, a low-precision copy per Linear",
    "attention-pool2d-qkv-dropout": "tokens promoted to float32, a low-precision copy per Linear",
    "bottleneck-attn": "autocast's softmax in float32 and the products' low-precision copies",
    "bottleneck-attn-stride-2": "autocast's softmax in float32, the products' low-precision copies",
    "halo-attn": "autocast's softmax in float32 and the products' low-precision copies",
    "halo-attn-stride-2": "autocast's softmax in float32 and the products' low-precision copies",
    "halo-attn-avg-down": "autocast's softmax in float32 and the products' low-precision copies",
    "lambda-layer": "autocast's softmax in float32 and the products' low-precision copies",
}
# Known gap: global_context runs convolutions, a matrix product, a softmax and a layer norm in
# one module; autocast casts each by its own list, and an op declares one `autocast` rule.
GLOBAL_CONTEXT_AMP = "convolutions, matmul, softmax and layer norm on their own autocast lists"
AMP_GAPS |= dict.fromkeys(
    ("global-context", "global-context-add", "global-context-mean-both", "global-context-1x1"),
    GLOBAL_CONTEXT_AMP,
)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "amp"])
@pytest.mark.parametrize("case", [*OP_CASES, *BLOCK_CASES])
def test_each_op_declares_what_torch_saves_and_allocates(tmp_path, case, dtype, request):
    if dtype == "amp" and case in AMP_GAPS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=AMP_GAPS[case]))
    if case in OP_CASES:
        spec, analysis = _case_spec(tmp_path, case, OP_CASES[case])
    else:
        spec, analysis = _case_spec(tmp_path, case, "identity", BLOCK_CASES[case])
    model = _model(spec, analysis)
    for batch in TWO_SAMPLES.get(case, (1, 3)):
        if dtype == "amp":
            _agrees(spec, analysis, model, batch, "bfloat16", amp=True)
        else:
            _agrees(spec, analysis, model, batch, dtype)


def test_parameters_buffers_and_gradients_are_torch_bytes(tmp_path):
    spec = load(ROOT / "specs" / "seresnet50.arch")
    analysis = analyse(spec, (None, 32, 32))
    model = _model(spec, analysis)
    for dtype, amp in (("float32", False), ("bfloat16", False), ("float16", True)):
        memory = estimate(spec, analysis, Settings(2, dtype, amp, device="cpu"))
        net = model.float() if amp else model.to(DTYPES[dtype])
        params = [p for p in net.parameters()]
        assert memory.parameters_bytes == sum(p.nbytes for p in params)
        assert memory.gradients_bytes == memory.parameters_bytes
        assert memory.buffers_bytes == sum(b.nbytes for b in net.buffers())
        assert memory.parameter_tensors == len(params)
        stages = {s.name: s for s in memory.stages}
        assert sum(s.parameters_bytes for s in stages.values()) == memory.parameters_bytes


# ---------------------------------------------------------------------------------------------
# Every showcase spec, and random ones


def _showcase(name: str):
    """(spec, analysis at a small input, generated model) of specs/NAME.arch."""
    spec = load(ROOT / "specs" / f"{name}.arch")
    analysis = analyse(spec, _input_size(spec))
    return spec, analysis, _model(spec, analysis)


@pytest.mark.parametrize("name", [p.stem for p in SPECS])
def test_specs_saved_activations_match_autograd(name):
    """activations_saved_bytes is exactly the distinct storages saved_tensors_hooks sees, at two
    batch sizes (2 and 3: batch norm needs two values per channel to train), in float32 and
    bfloat16; the float32 inference peak is within 1% (it is exact)."""
    spec, analysis, model = _showcase(name)
    for dtype in ("float32", "bfloat16"):
        for batch in (2, 3):
            _agrees(spec, analysis, model, batch, dtype, peak=dtype == "float32" and batch == 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.stem for p in SPECS])
def test_specs_in_float16_and_mixed_precision(name):
    spec, analysis, model = _showcase(name)
    _agrees(spec, analysis, model, 2, "float16")
    for dtype in ("bfloat16", "float16"):
        _agrees(spec, analysis, model, 2, dtype, amp=True)


# Multi-branch blocks (issue 16): chunk views held in named locals, joins, a shared module applied
# twice, the radix softmax's copy. One small network per kind of join.
BRANCHES = {
    "res2net": "import std.res2net\n{stem}"
    "\n    stage s1 = 2 x Bottle2neck(8, base_width=26, scale=4)"
    "\n    stage s2 = 1 x Bottle2neck(16, stride=2, base_width=26, scale=3)",
    "sknet": "import std.sknet\n{stem}\n    stage s1 = 2 x SKBasicBlock(16)"
    "\n    stage s2 = 1 x SKBottleneck(8, stride=2, groups=2, parts=1)",
    "resnest-groups": "import std.resnest\n{stem}"
    "\n    stage s1 = 2 x ResNestBottleneck(16, groups=2, base_width=32, radix=4)",
    "cbam": "import std.cbam\n{stem}\n    stage s1 = 2 x CBAMBasicBlock(32)"
    "\n    stage s2 = 1 x CBAMBottleneck(16, stride=2, reduction_ratio=4)",
}
BRANCH_STEM = "network n {\n    input 3x16x16\n    stem { c = conv(32, 3, padding=1) }"


@pytest.mark.parametrize("name", list(BRANCHES))
def test_multi_branch_blocks_match_autograd(tmp_path, name):
    path = tmp_path / "net.arch"
    path.write_text(BRANCHES[name].format(stem=BRANCH_STEM) + "\n}\n")
    spec = Loader().load(path)
    analysis = analyse(spec)
    assert analysis.ok, [d.message for d in analysis.errors]
    model = _model(spec, analysis)
    for dtype, batch, amp in (("float32", 2, False), ("bfloat16", 3, False), ("float16", 2, True)):
        _agrees(spec, analysis, model, batch, dtype, amp, peak=not amp)


MEMORY_ORACLE = settings(
    max_examples=examples(8),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@MEMORY_ORACLE
@given(valid_specs())
def test_random_specs_match_torch(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("memory") / "net.arch"
    path.write_text(text)
    spec = Loader().load(path)
    analysis = analyse(spec)
    if not analysis.ok:  # e.g. an in-place layer on a saved tensor: not this test's subject
        return
    if _reads_channels_last(analysis):  # the known gap, test_channel_linear_after_channels_last
        return
    model = _model(spec, analysis)
    for dtype, batch in (("float32", 2), ("bfloat16", 3)):
        _agrees(spec, analysis, model, batch, dtype, peak=dtype == "float32")


def _reads_channels_last(analysis) -> bool:
    """Whether a channel_linear may read a channels-last tensor: its output is one (a permuted
    view), convs, norms and elementwise ops on the CPU keep that format, and then the next
    channel_linear's reshape is a view, not the copy its memory facts declare. The facts do
    not follow memory formats yet, so they hold for the first channel_linear only."""
    return sum(isinstance(node.op, ChannelLinear) for node in analysis.nodes.values()) > 1


@pytest.mark.xfail(
    strict=True,
    reason="memory formats are not modelled: a channel_linear after another one reads a "
    "channels-last tensor and copies nothing, where its facts declare a copy",
)
def test_channel_linear_after_channels_last():
    """A spec the random-spec test drew (two blocks, each with a channel_linear): torch saves
    9216 bytes fewer at batch 2 than predicted, the second block's copy that is a view."""
    spec = Loader().load(DATA / "memory_gaps" / "channel_linear_channels_last.arch")
    analysis = analyse(spec)
    _agrees(spec, analysis, _model(spec, analysis), 2, "float32", peak=False)


# ---------------------------------------------------------------------------------------------
# Optimizers, the training peak


class _Transients(torch.utils._python_dispatch.TorchDispatchMode):
    """The most bytes of new storages alive at once (storages in `existing` are not new)."""

    def __init__(self, existing: set[int]):
        super().__init__()
        self.existing, self.live, self.peak = existing, {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                key = storage.data_ptr()
                if key not in self.existing and key not in self.live and storage.nbytes() > 8:
                    self.live[key] = storage.nbytes()
                    weakref.finalize(storage, self.live.pop, key)
        self.peak = max(self.peak, sum(self.live.values()))
        return out


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_optimizer_state_and_step_are_torch_optims(optimizer):
    """optimizer_bytes is the state torch.optim keeps after a step (momentum_buffer; exp_avg,
    exp_avg_sq and a float32 step per tensor), and the step's temporaries on the CPU (the
    per-tensor loop) are what one step allocates."""
    spec = load(ROOT / "specs" / "resnet18.arch")
    _optimizer_agrees(spec, analyse(spec, (None, 16, 16)), optimizer)


def test_the_adam_step_follows_the_parameters_registration_order(tmp_path):
    """A block whose shortcut is written first registers it first: the per-tensor Adam step
    holds the previous parameter's `denom` while making the next, so the order counts."""
    path = tmp_path / "first.arch"
    path.write_text(
        "block Wide(width) {\n"
        "    shortcut down { conv(width, 1, bias=false) }\n"
        "    main { c = conv(width, 3, padding=1) }\n"
        "    merge add\n"
        "}\n"
        "network net { input 4x6x6  stem { c = conv(8, 1) }  stage s = 1 x Wide(24) }\n"
    )
    spec = Loader().load(path)
    # In registration order the largest tensor (c.weight) follows down.0.weight, not the
    # stem's bias: 2 * 1728 + 192 elements, where the forward order would say 2 * 1728 + 8.
    _optimizer_agrees(spec, analyse(spec), "adam")


def _optimizer_agrees(spec, analysis, optimizer: str) -> None:
    model = _model(spec, analysis)
    memory = estimate(spec, analysis, Settings(2, "float32", False, optimizer, "cpu"))
    params = list(model.parameters())
    opt = make_optimizer(optimizer, params)
    x = torch.randn(2, *analysis.input)
    for _ in range(2):
        opt.zero_grad()
        model.train()(x).sum().backward()
        state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        existing = {t.untyped_storage().data_ptr() for t in (*params, *state)}
        existing |= {p.grad.untyped_storage().data_ptr() for p in params}
        mode = _Transients(existing)
        with mode:
            opt.step()
    assert memory.gradients_bytes == sum(p.grad.nbytes for p in params)
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    assert memory.optimizer_bytes == sum(t.nbytes for t in state)
    step = next(p for p in memory.points if p.phase == "optimizer step")
    assert step.terms[-1].at(2) == mode.peak


@pytest.mark.slow
def test_training_peak_is_torchs_memtracker_within_a_percent():
    """torch's own estimator (MemTracker over FakeTensorMode, tests/memory_compare.py) for
    torchvision's resnet18; `python3 tests/memory_compare.py` prints resnet18/50/152."""
    pytest.importorskip("torchvision")
    from memory_compare import compare

    for batch, optimizer in ((32, "momentum"), (2, "adam")):
        row = compare("resnet18", batch, "float32", optimizer)
        assert abs(row["resgen_peak"] - row["memtracker_peak"]) <= 0.01 * row["memtracker_peak"]


def test_training_peak_on_a_gpu():
    """On a CUDA device, torch.cuda.max_memory_allocated over one training step of the generated
    resnet18 (batch 32, 224x224, SGD with momentum) is within 5% of the estimate: the caching
    allocator rounds each block up to 512 bytes and cuDNN takes workspaces it does not model."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU check of the training-peak estimate did not run")
    spec = load(ROOT / "specs" / "resnet18.arch")
    analysis = analyse(spec)
    memory = estimate(spec, analysis, Settings(32, "float32", False, "momentum", "cuda"))
    source = codegen.generate(spec, analysis)
    model = import_source(source, "resnet18").resnet18().cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(32, 3, 224, 224, device="cuda")
    for _ in range(2):  # the second step has the optimizer state
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()
    peak = torch.cuda.max_memory_allocated()
    assert abs(memory.training_peak_bytes - peak) <= 0.05 * peak, (memory.training_peak_bytes, peak)


# ---------------------------------------------------------------------------------------------
# A plugin declares what it saves in its one declaration


class _Tanh(Op):
    """tanh keeps its output (tanh_backward(grad, result)): a declaration that says so."""

    name = "test_tanh"
    doc = "hyperbolic tangent"
    stateless = True
    emit = Emit("nn.Tanh")

    def saves(self, args, x, y, device):
        return (Saved("output"),)


class _TanhUndeclared(_Tanh):
    """The same op without `saves`: counted as keeping its input (the default), which a tanh
    does not: after a ReLU (which keeps its output) the estimate misses the tanh's output."""

    name = "test_tanh_undeclared"
    saves = Op.saves


@pytest.fixture
def tanh_ops():
    registered = [ops.register(_Tanh), ops.register(_TanhUndeclared)]
    yield
    for op in registered:
        ops.unregister(op.name)


def test_a_plugin_op_declares_what_it_saves(tmp_path, tanh_ops):
    spec, analysis = _case_spec(tmp_path, "tanh", "test_tanh  t = test_tanh")
    _agrees(spec, analysis, _model(spec, analysis), 2, "float32")
    spec, analysis = _case_spec(tmp_path, "undeclared", "relu  t = test_tanh_undeclared")
    saved, _ = _predict(spec, analysis, 2, "float32")
    measured, _ = _measure(_model(spec, analysis), analysis, 2, "float32")
    assert saved < measured  # the default (the input) is not what tanh keeps
