"""The model zoo: small pretrained checkpoints shipped in `data/zoo/`, and the command that rebuilds them.

    model = zoo.load("student")          # ready, eval mode
    python -m indistill_lab zoo build    # retrain teacher, auxiliary and student from seed 0

`data/zoo/manifest.json` records, per model, the command, seed, epochs, test accuracy,
retrieval mAP (e, c) and the checkpoint's sha256; `load` refuses a file whose hash differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import HOME, default_device
from .data import Loader, dataset_info, load_split
from .metrics import accuracy, evaluate_retrieval
from .models import build_model, model_from_config
from .results import repair_hint
from .train import Trainer, save_checkpoint

ZOO_DIR = HOME / "data" / "zoo"
SEED = 0
# Cross-entropy recipes: Adam 1e-3, dropped to 1e-4 for the last epochs (the paper's pattern), batch 128.
RECIPES: dict[str, dict[str, Any]] = {
    "student": {"model": "student", "epochs": 10, "lr_schedule": {8: 1e-4}},
    "auxiliary": {"model": "auxiliary", "epochs": 10, "lr_schedule": {8: 1e-4}},
    "teacher": {"model": "teacher", "epochs": 6, "lr_schedule": {5: 1e-4}},
    "cascade-net": {"model": "cascade-net", "epochs": 6, "lr_schedule": {5: 1e-4}},
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(zoo_dir: Path = ZOO_DIR) -> dict[str, Any]:
    """The manifest as a dict ({"models": {}} when nothing has been built); raises ValueError if malformed."""
    path = Path(zoo_dir) / "manifest.json"
    if not path.is_file():
        return {"models": {}}
    fix = ("Restore it with git (`git checkout -- data/zoo/manifest.json`) or rebuild with "
           "`python -m indistill_lab zoo build`.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"The zoo manifest {path} is not valid JSON ({exc}). {fix}") from exc
    models = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(models, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str)
            for e in models.values()):
        raise ValueError(f"The zoo manifest {path} is malformed: it needs {{\"models\": {{name: {{\"file\": ..., "
                         f"\"sha256\": ..., ...}}}}}}. {fix}")
    return manifest


def models_for(dataset: str, zoo_dir: Path = ZOO_DIR) -> dict[str, Any]:
    """The manifest entries of the models trained on `dataset` (a known dataset name)."""
    name = dataset_info(dataset).name
    return {k: e for k, e in read_manifest(zoo_dir)["models"].items()
            if e.get("dataset", e["file"].split("/")[0]) == name}


def record(zoo_dir: Path, name: str, fields: dict[str, Any]) -> None:
    """Update one model's manifest entry (read-modify-write, so parallel builds keep each other's entries)."""
    manifest = read_manifest(zoo_dir)
    manifest["models"].setdefault(name, {}).update(fields)
    path = Path(zoo_dir) / "manifest.json"
    tmp = path.with_name(f"manifest.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def available(zoo_dir: Path = ZOO_DIR) -> list[str]:
    """Names of the models the zoo holds."""
    return sorted(read_manifest(zoo_dir)["models"])


def save_model(model: nn.Module, path: Path | str) -> str:
    """Save architecture config + weights atomically; return the file's sha256."""
    path = Path(path)
    save_checkpoint(path, {"config": model.config(), "state_dict": model.state_dict()})
    return _sha256(path)


def load_file(path: Path | str, device: torch.device | str = "cpu", kind: str | None = None) -> nn.Module:
    """Rebuild a model saved by `save_model`, in eval mode; ValueError naming the file if it is not one, with
    the fix for its `kind` ('zoo', 'cache' or 'checkpoint'; see `results.repair_hint`)."""
    fix = repair_hint(path, kind)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {exc}); it is truncated "
                         f"or not a torch file. {fix}") from exc
    if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= set(ckpt):
        raise ValueError(f"{path} is not a zoo model file (it needs 'config' and 'state_dict', as written by "
                         f"zoo.save_model). {fix}")
    try:
        model = model_from_config(ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = exc.args[0] if exc.args else exc
        raise ValueError(f"{path}: its weights do not fit the architecture its config describes ({detail}). "
                         f"{fix}") from exc
    return model.to(device).eval()


def load(name: str, zoo_dir: Path = ZOO_DIR, device: torch.device | str = "cpu") -> nn.Module:
    """A shipped model, ready to use (eval mode). Verifies the checkpoint's sha256 first."""
    models = read_manifest(zoo_dir)["models"]
    if name not in models:
        known = ", ".join(models) or "none (run `python -m indistill_lab zoo build`)"
        raise KeyError(f"No model {name!r} in the zoo at {zoo_dir}. Available: {known}.")
    entry = models[name]
    path = Path(zoo_dir) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed in the manifest but missing: restore it with git "
                                f"(`git checkout -- {path}`) or rebuild with `python -m indistill_lab zoo build`.")
    if _sha256(path) != entry["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in the manifest: the file was changed. "
                         "Restore it with git or rebuild the zoo.")
    return load_file(path, device, "zoo")


def evaluate(model: nn.Module, dataset: str = "fashion-mnist", retrieval: bool = True) -> dict[str, float]:
    """Full test-set accuracy and (optionally) retrieval on the full dataset, in percent.

    Retrieval keys: `map_e`/`map_c` (11-point interpolated mAP, the InDistill tables' metric),
    `map_std_e`/`map_std_c` (non-interpolated mAP) and `top100_e`/`top100_c` (precision@100),
    with queries = test set and database = train set.
    """
    test = load_split(dataset, "test", quick=False)
    out = {"test_accuracy": round(100 * accuracy(model, Loader(test, 1000, shuffle=False), "cpu"), 2)}
    if retrieval:
        train = load_split(dataset, "train", quick=False)
        for distance, m in evaluate_retrieval(model, test, train, device="cpu").items():
            d = distance[0]
            out.update({f"map_{d}": round(100 * m["map_11pt"], 2), f"map_std_{d}": round(100 * m["map"], 2),
                        f"top100_{d}": round(100 * m["precision_at_100"], 2)})
    return out


def build(names: list[str] | None = None, dataset: str = "fashion-mnist", zoo_dir: Path = ZOO_DIR,
          force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train the named models (default: all) with cross-entropy from `SEED`, save them and the manifest.

    A model whose recipe already matches its manifest entry is kept unless `force`; training
    resumes from `<name>.train.pt` if a previous build was interrupted.
    """
    names = names or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise KeyError(f"Unknown zoo model(s) {unknown}. Known: {', '.join(RECIPES)}.")
    dataset = dataset_info(dataset).name  # before any folder is created
    zoo_dir = Path(zoo_dir)
    sub = zoo_dir / dataset
    train_split = load_split(dataset, "train", quick=False)  # a missing dataset stops before any folder is made
    sub.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(zoo_dir)
    trained: list[str] = []
    command = "python -m indistill_lab zoo build" + (f" --only {' '.join(names)}" if names != list(RECIPES) else "")
    for name in names:
        recipe = RECIPES[name]
        entry = manifest["models"].get(name)
        if entry and not force and entry.get("epochs") == recipe["epochs"] and (zoo_dir / entry["file"]).is_file():
            print(f"{name}: already built, kept (use --force to retrain)")
            continue
        model = build_model(recipe["model"], dataset)
        trainer = Trainer(model, lr=1e-3, lr_schedule=recipe["lr_schedule"], device=default_device(),
                          checkpoint=sub / f"{name}.train.pt", progress=progress, seed=SEED)
        trainer.resume()
        start = time.perf_counter()
        history = trainer.fit(Loader(train_split, 128, shuffle=True, seed=SEED), recipe["epochs"])
        if history.stopped:
            raise RuntimeError(f"Training {name} stopped: {history.stopped}. Nothing was overwritten.")
        model = model.cpu().eval()
        rel = f"{dataset}/{name}.pt"
        sha = save_model(model, zoo_dir / rel)
        record(zoo_dir, name, {
            "file": rel, "sha256": sha, "command": command, "seed": SEED, "dataset": dataset,
            "epochs": recipe["epochs"], "lr": 1e-3, "lr_schedule": {str(k): v for k, v in recipe["lr_schedule"].items()},
            "batch_size": 128, "optimizer": "adam", "train_seconds": round(time.perf_counter() - start, 1),
            "torch": torch.__version__, **evaluate(model, dataset, retrieval=False),
        })
        (sub / f"{name}.train.pt").unlink(missing_ok=True)
        trained.append(name)
    # retrieval last: every checkpoint is safe on disk before the long evaluation
    return evaluate_zoo(trained, dataset, zoo_dir)


def evaluate_zoo(names: list[str] | None = None, dataset: str = "fashion-mnist",
                 zoo_dir: Path = ZOO_DIR) -> dict[str, Any]:
    """Re-measure accuracy and retrieval of shipped models (default: all of `dataset`) and record them."""
    shipped = models_for(dataset, zoo_dir)
    unknown = [n for n in names or () if n not in shipped]
    if unknown:
        raise KeyError(f"No model(s) {unknown} for {dataset} in the zoo at {zoo_dir}. "
                       f"Available: {', '.join(shipped) or 'none'}.")
    for name in names if names is not None else list(shipped):
        record(zoo_dir, name, evaluate(load(name, zoo_dir), dataset))
        print(f"{name}: {read_manifest(zoo_dir)['models'][name]}", file=sys.stderr)
    return read_manifest(zoo_dir)
