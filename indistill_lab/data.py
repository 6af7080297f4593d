"""Datasets as in-memory tensors, with an offline-first Fashion-MNIST (`fashion_mnist`) and fast
batch loaders. CIFAR-10 comes from torchvision's download; a user's own data becomes a `Split` with
`split_from_tensors` or `split_from_dataset`."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .config import data_root, quick_mode
from .fashion_mnist import DatasetUnavailable, ensure_fashion_mnist

QUICK_SIZES = {"train": 2048, "test": 512}
TRAIN_SIZES = {"fashion-mnist": 60_000, "cifar10": 50_000}
"""Examples in each preset's full training split (`pipeline.nominal_train_size` reads it without loading)."""

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
    if info.name not in _READERS:
        raise KeyError(f"No reader for dataset {info.name!r}: load_split reads {', '.join(_READERS)}. For data of "
                       "your own, build the splits with split_from_tensors(x, y) or split_from_dataset(dataset).")
    images, labels = _READERS[info.name](root, split == "train")
    data = Split(_normalise(images, info), labels.long(), info, f"{info.name}/{split}")
    if quick_mode() if quick is None else quick:
        data = data.subset(QUICK_SIZES[split])
    return data


def _read_fashion_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ensure_fashion_mnist(root)
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(root), train=train, download=False)
    return ds.data, ds.targets


def _read_cifar10(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=True)
    except Exception as exc:
        raise DatasetUnavailable(
            f"CIFAR-10 could not be loaded from {root} or downloaded ({exc}). It needs internet "
            "once; or place torchvision's cifar-10-batches-py folder there."
        ) from exc
    return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2), torch.tensor(ds.targets)


_READERS: dict[str, Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]] = {
    "fashion-mnist": _read_fashion_mnist, "cifar10": _read_cifar10}
"""How each named dataset's raw uint8 images (N, [C,] H, W) and labels are read."""


def split_from_tensors(x: torch.Tensor, y: torch.Tensor, name: str = "custom",
                       class_names: Sequence[str] | None = None, standardise: bool = False,
                       like: Split | None = None) -> Split:
    """A `Split` of a user's own images `x` (N, C, H, W) or (N, H, W) and class labels `y` (N,) in 0..K-1.

    `x` is used as given (float32), unless `standardise=True` which subtracts each channel's mean and
    divides by its std (recorded in `info`, so `denormalise` inverts it). `like` (the training split) gives
    the statistics and class names instead, so a test split is standardised like the training one. Images
    must be square, since the kit's models take one image size. K = len(class_names) or max label + 1.
    """
    if like is not None:
        class_names = like.info.class_names if class_names is None else class_names
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}; "
                        "use torch.as_tensor on arrays.")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x must hold square images shaped (N, C, H, W) or (N, H, W), got {tuple(x.shape)}.")
    if y.dim() != 1 or len(y) != len(x) or len(y) == 0:
        raise ValueError(f"y must be one class label per image: shape ({len(x)},), got {tuple(y.shape)}.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}.")
    classes = len(class_names) if class_names is not None else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise ValueError(f"labels range over {int(y.min())}..{int(y.max())}; they must be class indices 0..{classes - 1}.")
    x = x.float()
    channels = x.shape[1]
    mean, std = (0.0,) * channels, (1.0,) * channels
    if like is not None:
        if like.info.channels != channels:
            raise ValueError(f"x has {channels} channels but `like` ({like.name}) has {like.info.channels}.")
        mean, std = like.info.mean, like.info.std
    elif standardise:
        mean, std = tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-12).tolist())
    if like is not None or standardise:
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(classes))
    info = DatasetInfo(name, channels, int(x.shape[2]), classes, names, mean, std)
    return Split(x, y.long(), info, name)


def split_from_dataset(dataset: Any, name: str = "custom", class_names: Sequence[str] | None = None,
                       standardise: bool = False) -> Split:
    """A `Split` holding every item of a map-style dataset (`len(ds)`, `ds[i] -> (image tensor, label)`),
    e.g. a torchvision dataset built with `transform=ToTensor()`. Held in memory, like the kit's datasets."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"{type(dataset).__name__} is not a map-style dataset (needs __len__ and __getitem__); "
                        "for an iterable of batches, pass it to Trainer.fit directly.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor)):
            got = type(item[0]).__name__ if isinstance(item, (tuple, list)) and item else type(item).__name__
            raise TypeError(f"Item {i} of the dataset is not (image tensor, label) (the image is a {got}); build "
                            "the dataset with a transform that returns tensors, e.g. transform=ToTensor().")
        images.append(item[0])
        labels.append(int(item[1]))
    return split_from_tensors(torch.stack(images), torch.tensor(labels), name, class_names, standardise)


def splits_from_folder(folder: Path | str, standardise: bool = False) -> tuple[Split, Split]:
    """(train, test) from a folder holding `train.pt` and `test.pt`, each saved with
    `torch.save({"x": images, "y": labels}, ...)` (optionally with "class_names"). With `standardise=True`
    both are standardised with the training split's channel statistics."""
    folder = Path(folder)
    splits: list[Split] = []
    for part in ("train", "test"):
        path = folder / f"{part}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the folder needs train.pt and test.pt, each saved with "
                                    "torch.save({'x': images, 'y': labels}, path).")
        content = torch.load(path, weights_only=True)
        if not isinstance(content, dict) or not {"x", "y"} <= set(content):
            got = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise ValueError(f"{path} must hold a dict with 'x' (images) and 'y' (labels), got {got}.")
        names = content.get("class_names") or (splits[0].info.class_names if splits else None)
        like = splits[0] if splits and standardise else None
        splits.append(split_from_tensors(content["x"], content["y"], f"{folder.name}/{part}", names,
                                         standardise=standardise and not splits, like=like))
    return splits[0], splits[1]


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
