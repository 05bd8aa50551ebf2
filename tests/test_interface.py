"""timm's and mmdetection's model members on generated networks (issue 17), checked against the
real libraries or first principles: set_grad_checkpointing (autograd's gradients, timm's own
checkpointed model), the detection options frozen_stages and norm_eval (an optimizer step), the
global_pool choices and reset_classifier (timm's SelectAdaptivePool2d).

Every timm model here is pretrained=False (nothing is downloaded).
"""

from __future__ import annotations

import pytest

import resgen
from resgen.diagnostics import SpecError

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")


def _gradients(model, x, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of a scalar of the model's output(s)."""
    model.set_grad_checkpointing(checkpointing)
    model.zero_grad(set_to_none=True)
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outputs).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _block_calls(model) -> dict[str, int]:
    """A counter of forward calls per block (a child of a stage's nn.Sequential), filled by
    pre-hooks: under checkpointing each block starts twice, once more in backward (the
    recompute, which torch stops early once it has what backward needs: no forward hook)."""
    calls: dict[str, int] = {}
    for name, module in model.named_modules():
        parent, _, _ = name.rpartition(".")
        if parent and isinstance(model.get_submodule(parent), torch.nn.Sequential):
            generated = type(module).__module__ == type(model).__module__
            if generated and any(module.children()):  # a block class, not a helper layer
                calls[name] = 0
                module.register_forward_pre_hook(
                    lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
                )
    return calls


@pytest.mark.parametrize(
    "spec, features_only",
    [
        ("specs/resnet18.arch", False),
        ("specs/resnet18.arch", True),
        ("specs/timm/skresnet18.arch", False),  # multi-branch blocks (split, concat, softmax)
        ("specs/timm/convnext_atto.arch", True),  # stages in a container, with own layers
    ],
)
def test_grad_checkpointing_gives_the_same_gradients(spec, features_only):
    """With set_grad_checkpointing every parameter's gradient equals the one without it, in
    training mode, on the full and the features-only model; and it really checkpoints: each
    block runs a second time in backward, as torch.utils.checkpoint recomputes it."""
    torch.manual_seed(0)
    options = {"features_only": True} if features_only else {}
    model = resgen.build_module(spec, **options).train()
    x = torch.randn(2, 3, 64, 64)
    plain = _gradients(model, x, False)
    calls = _block_calls(model)
    assert calls, "no block found"
    checkpointed = _gradients(model, x, True)
    assert plain.keys() == checkpointed.keys()
    assert len(plain) == sum(1 for p in model.parameters() if p.requires_grad)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)
    assert set(calls.values()) == {2}, calls
    model.set_grad_checkpointing(False)
    for name in calls:
        calls[name] = 0
    _gradients(model, x, False)
    assert set(calls.values()) == {1}


def test_grad_checkpointing_matches_timms():
    """Our resnet18 and timm's with the same weights, both checkpointed: the same gradients."""
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False).train()
    model = resgen.build_module("specs/resnet18.arch").train()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    theirs = _gradients(reference, x, True)
    ours = _gradients(model, x, True)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6)


def test_grad_checkpointing_keeps_torchscript():
    """The checkpointed path is skipped under torch.jit.script (timm's is_scripting guard)."""
    model = resgen.build_module("specs/resnet18.arch", features_only=True).eval()
    model.set_grad_checkpointing()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(scripted(x), model(x), strict=True):
            torch.testing.assert_close(a, b)


# mmdetection's ResNet (mmdet/models/backbones/resnet.py): its arguments in its order; the
# default of norm_eval is ours (False: a generated classifier trains as timm's and torchvision's
# do), mmdetection's configs pass norm_eval=True explicitly.
MMDET_ORDER = ("frozen_stages", "norm_eval")


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def _step(model, x) -> None:
    """One SGD step in training mode on a loss of every output."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outputs).backward()
    optimizer.step()


def _state(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("frozen_stages", [-1, 0, 2])
@pytest.mark.parametrize("features_only", [False, True])
def test_frozen_stages_do_not_change_in_training(frozen_stages, features_only):
    """frozen_stages=N (mmdetection's): after an optimizer step in train mode, every parameter
    and running statistic of the stem (N >= 0) and of layer1..layerN is unchanged, and every
    other parameter and batch-norm statistic has changed; the frozen modules are in eval mode
    and their parameters do not require grad."""
    torch.manual_seed(0)
    options = {"features_only": True, "out_indices": (4,)} if features_only else {}
    model = resgen.build_module("specs/resnet18.arch", frozen_stages=frozen_stages, **options)
    frozen = () if frozen_stages < 0 else ("conv1.", "bn1.")
    frozen += tuple(f"layer{i}." for i in range(1, frozen_stages + 1))
    before = _state(model)
    _step(model, torch.randn(4, 3, 32, 32))
    after = _state(model)
    for name, value in before.items():
        unchanged = torch.equal(value, after[name])
        if name.startswith(frozen):
            assert unchanged, name
        elif not name.endswith("num_batches_tracked"):
            assert not unchanged, name
    for name, module in model.named_modules():
        if (name + ".").startswith(frozen):
            assert not module.training, name
    for name, param in model.named_parameters():
        assert param.requires_grad == (not name.startswith(frozen)), name
    with pytest.raises(ValueError, match="frozen_stages=5"):
        resgen.build_module("specs/resnet18.arch", frozen_stages=5)


def test_norm_eval_keeps_batch_norms_in_eval_mode():
    """norm_eval=True: in train mode every batch norm stays in eval mode, so an optimizer step
    changes the parameters and no running statistic (mmdetection's train() override); the
    other modules train."""
    torch.manual_seed(0)
    model = resgen.build_module("specs/resnet18.arch", norm_eval=True)
    before = _state(model)
    _step(model, torch.randn(4, 3, 32, 32))
    after = _state(model)
    assert model.training
    assert all(not bn.training for bn in _batch_norms(model))
    assert all(m.training for m in model.modules() if not isinstance(m, torch.nn.BatchNorm2d))
    for bn in _batch_norms(model):
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            name = next(n for n, m in model.named_modules() if m is bn) + "." + buffer
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["layer1.0.bn1.weight"], before["layer1.0.bn1.weight"])
    model.eval()
    assert not any(m.training for m in model.modules())


def test_detection_options_are_mmdetections():
    """The factory takes frozen_stages and norm_eval in mmdetection's order, off by default."""
    import inspect

    source = resgen.generate("specs/resnet50.arch")
    module = resgen.build.import_source(source, "resnet50")
    parameters = inspect.signature(module.resnet50).parameters
    names = [name for name in parameters if name in MMDET_ORDER]
    assert tuple(names) == MMDET_ORDER
    assert parameters["frozen_stages"].default == -1
    assert parameters["norm_eval"].default is False


def _randomise_statistics(model) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("global_pool", ["avg", "max", "avgmax", "catavgmax", ""])
def test_global_pool_equals_timms(global_pool):
    """global_pool=... builds timm's resnet50 with that SelectAdaptivePool2d choice: its
    state_dict loads strict, outputs are equal, num_features stays the trunk's width and
    head_hidden_size doubles for catavgmax, as timm's. "" (no pooling) is used as timm's
    users do, with num_classes=0: forward returns the feature map."""
    options = {"global_pool": global_pool, "num_classes": 0 if global_pool == "" else 1000}
    torch.manual_seed(0)
    reference = timm.create_model("resnet50", pretrained=False, **options).eval()
    _randomise_statistics(reference)
    model = resgen.build_module("specs/resnet50.arch", **options).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert model.num_features == reference.num_features
    assert model.head_hidden_size == reference.head_hidden_size
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs)
        features = reference.forward_features(x)
        torch.testing.assert_close(
            model.forward_head(features, pre_logits=True),
            reference.forward_head(features, pre_logits=True),
        )


def test_reset_classifier_with_global_pool_equals_timms():
    """reset_classifier(num_classes, global_pool) as timm's: the pool changes (None keeps it),
    the classifier is sized for it; with timm's new classifier weights the outputs agree."""
    torch.manual_seed(0)
    reference = timm.create_model("resnet50", pretrained=False).eval()
    _randomise_statistics(reference)
    model = resgen.build_module("specs/resnet50.arch").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    for num_classes, global_pool in ((10, "catavgmax"), (7, None), (5, "max"), (0, "")):
        model.reset_classifier(num_classes, global_pool)
        reference.reset_classifier(num_classes, global_pool)
        assert model.head_hidden_size == reference.head_hidden_size
        model.load_state_dict(reference.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x))
    with pytest.raises(ValueError, match="global_pool='mean'"):
        model.reset_classifier(10, "mean")


# -- metadata: timm's pretrained_cfg ---------------------------------------------------------

spec_metadata = pytest.importorskip("spec_metadata")  # tests/spec_metadata.py (on sys.path)


def test_every_metadata_section_is_the_libraries():
    """Every spec of a timm or torchvision model writes the library's values (timm's
    get_pretrained_cfg of the default tag; torchvision's DEFAULT weights' transforms) for
    each key it does not derive, and nothing else; a derived network's are its own."""
    from resgen.resolve import Loader

    loader = Loader()
    checked = 0
    for path in spec_metadata.spec_paths():
        expected = spec_metadata.library_cfg(path)
        if expected is None:
            assert not spec_metadata.written(path, loader), path
            continue
        written = spec_metadata.written(path, loader)
        assert set(written) <= set(expected), path
        for key, value in expected.items():
            if key not in spec_metadata.DERIVED:
                assert written.get(key) == value, (path, key)
            elif key in written:
                assert written[key] == value, (path, key)
        checked += 1
    assert checked > 250


@pytest.mark.parametrize(
    "spec",
    [
        "specs/resnet50.arch",  # torchvision's DEFAULT (IMAGENET1K_V2) transforms
        "specs/resnet50d.arch",
        "specs/timm/regnetx_002.arch",
        "specs/timm/convnext_base.arch",  # a derived network: its own section
        "specs/timm/resnetv2_50.arch",  # a 1x1-conv classifier: written, not derived
        "specs/timm/resnet50_gn.arch",
    ],
)
def test_generated_pretrained_cfg_is_the_libraries(spec):
    """The generated pretrained_cfg, derived keys included (input_size from `input`,
    num_classes from the output, first_conv and classifier from the model interface), is the
    library's, key for key."""
    path = spec_metadata.ROOT / spec
    ours, theirs = spec_metadata.generated(path), spec_metadata.library_cfg(path)
    assert {key: ours.get(key) for key in theirs} == theirs
    assert set(ours) - set(theirs) <= {"first_conv", "classifier"}  # torchvision has neither


def test_pretrained_cfg_on_the_model_is_timms():
    """model.pretrained_cfg and its alias default_cfg hold timm's model's values."""
    reference = timm.create_model("resnet50d", pretrained=False)
    model = resgen.build_module("specs/resnet50d.arch")
    assert model.default_cfg is model.pretrained_cfg
    theirs = {k: reference.pretrained_cfg[k] for k in model.pretrained_cfg}
    assert model.pretrained_cfg == {
        k: tuple(v) if isinstance(v, list) else v for k, v in theirs.items()
    }


@pytest.mark.parametrize(
    "entry, code, column",
    [
        ("crop_pc = 0.9", "unknown-metadata", 9),
        ("crop_pct = 1.5", "bad-metadata", 9),
        ('mean = "imagenet"', "bad-metadata", 9),
        ("input_size = (3, 224)", "bad-metadata", 9),
        ('interpolation = "cubic"', "bad-metadata", 9),
        ("fixed_input_size = 1", "bad-metadata", 9),
        ("first_conv = 3", "bad-metadata", 9),
        ('crop_mode = "center"  crop_mode = "squash"', "duplicate-name", 31),
    ],
)
def test_metadata_errors_are_located(tmp_path, entry, code, column):
    path = tmp_path / "m.arch"
    path.write_text(
        "import std.resnet\nnetwork m {\n    input 3x32x32\n"
        f"    metadata {{\n        {entry}\n    }}\n"
        "    stem { conv1 = conv(8, 3) }\n    stage layer1 = 1 x BasicBlock(8)\n}\n",
        encoding="utf-8",
    )
    with pytest.raises(SpecError) as raised:
        resgen.load(path)
    [diagnostic] = raised.value.diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == (code, 5, column)


def test_a_derived_network_has_its_own_metadata(tmp_path):
    """`network b = a(...) { metadata { ... } }`: b's section replaces a's; without one, b has
    a's."""
    (tmp_path / "a.arch").write_text(
        "import std.resnet\nnetwork a {\n    input 3x32x32\n"
        '    metadata { crop_pct = 0.9  interpolation = "bicubic" }\n'
        "    param width = 8\n    stem { conv1 = conv(width, 3) }\n"
        "    stage layer1 = 1 x BasicBlock(width)\n}\n",
        encoding="utf-8",
    )
    (tmp_path / "b.arch").write_text(
        'import "a.arch"\nnetwork b = a(width=16) {\n    metadata { crop_pct = 1.0 }\n}\n',
        encoding="utf-8",
    )
    (tmp_path / "c.arch").write_text('import "a.arch"\nnetwork c = a(width=16)\n', encoding="utf-8")
    model = resgen.build_module(tmp_path / "b.arch")
    assert model.pretrained_cfg == {
        "input_size": (3, 32, 32),
        "crop_pct": 1.0,
        "first_conv": "conv1",
    }
    model = resgen.build_module(tmp_path / "c.arch")
    assert model.pretrained_cfg == {
        "input_size": (3, 32, 32),
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "first_conv": "conv1",
    }
