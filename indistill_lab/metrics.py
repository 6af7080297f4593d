"""Model measurements: accuracy, embeddings, parameter and FLOP counts."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .config import default_device


@torch.no_grad()
def accuracy(model: nn.Module, data: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] over (x, y) batches, in eval mode (train mode is restored)."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in data:
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("accuracy() got no data.")
    return correct / total


@torch.no_grad()
def embeddings(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Penultimate features (`model.embed`) of all images in `x`, on the CPU, in eval mode."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval()
    out = torch.cat([model.embed(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input, counted for conv and linear layers.

    Reported as MACs (the convention of most pruning papers, where 1 MAC is called one FLOP).
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        total += output[0].numel() * kernel

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
