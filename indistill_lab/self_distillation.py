"""Lightweight self-distillation: the network teaches itself (docs/methods.md section 3, docs/self_distillation.md).

Two terms, no external teacher:

- **DRG** (distillation with reverse guidance): an `AttentionHead` reads an intermediate stage
  through `Taps` (the model is never edited) and classifies from it; its softened output,
  detached, teaches the final output (`losses.DRGLoss`), and the head learns by its own CE.
- **DSR** (shape-wise regularisation): each sample's sorted logits are matched to the previous
  mini-batch's sorted logits, detached (`losses.DSRLoss`); skipped on an epoch's first batch.

    objective = SelfDistillation(model, example=x[:2])            # head on the default stage, DRG + DSR
    Trainer(model, objective).fit(loader, epochs)                 # the heads are optimised too
    model                                                         # the exported network: no head inside

`SelfDistillation` is a Trainer objective: the heads are its parameters (`trainable_parameters`), the
previous batch is its state across batches, reset by the Trainer's `on_epoch_start` hook (every
epoch, and the first epoch after a resume), and never saved in a checkpoint.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .losses import DRGLoss, DSRLoss
from .modes import eval_mode
from .taps import Taps, get_module, tap

MIN_SIDE = 4
"""Smallest feature map a head accepts: its classifier path halves the side twice (4 -> 2 -> 1)."""


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 conv (stride `stride`), pointwise 1x1 conv, BN, ReLU (non-in-place)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()


class AttentionHead(nn.Module):
    """DRG's auxiliary classifier on a stage's features (N, C, H, W) -> logits (N, classes).

    Attention branch: separable conv stride 2, BN, ReLU, bilinear upsample back to (H, W), sigmoid;
    the features are multiplied by that mask, then two separable convs of stride 2 double the
    channels twice (C -> 2C -> 4C), global average pool, linear.

    >>> AttentionHead(8, 10)(torch.randn(2, 8, 14, 14)).shape
    torch.Size([2, 10])
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        if channels <= 0 or num_classes <= 0:
            raise ValueError(f"AttentionHead needs positive channels and classes, got {channels}, {num_classes}.")
        self.mask = SeparableConv(channels, channels)
        self.block1 = SeparableConv(channels, 2 * channels)
        self.block2 = SeparableConv(2 * channels, 4 * channels)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(4 * channels, num_classes)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The mask in (0, 1), shaped like `x` (the upsampling returns exactly x's side, odd or even)."""
        m = F.interpolate(self.mask(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.block2(self.block1(x * self.attention(x))))))


def stage_shapes(model: nn.Module, stages: Sequence[str], example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of each stage on `example`; an unknown stage raises a KeyError listing valid paths."""
    for stage in stages:
        get_module(model, stage)
    with eval_mode(model):
        outputs = tap(model, example, stages)
    return {s: tuple(outputs[s].shape[1:]) for s in stages}


def default_stages(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The deepest stage that can hold a head (side >= MIN_SIDE): shallow enough to be a different view,
    deep enough to classify. Stages are `model.stage_paths` (the kit's models) or 'layer1'... (torchvision)."""
    paths = getattr(model, "stage_paths", None) or [p for p in ("layer1", "layer2", "layer3", "layer4")
                                                    if p in dict(model.named_modules())]
    if not paths:
        raise ValueError(f"{type(model).__name__} has no `stage_paths` and no 'layer1'...: name the stages.")
    fits = [s for s, shape in stage_shapes(model, paths, example).items() if len(shape) == 3 and min(shape[1:]) >= MIN_SIDE]
    if not fits:
        raise ValueError(f"No stage of {type(model).__name__} is at least {MIN_SIDE}x{MIN_SIDE} on inputs of shape "
                         f"{tuple(example.shape[1:])}: use larger inputs.")
    return fits[-1:]


def build_heads(model: nn.Module, stages: Sequence[str], example: torch.Tensor) -> nn.ModuleList:
    """One `AttentionHead` per stage, sized from the stage's output on `example` (checked up front)."""
    if not stages:
        raise ValueError("DRG needs at least one stage for its head, e.g. stages=['stage2'].")
    with torch.no_grad(), eval_mode(model):
        num_classes = model(example).shape[1]
    heads = []
    for stage, shape in stage_shapes(model, stages, example).items():
        if len(shape) != 3:
            raise ValueError(f"Stage {stage!r} outputs shape {shape}, not a feature map (C, H, W): a head needs "
                             "a conv stage.")
        if min(shape[1:]) < MIN_SIDE:
            raise ValueError(f"Stage {stage!r} is {shape[1]}x{shape[2]}: too small for the head's stride-2 branch "
                             f"(needs at least {MIN_SIDE}x{MIN_SIDE}). Put the head on a shallower stage.")
        heads.append(AttentionHead(shape[0], num_classes))
    return nn.ModuleList(heads)


class SelfDistillation(nn.Module):
    """The Trainer objective CE(z, y) + sum over heads [CE(z_head, y) + DRG] + DSR.

    `drg=False` drops the heads and their terms; `dsr=False` drops DSR. Term names: 'ce', 'ce_head',
    'drg' (with '@stage' appended when there are several heads) and 'dsr' (absent on the first batch
    of an epoch). The model passed to `__call__` must be the one the heads were sized for.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, stages: Sequence[str] | None = None,
                 drg: bool = True, dsr: bool = True, alpha: float = 0.2, beta: float = 1.0,
                 temperature: float = 4.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"self-distillation: temperature T must be > 0 (it divides the logits), got {temperature}.")
        self.drg_loss, self.dsr_loss = DRGLoss(alpha, temperature), DSRLoss(beta, temperature)
        self.use_dsr = dsr
        if isinstance(stages, str):  # one stage named alone, not its letters
            stages = [stages]
        self.stages = (list(stages) if stages is not None else default_stages(model, example)) if drg else []
        self.heads = build_heads(model, self.stages, example) if drg else nn.ModuleList()
        self.previous: torch.Tensor | None = None  # the previous mini-batch's sorted logits (never checkpointed)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (the Trainer adds them to the optimiser)."""
        return list(self.heads.parameters())

    def on_epoch_start(self, epoch: int) -> None:
        """Forget the previous batch (DSR restarts each epoch, and after a resume) and train the heads."""
        self.previous = None
        self.train()

    def _key(self, name: str, stage: str) -> str:
        return name if len(self.stages) == 1 else f"{name}@{stage}"

    def head_logits(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Final logits and each head's logits from one forward pass (hooks removed afterwards)."""
        with Taps(model, self.stages) as taps:
            logits = model(x)
        return logits, {s: head(taps[s]) for s, head in zip(self.stages, self.heads)}

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int = 0) -> dict[str, torch.Tensor]:
        logits, heads = self.head_logits(model, x)
        terms = {"ce": F.cross_entropy(logits, y)}
        for stage, z_aux in heads.items():
            terms[self._key("ce_head", stage)] = F.cross_entropy(z_aux, y)
            terms[self._key("drg", stage)] = self.drg_loss(logits, z_aux)  # the head's output is detached inside
        if self.use_dsr:
            ranked = logits.sort(dim=1).values
            if self.previous is not None:
                n = min(len(ranked), len(self.previous))  # an epoch's last batch may be smaller
                terms["dsr"] = self.dsr_loss(ranked[:n], self.previous[:n])
            self.previous = ranked.detach()
        return terms

    def attention_masks(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each head's attention mask on `x`, averaged over channels: stage -> (N, H, W), eval mode, no grad."""
        with torch.no_grad(), eval_mode(model), eval_mode(self):
            features = tap(model, x, self.stages)
            return {s: head.attention(features[s]).mean(dim=1) for s, head in zip(self.stages, self.heads)}


def sorted_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) per sample, sorted descending: the output's "shape" DSR makes consistent.

    >>> sorted_probabilities(torch.tensor([[0.0, 2.0, 1.0]]), 1.0).argmax(1).tolist()
    [0]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    return F.softmax(logits / temperature, dim=1).sort(dim=1, descending=True).values
