import json
import shutil

import pytest
import torch

from indistill_lab import zoo
from indistill_lab.data import Loader, load_split
from indistill_lab.metrics import accuracy
from indistill_lab.models import build_model

MANIFEST = zoo.read_manifest()["models"]
WITH_ACCURACY = [name for name, entry in MANIFEST.items() if "test_accuracy" in entry]


def test_zoo_ships_the_three_baselines():
    assert set(zoo.RECIPES) <= set(MANIFEST)
    assert MANIFEST["teacher"]["test_accuracy"] >= 92.0
    for name in zoo.RECIPES:
        entry = MANIFEST[name]
        assert entry["command"].startswith("python -m indistill_lab zoo build") and entry["seed"] == zoo.SEED
        assert entry["epochs"] == zoo.RECIPES[name]["epochs"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_shipped_file_loads_with_its_hash_and_says_how_it_was_made(name):
    model = zoo.load(name)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert MANIFEST[name]["command"].startswith("python -m indistill_lab")


@pytest.mark.parametrize("name", WITH_ACCURACY)
def test_shipped_checkpoint_reproduces_recorded_accuracy(name):
    model = zoo.load(name)
    assert not model.training
    test = load_split("fashion-mnist", "test", quick=False)
    measured = 100 * accuracy(model, Loader(test, 1000, shuffle=False), "cpu")
    assert measured == pytest.approx(zoo.read_manifest()["models"][name]["test_accuracy"], abs=0.011)


def test_load_refuses_unknown_missing_and_modified_files(tmp_path):
    model = build_model("student")
    sha = zoo.save_model(model, tmp_path / "fashion-mnist" / "s.pt")
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {"s": {"file": "fashion-mnist/s.pt", "sha256": sha}}}))
    clone = zoo.load("s", tmp_path)
    assert torch.equal(clone.stage1.conv1.weight, model.stage1.conv1.weight)
    with pytest.raises(KeyError, match="Available: s"):
        zoo.load("teacher", tmp_path)
    with open(tmp_path / "fashion-mnist" / "s.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="does not match the sha256"):
        zoo.load("s", tmp_path)
    (tmp_path / "fashion-mnist" / "s.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        zoo.load("s", tmp_path)
    with pytest.raises(KeyError, match="none"):
        zoo.load("s", tmp_path / "empty")


def test_build_keeps_what_is_already_built(tmp_path, capsys):
    shutil.copytree(zoo.ZOO_DIR, tmp_path / "zoo")
    before = (tmp_path / "zoo" / "manifest.json").read_text()
    zoo.build(["student"], zoo_dir=tmp_path / "zoo", progress=False)
    assert "already built, kept" in capsys.readouterr().out
    assert (tmp_path / "zoo" / "manifest.json").read_text() == before
    with pytest.raises(KeyError, match="Known: student, auxiliary, teacher"):
        zoo.build(["giant"], zoo_dir=tmp_path / "zoo")
