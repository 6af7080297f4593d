"""Datasets as in-memory tensors, with an offline-first Fashion-MNIST (`fashion_mnist`) and fast
batch loaders. CIFAR-10 comes from torchvision's download."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .config import data_root, quick_mode
from .fashion_mnist import DatasetUnavailable, ensure_fashion_mnist

QUICK_SIZES = {"train": 2048, "test": 512}
@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its input: shape, classes and normalisation."""

    name: str
    channels: int
    size: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 1, 28, 10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,),
    ),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10,
        ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
}


@dataclass
class Split:
    """One split of a dataset held in memory: normalised images `x` (N, C, H, W) and labels `y`."""

    x: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo
    name: str

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int, seed: int = 0) -> "Split":
        """A deterministic subset of `n` examples with every class equally represented."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"subset size must be a positive whole number of examples, not {n!r}.")
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g)
        per_class = -(-n // self.info.num_classes)
        picked = torch.cat([order[self.y[order] == c][:per_class] for c in range(self.info.num_classes)])
        picked = picked[torch.randperm(len(picked), generator=g)][:n]
        return Split(self.x[picked], self.y[picked], self.info, f"{self.name}[{n}]")

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] for display."""
        mean = torch.tensor(self.info.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of a known dataset; raises with the list of known names otherwise."""
    key = name.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(key, key)
    if key not in DATASETS:
        raise KeyError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}.")
    return DATASETS[key]


def _normalise(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    x = images.float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


def load_split(
    name: str = "fashion-mnist",
    split: str = "train",
    root: Path | None = None,
    quick: bool | None = None,
) -> Split:
    """Load a dataset split into memory, normalised. In quick mode a fixed class-balanced subset."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
    info = dataset_info(name)
    root = Path(root) if root is not None else data_root()
    if info.name == "fashion-mnist":
        ensure_fashion_mnist(root)
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(root), train=(split == "train"), download=False)
        images, labels = ds.data, ds.targets
    else:
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(str(root), train=(split == "train"), download=True)
        except Exception as exc:
            raise DatasetUnavailable(
                f"CIFAR-10 could not be loaded from {root} or downloaded ({exc}). It needs internet "
                "once; or place torchvision's cifar-10-batches-py folder there."
            ) from exc
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
        labels = torch.tensor(ds.targets)
    data = Split(_normalise(images, info), labels.long(), info, f"{info.name}/{split}")
    if quick_mode() if quick is None else quick:
        data = data.subset(QUICK_SIZES[split])
    return data


BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def crop_flip(pad: int = 4) -> BatchTransform:
    """Random crop with zero padding plus horizontal flip, applied to a whole batch (CIFAR recipe)."""

    def transform(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
        out = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        out = out.gather(3, cols)
        flip = torch.rand(n, generator=g) < 0.5
        out[flip] = out[flip].flip(3)
        return out

    return transform


class Loader:
    """Mini-batches from an in-memory split: seeded shuffling, optional batch transform.

    Much faster than a per-item DataLoader for small images, and deterministic: epoch `e` of a
    loader built with seed `s` always yields the same batches. Under torchrun (`set_rank`) every rank
    draws the same batches and yields its share of each: `batch_size` is the global batch.
    """

    def __init__(
        self,
        data: Split,
        batch_size: int = 128,
        shuffle: bool = True,
        seed: int = 0,
        transform: BatchTransform | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.transform, self.drop_last = seed, transform, drop_last
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        self.indices: torch.Tensor | None = None  # example indices of the batch last yielded

    @property
    def examples_per_epoch(self) -> int:
        return len(self.data)

    def __len__(self) -> int:
        """Batches per epoch; split over ranks, a last batch with fewer examples than ranks is dropped."""
        full, rest = divmod(self.examples_per_epoch, self.batch_size)
        return full + int(not self.drop_last and rest >= max(1, self.world_size))

    def set_rank(self, rank: int, world_size: int) -> None:
        """Yield rank `rank`'s share (every `world_size`-th example) of each batch, same batches on every rank."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}.")
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's shuffle the next iteration yields (used when resuming)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order[: self.examples_per_epoch]
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world_size]
            x = self.data.x[idx]
            if self.transform is not None:
                x = self.transform(x, g)
            self.indices = idx
            yield x, self.data.y[idx]
        self.indices = None
        self.epoch += 1
