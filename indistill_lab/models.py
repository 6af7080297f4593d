"""Model families built from a list of widths, adapted to the input shape.

Every model exposes its stages under stable module paths (`stage1`, `stage2`, ...; for the
ResNet `layer1` ... `layer4`) and its penultimate embedding (the retrieval features) through
`embed(x)` and the module path `embedding_path`. Activations are separate, non-in-place
modules, because attribution tools (captum) break on reused or in-place ReLUs.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from .adapter import described
from .data import DatasetInfo, dataset_info

PRESETS: dict[str, dict[str, Any]] = {
    # A teacher that reaches >= 92% on Fashion-MNIST in a few CPU epochs.
    "teacher": {"widths": (24, 48, 96), "fc": (256,), "convs_per_stage": 2},
    # The paper's auxiliary (convs 16/32/64, fc -> 128 -> classes) and student (8/16/32, fc -> 64).
    "auxiliary": {"widths": (16, 32, 64), "fc": (128,)},
    "student": {"widths": (8, 16, 32), "fc": (64,)},
    # The cascade's network (docs/cascade.md): two convs per stage and a small head, so that 5 maskable convs
    # hold most of the parameters (72k of 110k) as in the cascade paper's VGG/ResNets.
    "cascade-net": {"widths": (16, 32, 64), "fc": (64,), "convs_per_stage": 2},
}


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` (N, C, H, W) laid out channels-last, with strides that say so even when C == 1.

    Same values; convolutions then pick their channels-last kernels and BatchNorm, ReLU and
    max-pool follow the layout, which on CPU makes a training step of the small ConvNets about
    1.5x faster (benchmarks/train_step_speed.py). `x.contiguous(memory_format=...)` keeps a
    one-channel image as it is (both layouts fit it), so the copy is explicit.
    """
    if x.dim() != 4 or x.stride(1) == 1:
        return x
    try:
        return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
    except RuntimeError:  # under torch.func transforms (vmap: the per-example Fisher) the layout cannot be set
        return x


class ConvNet(nn.Module):
    """Stages of (3x3 conv, BN, ReLU) x `convs_per_stage` then 2x2 max-pool, then an MLP head.

    `widths` gives each stage's channels, `fc` the hidden sizes of the head; the last hidden
    layer after its ReLU is the embedding. `padding=1` keeps feature maps large enough to look
    at on 28x28 inputs; `padding=0` on 32x32x3 is the paper's exact network (58k / 15k params).
    Activations are laid out channels-last (`to_channels_last`); set `channels_last = False` on an
    instance for the plain NCHW path (the same results to float tolerance, slower on CPU).
    """

    channels_last = True

    def __init__(
        self,
        widths: Sequence[int],
        fc: Sequence[int],
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        convs_per_stage: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__()
        if not widths or any(int(w) <= 0 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {list(widths)}.")
        if not fc or any(int(f) <= 0 for f in fc):
            raise ValueError(f"fc must be a non-empty list of positive ints, got {list(fc)}.")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.convs_per_stage, self.padding = convs_per_stage, padding
        channels, side = in_channels, image_size
        for s, width in enumerate(widths, start=1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for c in range(1, convs_per_stage + 1):
                layers[f"conv{c}"] = nn.Conv2d(channels, width, 3, padding=padding)
                layers[f"bn{c}"] = nn.BatchNorm2d(width)
                layers[f"act{c}"] = nn.ReLU()
                channels, side = width, side + 2 * padding - 2
            layers["pool"] = nn.MaxPool2d(2)
            self.add_module(f"stage{s}", nn.Sequential(layers))
            side //= 2
            if side < 1:
                raise ValueError(f"Input {image_size}x{image_size} is too small for {len(widths)} stages "
                                 f"with padding={padding}: use fewer stages or padding=1.")
        self.flatten = nn.Flatten()
        flat = channels * side * side
        for i, hidden in enumerate(fc, start=1):
            self.add_module(f"fc{i}", nn.Linear(flat, hidden))
            self.add_module(f"act_fc{i}", nn.ReLU())
            flat = hidden
        self.classifier = nn.Linear(flat, num_classes)

    @property
    def num_stages(self) -> int:
        return sum(1 for name, _ in self.named_children() if name.startswith("stage"))

    @property
    def stage_paths(self) -> list[str]:
        """Module paths of the stage outputs (after the pool): the layers InDistill aligns."""
        return [f"stage{s}" for s in range(1, self.num_stages + 1)]

    @property
    def embedding_path(self) -> str:
        return f"act_fc{self.num_hidden}"

    @property
    def num_hidden(self) -> int:
        return sum(1 for name, _ in self.named_children() if name.startswith("fc"))

    @property
    def widths(self) -> list[int]:
        """Current stage widths, read off the convs (so they stay true after pruning)."""
        return [getattr(self, p)[-4].out_channels for p in self.stage_paths]

    @property
    def fc_sizes(self) -> list[int]:
        return [getattr(self, f"fc{i}").out_features for i in range(1, self.num_hidden + 1)]

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (used by checkpoints)."""
        return {
            "family": "convnet", "widths": self.widths, "fc": self.fc_sizes,
            "in_channels": self.in_channels, "image_size": self.image_size,
            "num_classes": self.num_classes, "convs_per_stage": self.convs_per_stage,
            "padding": self.padding,
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = to_channels_last(x)
        for path in self.stage_paths:
            x = getattr(self, path)(x)
        return self.flatten(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (last hidden fc after ReLU): the retrieval representation."""
        x = self.features(x)
        for i in range(1, self.num_hidden + 1):
            x = getattr(self, f"act_fc{i}")(getattr(self, f"fc{i}")(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): BN-ReLU-conv twice, identity or 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(in_ch), nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(out_ch), nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if stride != 1 or in_ch != out_ch else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """The paper's CIFAR teacher: pre-activation ResNet-18 with a 512-d pooled embedding."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self._widths = in_channels, num_classes, list(widths)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        channels = widths[0]
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            self.add_module(f"layer{i}", nn.Sequential(PreActBlock(channels, width, stride), PreActBlock(width, width)))
            channels = width
        self.bn, self.act = nn.BatchNorm2d(channels), nn.ReLU()
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    stage_paths = property(lambda self: [f"layer{i}" for i in range(1, len(self._widths) + 1)])
    embedding_path = "flatten"

    def config(self) -> dict[str, Any]:
        return {"family": "preact-resnet18", "in_channels": self.in_channels,
                "num_classes": self.num_classes, "widths": self._widths}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for path in self.stage_paths:
            x = getattr(self, path)(x)
        return self.flatten(self.pool(self.act(self.bn(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def build_model(name: str, dataset: str | DatasetInfo = "fashion-mnist", **overrides: Any) -> nn.Module:
    """Build a named model ('teacher', 'auxiliary', 'student', 'preact-resnet18') for a dataset."""
    info = dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)
    if name == "preact-resnet18":
        return PreActResNet18(info.channels, info.num_classes, **overrides)
    if name not in PRESETS:
        raise KeyError(f"Unknown model {name!r}. Known: {', '.join([*PRESETS, 'preact-resnet18'])}.")
    kwargs = {**PRESETS[name], "in_channels": info.channels, "image_size": info.size,
              "num_classes": info.num_classes, **overrides}
    return ConvNet(**kwargs)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild an architecture from `model.config()` (weights are loaded separately)."""
    kwargs = dict(config)
    family = kwargs.pop("family")
    if family == "convnet":
        return ConvNet(**kwargs)
    if family == "preact-resnet18":
        return PreActResNet18(**kwargs)
    raise KeyError(f"Unknown model family {family!r} in checkpoint config.")


def model_input_shape(model: nn.Module, hint: str = "pass input_shape=(C, H, W), e.g. (3, 64, 64)") -> tuple[int, int, int]:
    """(channels, height, width) a model expects: its description's (`adapter.described`: a kit model's
    `in_channels` / `image_size`, or the spec attached with `with_spec`); other models raise with `hint`,
    which says what the caller should pass."""
    spec = described(model)
    if spec is not None:
        return spec.input_shape
    raise ValueError(f"Cannot infer the input shape of {type(model).__name__}: {hint}, or attach a model "
                     "description with indistill_lab.adapter.with_spec.")
