"""timm's and mmdetection's model members on generated networks (issue 17), checked against the
real libraries or first principles: set_grad_checkpointing (autograd's gradients, timm's own
checkpointed model), the detection options frozen_stages and norm_eval (an optimizer step), the
global_pool choices and reset_classifier (timm's SelectAdaptivePool2d).

Every timm model here is pretrained=False (nothing is downloaded).
"""

from __future__ import annotations

import pytest

import resgen

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
