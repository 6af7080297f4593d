"""Critical learning periods: the input-deficit experiment, the Fisher trace over the same runs, and
the end of the critical period as a measured quantity.

Achille, Rovere and Soatto (ICLR 2019) blur the inputs during a window of training and then train
on clean inputs. Under their protocol (SGD with momentum, weight decay, an exponentially decaying
learning rate) an early deficit does lasting damage and a late one does not, and the window in which
it hurts coincides with the rise of the trace of the Fisher information, which then falls.
For distillation this bounds *when* intermediate-layer hints can still shape the student.

    >>> PROTOCOLS["sgd-wd"].lr_schedule(3)          # lr * decay**epoch
    {0: 0.075, 1: 0.0675, 2: 0.06075}
    >>> critical_period([0, 1, 2, 3, 4], [0, 8, 10, 6, 5]).end     # peaked at 2, fell 40% afterwards
    2.0
    >>> print(critical_period([0, 1, 2, 3], [0, 5, 8, 9]).end)      # still rising: no end measured
    None

Time is counted in images seen (or optimiser steps), never in loader epochs, whose size differs
from one budget to the next. `experiments.critical_periods` runs the grids; notebook 04 reads them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .config import seed_everything
from .data import Loader, Split
from .feature_cache import IndexedLoader
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
    """Cross-entropy on blurred inputs during epochs [`start`, `start + deficit_epochs`), on clean inputs
    otherwise: `start = 0` is a deficit at the beginning, a later `start` a window at another onset."""

    def __init__(self, deficit_epochs: int, factor: int = 4, start: int = 0) -> None:
        if deficit_epochs < 0 or start < 0:
            raise ValueError(f"deficit_epochs and start must be >= 0 (epochs count from 0), got "
                             f"{deficit_epochs} and {start}.")
        self.deficit_epochs, self.factor, self.start = deficit_epochs, factor, start

    def blurred(self, epoch: int) -> bool:
        """Whether `epoch` falls inside the deficit window."""
        return self.start <= epoch < self.start + self.deficit_epochs

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if self.blurred(epoch):
            x = blur(x, self.factor)
        return {"ce": F.cross_entropy(model(x), y)}


def decaying_lr(lr: float, decay: float, epochs: int) -> dict[int, float]:
    """Per-epoch exponential decay `lr * decay**epoch` as a `Trainer` lr schedule (as in Achille et al.)."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must lie in (0, 1], got {decay}.")
    return {e: lr * decay**e for e in range(epochs)}


@dataclass(frozen=True)
class Protocol:
    """How a network is optimised in these experiments: optimizer ('momentum' = SGD with momentum 0.9,
    or 'adam'), initial lr decayed by `decay` per epoch, weight decay, batch size."""

    optimizer: str
    lr: float
    decay: float
    weight_decay: float
    batch_size: int = 128

    def lr_schedule(self, epochs: int) -> dict[int, float]:
        """The lr of each of `epochs` epochs."""
        return decaying_lr(self.lr, self.decay, epochs)


PROTOCOLS: dict[str, Protocol] = {
    "sgd-wd": Protocol("momentum", 0.075, 0.9, 5e-4),
    "sgd": Protocol("momentum", 0.075, 0.9, 0.0),
    "adam": Protocol("adam", 1e-3, 0.9, 0.0),
}
"""Achille et al.'s protocol ('sgd-wd': SGD, momentum 0.9, weight decay 5e-4, lr 0.075) and the two
changes measured against it: no weight decay ('sgd'), and Adam without weight decay ('adam', the kit's
earlier protocol). The decay per epoch is compressed (0.9 instead of their 0.97 per 50k-image CIFAR epoch),
so the lr falls tenfold within ~22 epochs of a CPU-sized run."""


def protocol_named(name: str) -> Protocol:
    """The protocol registered under `name` in `PROTOCOLS`; an unknown name lists the known ones."""
    if name not in PROTOCOLS:
        raise KeyError(f"Unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[name]


EARLY_STEPS = (2, 4, 8, 16, 24)
"""Steps of the first epoch after which `deficit_run` also measures the Fisher trace: it moves fastest there."""


def deficit_run(train: Split, test: Split, probe: torch.Tensor, total_epochs: int, deficit_epochs: int = 0,
                deficit_start: int = 0, protocol: str = "sgd-wd", epoch_size: int | None = None,
                model: str = "student", factor: int = 4, seed: int = 0,
                early_steps: Sequence[int] = EARLY_STEPS) -> list[dict[str, float]]:
    """Train `model` from scratch for `total_epochs` epochs of `epoch_size` images (None: a full pass of
    `train`), blurred during [`deficit_start`, `deficit_start + deficit_epochs`), under `protocol`.

    Returns one row per measurement: before training, after each of `early_steps`, after each epoch. Columns:
    step, images_seen, epoch (fractional), lr and blurred (of the step just taken; 1 if blurred),
    val_acc (clean `test`; after whole epochs only, else None), the Fisher trace of each layer on `probe`
    (`fisher_<layer>`, labels sampled from the model) and `fisher_total`.
    """
    if deficit_start + deficit_epochs >= total_epochs:
        raise ValueError(f"The deficit [{deficit_start}, {deficit_start + deficit_epochs}) must end before the "
                         f"last of {total_epochs} epochs, so every run ends on clean data; raise total_epochs.")
    spec = protocol_named(protocol)
    seed_everything(seed)  # the initialisation depends on the seed only, not on what ran before
    net = build_model(model, train.info)
    objective = DeficitObjective(deficit_epochs, factor, deficit_start)
    loader = IndexedLoader(train, spec.batch_size, seed=seed, epoch_size=epoch_size)
    per_epoch = len(loader)
    fisher = FisherTraceCallback(probe, depth=1, seed=seed, extra_steps=[s for s in early_steps if s < per_epoch])
    schedule = spec.lr_schedule(total_epochs)
    trainer = Trainer(net, objective=objective, optimizer=spec.optimizer, lr=spec.lr, lr_schedule=schedule,
                      weight_decay=spec.weight_decay, callbacks=[fisher], progress=False, seed=seed, device="cpu")
    evaluation = Loader(test, 1000, shuffle=False)
    accs = {0: accuracy(net, evaluation, "cpu")}
    history = trainer.fit(loader, total_epochs, evaluation)
    if history.stopped:
        raise RuntimeError(f"Training stopped ({history.stopped}); lower the protocol's lr.")
    accs.update({(e + 1) * per_epoch: a for e, a in enumerate(history.series("val_acc"))})
    rows = []
    for record in fisher.records:
        step = record["step"]
        epoch, within = divmod(step, per_epoch)
        current = epoch - (within == 0) if step else 0  # the epoch of the step just taken
        rows.append({"step": step, "images_seen": epoch * loader.examples_per_epoch + within * spec.batch_size,
                     "epoch": step / per_epoch, "lr": schedule[current] if step else 0.0,
                     "blurred": int(bool(step) and objective.blurred(current)), "val_acc": accs.get(step),
                     **{f"fisher_{k}": v for k, v in record["trace"].items()},
                     "fisher_total": sum(record["trace"].values())})
    return rows


@dataclass(frozen=True)
class CriticalPeriod:
    """What a Fisher trace says about the critical period. `end`: the time (the trace's unit: images seen)
    of its first clear peak, a maximum that the trace later falls below `(1 - min_drop)` of before
    exceeding it; None when there is none, and `reason` says why. `fallen_at`: when the fall confirmed it.
    `rebound`: the trace's highest value after the fall, as a fraction of the peak (above 1 when it rises
    past the peak again later, e.g. as the learning rate decays)."""

    end: float | None
    peak: float | None
    fallen_at: float | None
    rebound: float | None
    reason: str

    def end_epoch(self, images_per_epoch: int) -> int | None:
        """`end` as a whole number of epochs of `images_per_epoch` images (rounded up, at least 1; a
        `Curriculum`'s `critical_end`), or None when the trace has no peak."""
        if images_per_epoch < 1:
            raise ValueError(f"images_per_epoch must be >= 1, got {images_per_epoch}.")
        return None if self.end is None else max(1, math.ceil(self.end / images_per_epoch))


def critical_period(images_seen: Sequence[float], trace: Sequence[float], min_drop: float = 0.3) -> CriticalPeriod:
    """The end of the critical period from a Fisher trace measured at `images_seen`: the time of the trace's
    first clear peak (it rose to it, then fell by at least `min_drop` of it before rising past it).

    Without such a fall (a trace still rising, or levelling off, when the run ends) there is no peak and
    `end` is None: the period has not closed within the run, and any number read off the trace would be an
    artefact of the run's length. A trace that only falls from its first point never rose: also None.
    Noise below `min_drop` never makes a peak, so measure on enough probe examples, or average seeds.
    """
    times, values = [float(t) for t in images_seen], [float(v) for v in trace]
    if len(times) != len(values) or len(values) < 3:
        raise ValueError(f"images_seen and trace must be equally long with at least 3 points, got "
                         f"{len(times)} and {len(values)}.")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError("images_seen must increase strictly (one measurement per time point, in order).")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError("A Fisher trace is finite and >= 0; got a value outside that range.")
    if not 0 < min_drop < 1:
        raise ValueError(f"min_drop is the fall that confirms a peak, a fraction in (0, 1); got {min_drop}.")
    top = 0  # index of the running maximum
    for j in range(1, len(values)):
        if values[j] > values[top]:
            top = j
        elif values[j] <= (1 - min_drop) * values[top]:
            if top == 0:
                return CriticalPeriod(None, None, None, None, "no rise: the trace falls from its first "
                                      "measurement (the period, if any, ended before it)")
            peak, rebound = values[top], max(values[j:]) / values[top]
            later = (f"; later it rises again to {rebound:.0%} of the peak" if rebound > 1 - min_drop else "")
            return CriticalPeriod(times[top], peak, times[j], rebound,
                                  f"peak at {times[top]:,.0f}, fallen to {values[j] / peak:.0%} of it by "
                                  f"{times[j]:,.0f}{later}")
    still = "still rising at the end" if top == len(values) - 1 else f"highest at {times[top]:,.0f}"
    return CriticalPeriod(None, None, None, None,
                          f"no peak: the trace never falls by {min_drop:.0%} below a maximum it reached ({still}); "
                          f"the period has not closed by {times[-1]:,.0f}")
