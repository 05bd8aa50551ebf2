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
