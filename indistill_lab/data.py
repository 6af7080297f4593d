"""Datasets as in-memory tensors, with an offline-first Fashion-MNIST and fast batch loaders.

Fashion-MNIST sources, in order: the torchvision raw folder `<root>/FashionMNIST/raw/`,
Debian's `dataset-fashion-mnist` package (its .gz files are extracted into that raw folder,
because Debian recompressed them and torchvision's archive checksum rejects them), then
torchvision's download. CIFAR-10 comes from torchvision's download.
"""
from __future__ import annotations

import gzip
import hashlib
import numbers
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .config import data_root, quick_mode

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
QUICK_SIZES = {"train": 2048, "test": 512}
IDX_MAGIC = {"images": 2051, "labels": 2049}  # idx headers: unsigned bytes, 3 or 1 dimensions
FASHION_COUNTS = {"train": 60_000, "t10k": 10_000}
# sha256 of the decoded files of the official release (identical in Debian's recompressed package and
# torchvision's download, whose archive md5 does not match Debian's .gz). Checked on full-size files.
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


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


class DatasetUnavailable(FileNotFoundError):
    """No source could provide the dataset; the message lists the ways to fix it."""


class DatasetCorrupt(ValueError):
    """A dataset file is damaged (truncated, wrong header, labels out of range, changed bytes)."""


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


def _raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def _has_raw(root: Path) -> bool:
    return all((_raw_dir(root) / f).is_file() for f in FASHION_FILES)


def check_idx_file(path: Path, name: str, fix: str, num_classes: int = 10) -> int:
    """Check one decoded Fashion-MNIST idx file `name` stored at `path`; return its number of items.

    Checks the header magic, the image size (28 x 28), that the file size matches the header's
    count, that labels lie in [0, num_classes) and, for a file of the official size, its sha256.
    Raises `DatasetCorrupt` naming the file and `fix`.
    """
    kind = "images" if "images" in name else "labels"
    header = 16 if kind == "images" else 8
    blob = Path(path).read_bytes()

    def corrupt(problem: str) -> DatasetCorrupt:
        return DatasetCorrupt(f"{path} is not a valid Fashion-MNIST {kind} file: {problem}. {fix}")

    if len(blob) < header:
        raise corrupt(f"only {len(blob)} bytes, shorter than the {header}-byte idx header (truncated?)")
    fields = [int.from_bytes(blob[i:i + 4], "big") for i in range(0, header, 4)]
    if fields[0] != IDX_MAGIC[kind]:
        raise corrupt(f"header magic {fields[0]}, expected {IDX_MAGIC[kind]}")
    count = fields[1]
    if kind == "images" and fields[2:] != [28, 28]:
        raise corrupt(f"images of {fields[2]} x {fields[3]} pixels, expected 28 x 28")
    expected = header + count * (784 if kind == "images" else 1)
    if len(blob) != expected:
        raise corrupt(f"{len(blob)} bytes where the header's {count} items need {expected} (truncated or padded)")
    if kind == "labels" and count and max(blob[header:]) >= num_classes:
        raise corrupt(f"label {max(blob[header:])} is out of range (classes are 0..{num_classes - 1})")
    if count == FASHION_COUNTS[name.split("-")[0]] and hashlib.sha256(blob).hexdigest() != FASHION_SHA256[name]:
        raise corrupt("its sha256 differs from the official release's (changed bytes)")
    return count


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of raw folders already checked


def verify_raw(root: Path) -> None:
    """Check the four decoded files in `<root>/FashionMNIST/raw/` (once per process while unchanged)."""
    raw = _raw_dir(root)
    key = tuple((str(raw / f), (raw / f).stat().st_size, (raw / f).stat().st_mtime_ns) for f in FASHION_FILES)
    if key in _VERIFIED:
        return
    fix = ("Delete it and run `python -m indistill_lab data` to extract it again from Debian's package "
           "(or to download it).")
    counts = {f: check_idx_file(raw / f, f, fix) for f in FASHION_FILES}
    for split in FASHION_COUNTS:
        images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if images != labels:
            raise DatasetCorrupt(f"{raw}: {split} has {images} images but {labels} labels. "
                                 f"{fix.replace('Delete it', f'Delete both {split} files')}")
    _VERIFIED.add(key)


def _extract_debian(root: Path, debian_dir: Path) -> bool:
    """Extract and check Debian's gzip files into the torchvision raw folder; False if the package is absent.

    Every file is decoded to a `.part` file and checked before any is renamed into place; on a damaged
    archive the `.part` files are removed and `DatasetCorrupt` names the archive.
    """
    sources = [debian_dir / f"{f}.gz" for f in FASHION_FILES]
    if not all(s.is_file() for s in sources):
        return False
    raw = _raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    parts = [raw / f"{name}.part" for name in FASHION_FILES]
    fix = "Reinstall the package: sudo apt-get install --reinstall dataset-fashion-mnist."
    try:
        for src, name, tmp in zip(sources, FASHION_FILES, parts):
            try:
                with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except (OSError, EOFError, zlib.error) as exc:
                raise DatasetCorrupt(f"{src} cannot be decompressed ({type(exc).__name__}: {exc}); the archive "
                                     f"is truncated or damaged. {fix}") from exc
            check_idx_file(tmp, name, f"It was decoded from {src}. {fix}")
    except BaseException:
        for tmp in parts:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, name in zip(parts, FASHION_FILES):
        tmp.replace(raw / name)
    return True


def ensure_fashion_mnist(
    root: Path | None = None,
    debian_dir: Path = DEBIAN_FASHION_DIR,
    allow_download: bool = True,
) -> str:
    """Make Fashion-MNIST's raw files available under `root`; return which source was used.

    Returns "raw", "debian" or "download", after checking the files' decoded contents. Raises
    `DatasetUnavailable` naming every fix, or `DatasetCorrupt` naming a damaged file.
    """
    root = Path(root) if root is not None else data_root()
    if _has_raw(root):
        verify_raw(root)
        return "raw"
    if _extract_debian(root, debian_dir):
        verify_raw(root)
        return "debian"
    error = "downloads were disabled"
    if allow_download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            error = f"{type(exc).__name__}: {exc}"
        else:
            if _has_raw(root):
                verify_raw(root)
                return "download"
    raise DatasetUnavailable(
        f"Fashion-MNIST was not found in {_raw_dir(root)} and could not be obtained ({error}).\n"
        "Fix it in one of three ways:\n"
        f"  1. copy the four uncompressed idx files ({', '.join(FASHION_FILES)}) into {_raw_dir(root)};\n"
        f"  2. install Debian's package: sudo apt-get update && sudo apt-get install dataset-fashion-mnist"
        f" (it provides {debian_dir});\n"
        "  3. connect to the internet so torchvision can download it (or set INDISTILL_DATA to a"
        " folder that already holds FashionMNIST/raw)."
    )


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
