"""Critical learning periods: the Fisher trace over training and the input-deficit experiment.

Achille, Rovere and Soatto (ICLR 2019): blur the inputs for the first N epochs, then train on
clean inputs for a fixed number of epochs. An early deficit does lasting damage (the final
accuracy falls with N even though every run ends with the same clean training), a late one
much less, and the window in which it hurts coincides with the rise of the Fisher trace.
For distillation this bounds *when* intermediate-layer hints can still shape the student.

Both experiments train small models from scratch; they are sized for a CPU and meant to be
run once through `cache.cached` and browsed in notebook 04.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .cache import cached
from .data import Loader, Split, load_split
from .fisher import FisherTraceCallback
from .metrics import accuracy
from .models import build_model
from .train import Trainer


def blur(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """The deficit: downsample by `factor` (area average), then upsample back (bilinear).

    On 28x28 Fashion-MNIST, factor 4 leaves a 7x7 image: shapes survive, fine texture does not.
    """
    if factor < 1:
        raise ValueError(f"blur factor must be >= 1 (1 = no blur), got {factor}.")
    if factor == 1:
        return x
    size = x.shape[-2:]
    small = F.interpolate(x, scale_factor=1 / factor, mode="area")
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


class DeficitObjective:
    """Cross-entropy on blurred inputs during epochs [0, `deficit_epochs`), on clean inputs afterwards."""

    def __init__(self, deficit_epochs: int, factor: int = 4) -> None:
        if deficit_epochs < 0:
            raise ValueError(f"deficit_epochs must be >= 0, got {deficit_epochs}.")
        self.deficit_epochs, self.factor = deficit_epochs, factor

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if epoch < self.deficit_epochs:
            x = blur(x, self.factor)
        return {"ce": F.cross_entropy(model(x), y)}


def decaying_lr(lr: float, decay: float, epochs: int) -> dict[int, float]:
    """Per-epoch exponential decay `lr * decay**epoch` as a `Trainer` lr schedule (as in Achille et al.)."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must lie in (0, 1], got {decay}.")
    return {e: lr * decay**e for e in range(epochs)}


def deficit_run(train: Split, test: Split, deficit_epochs: int, clean_epochs: int, model: str = "student",
                factor: int = 4, lr: float = 1e-3, decay: float = 0.85, batch_size: int = 128,
                seed: int = 0) -> dict[str, Any]:
    """Train `model` from scratch: `deficit_epochs` on blurred inputs, then `clean_epochs` on clean ones.

    Returns {"deficit_epochs", "val_acc" (clean test accuracy after each epoch), "final_acc",
    "blurred_acc" (the final model on blurred test images)}.
    """
    if clean_epochs < 1:
        raise ValueError(f"clean_epochs must be >= 1 so every run ends on clean data, got {clean_epochs}.")
    epochs = deficit_epochs + clean_epochs
    net = build_model(model, train.info)
    trainer = Trainer(net, objective=DeficitObjective(deficit_epochs, factor), lr=lr,
                      lr_schedule=decaying_lr(lr, decay, epochs), progress=False, seed=seed, device="cpu")
    history = trainer.fit(Loader(train, batch_size, seed=seed), epochs, Loader(test, 512, shuffle=False))
    blurred = Split(blur(test.x, factor), test.y, test.info, f"{test.name} blurred")
    return {"deficit_epochs": deficit_epochs, "val_acc": history.series("val_acc"),
            "final_acc": history.series("val_acc")[-1],
            "blurred_acc": accuracy(net, Loader(blurred, 512, shuffle=False), "cpu")}


def deficit_sweep(train: Split, test: Split, deficits: list[int], clean_epochs: int, **kwargs: Any) -> dict[str, Any]:
    """`deficit_run` for each deficit length; {"deficits", "final_acc", "runs"} (JSON-ready, for `cached`)."""
    runs = [deficit_run(train, test, n, clean_epochs, **kwargs) for n in deficits]
    return {"deficits": list(deficits), "final_acc": [r["final_acc"] for r in runs], "runs": runs}


def fisher_over_training(train: Split, test: Split, epochs: int, model: str = "student", probe: int = 256,
                         every_steps: int | None = None, lr: float = 1e-3, decay: float = 0.85,
                         batch_size: int = 128, seed: int = 0) -> dict[str, Any]:
    """Train `model` on clean data, recording the per-stage Fisher trace on `probe` fixed test images.

    Returns {"epoch": [...], "trace": {layer: [...]}, "total": [...], "val_acc": [...]} (JSON-ready).
    """
    net = build_model(model, train.info)
    probe_x = test.subset(probe, seed=seed).x
    fisher = FisherTraceCallback(probe_x, depth=1, every_steps=every_steps, seed=seed)
    trainer = Trainer(net, lr=lr, lr_schedule=decaying_lr(lr, decay, epochs), callbacks=[fisher],
                      progress=False, seed=seed, device="cpu")
    history = trainer.fit(Loader(train, batch_size, seed=seed), epochs, Loader(test, 512, shuffle=False))
    layers = list(fisher.records[0]["trace"])
    return {"epoch": fisher.epochs(), "trace": {k: fisher.series(k) for k in layers},
            "total": fisher.series("total"), "val_acc": history.series("val_acc")}



def critical_period_end(epochs: list[float], total: list[float], fraction: float = 0.9) -> int:
    """The epoch (rounded up) by which the Fisher trace first reaches `fraction` of its peak: the end of the
    fast rise, a data-driven `critical_end` for a `Curriculum` (intermediate hints should be done by then)."""
    if len(epochs) != len(total) or not total:
        raise ValueError(f"epochs and total must be equally long and non-empty, got {len(epochs)} and {len(total)}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}.")
    peak = max(total)
    first = next(e for e, v in zip(epochs, total) if v >= fraction * peak)
    return max(1, math.ceil(first))

DEFICIT_SWEEP: dict[str, Any] = {"dataset": "fashion-mnist", "model": "student", "train": 2048, "test": 1000,
                                 "deficits": [0, 2, 4, 6, 8, 10], "clean_epochs": 4, "factor": 4, "lr": 1e-3,
                                 "decay": 0.8, "batch_size": 128, "seed": 0}
"""The precomputed deficit sweep of notebook 04: student-sized, 2048 training images, ~50 epochs in all."""

FISHER_RUN: dict[str, Any] = {"dataset": "fashion-mnist", "model": "student", "train": 4096, "test": 1000,
                              "epochs": 30, "probe": 256, "every_steps": 16, "lr": 1e-3, "decay": 0.9,
                              "batch_size": 128, "seed": 0}
"""The precomputed Fisher-over-training run of notebook 04: the student, 30 epochs of 32 steps, measured twice
per epoch (longer than the deficit runs, to see what the trace does after its rise)."""


def _splits(params: dict[str, Any]) -> tuple[Split, Split]:
    """Class-balanced subsets of the full splits (independent of quick mode, so the cache key is stable)."""
    train = load_split(params["dataset"], "train", quick=False).subset(params["train"], seed=params["seed"])
    test = load_split(params["dataset"], "test", quick=False).subset(params["test"], seed=params["seed"])
    return train, test


def cached_deficit_sweep(refresh: bool = False, **overrides: Any) -> dict[str, Any]:
    """`deficit_sweep` with `DEFICIT_SWEEP` (plus `overrides`), stored in results/precomputed/deficit-*.json."""
    params = {**DEFICIT_SWEEP, **overrides}

    def compute() -> dict[str, Any]:
        train, test = _splits(params)
        keys = ("model", "factor", "lr", "decay", "batch_size", "seed")
        return deficit_sweep(train, test, params["deficits"], params["clean_epochs"], **{k: params[k] for k in keys})

    return cached("deficit", params, compute, refresh=refresh)


def cached_fisher_over_training(refresh: bool = False, **overrides: Any) -> dict[str, Any]:
    """`fisher_over_training` with `FISHER_RUN` (plus `overrides`), stored in results/precomputed/fisher-*.json."""
    params = {**FISHER_RUN, **overrides}

    def compute() -> dict[str, Any]:
        train, test = _splits(params)
        keys = ("model", "probe", "every_steps", "lr", "decay", "batch_size", "seed")
        return fisher_over_training(train, test, params["epochs"], **{k: params[k] for k in keys})

    return cached("fisher", params, compute, refresh=refresh)


def fresh_deficit_run(deficit_epochs: int, **overrides: Any) -> dict[str, Any]:
    """One new `deficit_run` with the sweep's settings (`DEFICIT_SWEEP` plus `overrides`), not cached."""
    params = {**DEFICIT_SWEEP, **overrides}
    train, test = _splits(params)
    keys = ("model", "factor", "lr", "decay", "batch_size", "seed")
    return deficit_run(train, test, deficit_epochs, params["clean_epochs"], **{k: params[k] for k in keys})
