import gzip
from pathlib import Path

import pytest
import torch

from indistill_lab import data, fashion_mnist
from indistill_lab.data import Loader, crop_flip, dataset_info, load_split
from indistill_lab.fashion_mnist import FASHION_FILES, DatasetUnavailable, ensure_fashion_mnist

DEBIAN = fashion_mnist.DEBIAN_FASHION_DIR


def _fake_idx(folder: Path, n: int = 20, compress: bool = False) -> None:
    """Write a tiny valid Fashion-MNIST in idx format (n images per split)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        if "images" in name:
            payload = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            payload += bytes(range(256)) * (n * 784 // 256) + bytes(n * 784 % 256)
        else:
            payload = (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(payload)
        else:
            (folder / name).write_bytes(payload)


def test_raw_folder_is_used_first(tmp_path):
    _fake_idx(tmp_path / "FashionMNIST" / "raw")
    assert ensure_fashion_mnist(tmp_path, debian_dir=tmp_path / "nope", allow_download=False) == "raw"
    split = load_split("fashion-mnist", "train", root=tmp_path, quick=False)
    assert split.x.shape == (20, 1, 28, 28) and split.y.tolist()[:3] == [0, 1, 2]


def test_debian_package_is_extracted_into_raw(tmp_path):
    _fake_idx(tmp_path / "debian", compress=True)
    root = tmp_path / "data"
    assert ensure_fashion_mnist(root, debian_dir=tmp_path / "debian", allow_download=False) == "debian"
    assert all((root / "FashionMNIST" / "raw" / f).is_file() for f in FASHION_FILES)
    # a second call finds the extracted raw files
    assert ensure_fashion_mnist(root, debian_dir=tmp_path / "nope", allow_download=False) == "raw"


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(), reason="Debian package not installed")
def test_real_debian_files_load_with_torchvision(tmp_path):
    assert ensure_fashion_mnist(tmp_path, allow_download=False) == "debian"
    test = load_split("fashion-mnist", "test", root=tmp_path, quick=False)
    assert len(test) == 10_000 and torch.bincount(test.y).tolist() == [1000] * 10


def test_no_source_names_all_three_fixes(tmp_path):
    with pytest.raises(DatasetUnavailable) as err:
        ensure_fashion_mnist(tmp_path, debian_dir=tmp_path / "nope", allow_download=False)
    msg = str(err.value)
    assert "FashionMNIST/raw" in msg and "apt-get install dataset-fashion-mnist" in msg and "internet" in msg


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetUnavailable, match="ConnectionError: no network"):
        ensure_fashion_mnist(tmp_path, debian_dir=tmp_path / "nope", allow_download=True)


def test_quick_subset_is_deterministic_and_balanced():
    a = load_split("fashion-mnist", "train")  # quick mode is on in tests
    b = load_split("fashion-mnist", "train")
    assert len(a) == data.QUICK_SIZES["train"]
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    counts = torch.bincount(a.y, minlength=10)
    assert counts.min() >= counts.max() - 1 or counts.min() >= len(a) // 10 - 1


def test_metadata_and_unknown_dataset():
    info = dataset_info("FashionMNIST")
    assert info.input_shape == (1, 28, 28) and info.class_names[9] == "Ankle boot"
    with pytest.raises(KeyError, match="Known datasets: fashion-mnist, cifar10"):
        dataset_info("mnist-3d")


def test_loader_is_seeded_per_epoch_and_covers_everything(tiny_split):
    loader = Loader(tiny_split, batch_size=10, seed=3)
    first = torch.cat([y for _, y in loader])
    loader.set_epoch(0)
    again = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])  # epoch 1: another order
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(tiny_split.y.tolist()) and len(loader) == 7


def test_crop_flip_keeps_shape_and_moves_pixels():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    out = crop_flip(pad=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)


def test_a_described_dataset_without_reader_is_an_error_not_cifar10(monkeypatch, tmp_path):
    """A dataset known by name but with no reader used to be loaded as CIFAR-10 (a download error)."""
    mine = data.DatasetInfo("my-set", 3, 32, 2, ("a", "b"), (0.0,) * 3, (1.0,) * 3)
    monkeypatch.setitem(data.DATASETS, "my-set", mine)
    with pytest.raises(KeyError, match="No reader for dataset 'my-set': load_split reads fashion-mnist, cifar10.*"
                                       "split_from_tensors"):
        load_split("my-set", root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was downloaded


def test_split_from_tensors_and_from_a_dataset():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 3, 8, 8, generator=g) * 0.5 + 0.25, torch.arange(12) % 3
    split = data.split_from_tensors(x, y, "mine", standardise=True)
    assert split.info.input_shape == (3, 8, 8) and split.info.num_classes == 3 and split.info.class_names == ("0", "1", "2")
    per_channel = split.x.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-5)
    assert torch.allclose(split.denormalise(split.x), x, atol=1e-6)  # the recorded stats invert it
    raw = data.split_from_tensors(x[:, :1, :, :].squeeze(1), y)  # (N, H, W): one channel, used as given
    assert raw.x.shape == (12, 1, 8, 8) and torch.equal(raw.x[:, 0], x[:, 0])
    from_ds = data.split_from_dataset(TensorDataset(x, y), class_names=["p", "q", "r"])
    assert torch.equal(from_ds.x, x) and torch.equal(from_ds.y, y) and from_ds.info.class_names == ("p", "q", "r")
    assert len(from_ds.subset(6)) == 6 and torch.bincount(from_ds.subset(6).y).tolist() == [2, 2, 2]


@pytest.mark.parametrize("args, error, match", [
    ((torch.rand(4, 3, 8, 6), torch.arange(4)), ValueError, r"square images.*\(4, 3, 8, 6\)"),
    ((torch.rand(4, 1, 8, 8), torch.arange(3)), ValueError, r"one class label per image: shape \(4,\)"),
    ((torch.rand(4, 1, 8, 8), torch.rand(4)), ValueError, "integer class indices"),
    ((torch.rand(4, 1, 8, 8), torch.tensor([0, 1, -1, 2])), ValueError, r"range over -1..2"),
])
def test_split_from_tensors_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        data.split_from_tensors(*args)


def test_split_from_dataset_needs_tensor_images():
    class Pictures:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return [[0, 1], [1, 0]], i

    with pytest.raises(TypeError, match=r"Item 0 .*image is a list.*transform=ToTensor\(\)"):
        data.split_from_dataset(Pictures())


def test_splits_from_a_folder_share_the_training_statistics(tmp_path):
    g = torch.Generator().manual_seed(1)
    train_x, test_x = torch.rand(9, 2, 4, 4, generator=g) * 3 + 1, torch.rand(4, 2, 4, 4, generator=g)
    torch.save({"x": train_x, "y": torch.arange(9) % 3, "class_names": ["a", "b", "c"]}, tmp_path / "train.pt")
    torch.save({"x": test_x, "y": torch.tensor([0, 1, 0, 1])}, tmp_path / "test.pt")  # no class 2 in the test set
    train, test = data.splits_from_folder(tmp_path, standardise=True)
    assert train.info.class_names == test.info.class_names == ("a", "b", "c") and test.info.num_classes == 3
    assert test.info.mean == train.info.mean and test.info.std == train.info.std
    assert torch.allclose(test.denormalise(test.x), test_x.clamp(0, 1), atol=1e-6)  # test_x lies in [0, 1)
    assert not torch.allclose(test.x.mean(dim=(0, 2, 3)), torch.zeros(2), atol=0.1)  # not its own statistics
    (tmp_path / "test.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"test.pt is missing.*torch.save\(\{'x'"):
        data.splits_from_folder(tmp_path)
    torch.save([test_x], tmp_path / "test.pt")
    with pytest.raises(ValueError, match="must hold a dict with 'x'"):
        data.splits_from_folder(tmp_path)
