"""Fashion-MNIST offline: where the files come from and whether they are intact.

Sources, in order: the torchvision raw folder `<root>/FashionMNIST/raw/`, Debian's
`dataset-fashion-mnist` package (its .gz files are extracted into that raw folder, because Debian
recompressed them and torchvision's archive checksum rejects them), then torchvision's download.
Every decoded file is checked (header, sizes, label range, and the official release's sha256 on
full-size files) before anything says "ready".
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import zlib
from pathlib import Path

from .config import data_root

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
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



class DatasetUnavailable(FileNotFoundError):
    """No source could provide the dataset; the message lists the ways to fix it."""


class DatasetCorrupt(ValueError):
    """A dataset file is damaged (truncated, wrong header, labels out of range, changed bytes)."""


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
