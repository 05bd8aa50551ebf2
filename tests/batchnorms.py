"""Batch norms with real statistics for equivalence tests.

A fresh BatchNorm2d is an identity in eval mode (weight 1, bias 0, mean 0, var 1), and timm even
zero-initialises the last one of each residual branch: comparing outputs would then be blind to a
batch norm at the wrong place, or to a whole branch. Each test gives them seeded random values.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def randomise_batchnorms(
    model: torch.nn.Module, seed: int = 0, weight=(0.5, 1.5), var=(0.5, 1.5), shift: float = 0.1
) -> None:
    """Weights and running variances uniform in the given ranges; biases and running means
    normal with standard deviation `shift`. Deep nets want narrower ranges to stay finite."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(n, bounds):
        low, high = bounds
        return low + (high - low) * torch.rand(n, generator=generator)

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(uniform(n, weight))
            module.bias.copy_(shift * torch.randn(n, generator=generator))
            module.running_mean.copy_(shift * torch.randn(n, generator=generator))
            module.running_var.copy_(uniform(n, var))


@torch.no_grad()
def randomise_constant_parameters(
    model: torch.nn.Module, seed: int = 0, scale=(0.5, 1.5), shift: float = 0.1
) -> list[str]:
    """Give every parameter whose elements are all equal seeded random values, and return
    their names. Such a parameter was initialised to a constant that can hide a path from an
    output comparison: layer scale's 1e-6 (ConvNeXt's `gamma`) leaves a residual branch
    invisible, GRN's zero weight and bias make it the identity, a norm's weight of ones and bias
    of zeros make a misplaced affine transform invisible. All-zero ones become normal with
    standard deviation `shift`, the others uniform in `scale`. Call it after
    randomise_batchnorms, whose affine values are then no longer constant."""
    generator = torch.Generator().manual_seed(seed)
    names = []
    for name, parameter in model.named_parameters():
        flat = parameter.detach().reshape(-1)
        if flat.numel() == 0 or not bool((flat == flat[0]).all()):
            continue
        if flat[0].item() == 0:
            values = shift * torch.randn(parameter.shape, generator=generator)
        else:
            low, high = scale
            values = low + (high - low) * torch.rand(parameter.shape, generator=generator)
        parameter.copy_(values)
        names.append(name)
    return names
