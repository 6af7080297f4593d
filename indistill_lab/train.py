"""One explicit training loop: seeded, resumable, with callbacks and a safe stop.

The loop is deliberately plain so a student can read it top to bottom:

    for epoch:                      # lr from the schedule, loader reshuffled by epoch
        for x, y in loader:
            terms = objective(model, x, y, epoch)   # named loss terms, summed
            backward, step
        evaluate, callbacks, atomic checkpoint

An *objective* is any callable `(model, x, y, epoch) -> dict[str, Tensor]`; cross-entropy
is the default, the curriculum of distillation terms is another. If it has a
`trainable_parameters()` method (e.g. a FitNets connector), those are optimised too; if it has
an `on_epoch_start(epoch)` method, the loop calls it before each epoch's first batch (also the
first epoch after a resume or a stop), so state carried across batches (e.g. DSR's previous
mini-batch) is reset there and never outlives an epoch.
`optimizer_state` says what happens to the optimizer's state (Adam's moments and step count)
at curriculum boundaries: kept for the whole run ("run"), cleared when the objective's phase
changes ("phase": the epochs listed by its `phase_starts()`), or cleared at every epoch
("epoch", what the InDistill reference does by re-creating Adam each epoch). It matters: a
phase of large-gradient MSE leaves a second moment that stalls the next, small-gradient phase.
A non-finite loss or Ctrl-C stops training cleanly: the model is put back to the last
finished epoch and the checkpoint on disk is never half-written. A callback ends training with
`trainer.stop(reason)` (early stopping): recorded as `history.stopped = reason`.
The training data is any re-iterable of (x, y) batches: the kit's `Loader` (seeded, resumable shuffles)
or e.g. a torch `DataLoader`; `set_epoch(epoch)` is called on it when it has one. A resumed run repeats
the uninterrupted one exactly when the data's order depends on the epoch (the kit's `Loader`) or on torch's
global generator, which the checkpoint keeps (a shuffling DataLoader without a generator of its own;
tested without worker processes).
Under torchrun (`indistill_lab.distributed`) the same loop trains one model on several processes:
each takes its share of every batch, gradients are averaged, rank 0 writes the checkpoint.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from . import distributed
from .config import default_device, seed_everything
from .data import Loader
from .metrics import accuracy, keep_freed_memory
from .results import repair_hint

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is a dependency; this keeps the loop usable in a bare interpreter
    tqdm = None


class Objective(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]: ...


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
    """The plain supervised objective: one term, 'ce'."""
    return {"ce": F.cross_entropy(model(x), y)}


@dataclass
class History:
    """What happened: one dict of logs per finished epoch, and why training stopped early (if it did)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None
    requested: bool = False
    """True when `stopped` came from `Trainer.stop` (a callback's decision), not from an error or Ctrl-C."""

    def series(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]


class Callback:
    """Hooks into the loop; override what you need. `trainer` gives access to model, epoch, logs."""

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


OPTIMIZER_STATE_POLICIES = ("run", "phase", "epoch")


def make_optimizer(params: Iterable[nn.Parameter], name: str = "adam", lr: float = 1e-3,
                   weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """Adam (InDistill's choice), SGD with Nesterov momentum ('sgd', the cascade paper's) or with plain
    momentum ('momentum', the self-distillation and critical-period papers')."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name in ("sgd", "momentum"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "sgd", weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}: use 'adam', 'sgd' (Nesterov) or 'momentum' (plain momentum).")


def resets_optimizer(policy: str, epoch: int, phase_starts: Iterable[int] = ()) -> bool:
    """Whether the optimizer's state is cleared at the start of `epoch` under `policy`.

    Epoch 0 always starts from an empty state, so it never counts as a reset.
    """
    if policy not in OPTIMIZER_STATE_POLICIES:
        raise ValueError(f"Unknown optimizer_state policy {policy!r}: use one of {', '.join(OPTIMIZER_STATE_POLICIES)} "
                         "(kept for the run, cleared at each phase change, cleared every epoch).")
    if epoch == 0 or policy == "run":
        return False
    return policy == "epoch" or epoch in set(phase_starts)


def lr_for_epoch(schedule: dict[int, float], base_lr: float, epoch: int) -> float:
    """Piecewise-constant lr: `schedule` maps a starting epoch to the lr used from then on."""
    lr = base_lr
    for start in sorted(schedule):
        if epoch >= start:
            lr = schedule[start]
    return lr


class CosineLR(Callback):
    """Cosine decay from `lr` to 0 over `total_steps`, set after every step. The Trainer sets each epoch's
    first lr from its `lr_schedule`: give it `epoch_starts(steps_per_epoch, epochs)` so the two agree."""

    def __init__(self, lr: float, total_steps: int) -> None:
        if total_steps < 1 or not lr >= 0:
            raise ValueError(f"CosineLR needs lr >= 0 and total_steps >= 1, got {lr} and {total_steps}.")
        self.lr, self.total_steps = lr, total_steps

    def at(self, step: int) -> float:
        """The lr of step `step` (0-based)."""
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))

    def epoch_starts(self, steps_per_epoch: int, epochs: int) -> dict[int, float]:
        return {e: self.at(e * steps_per_epoch) for e in range(epochs)}

    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.at(trainer.step)


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> None:
    """Write atomically: to a temporary file of this process, then rename, so a crash never leaves a broken
    file and processes saving the same file at once (Ray workers preparing one configuration) never mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class Trainer:
    """Trains `model` with `objective`; holds the optimizer, the epoch counter and the history."""

    def __init__(
        self,
        model: nn.Module,
        objective: Callable[..., dict[str, torch.Tensor]] = cross_entropy,
        optimizer: str = "adam",
        lr: float = 1e-3,
        lr_schedule: dict[int, float] | None = None,
        weight_decay: float = 0.0,
        device: torch.device | str | None = None,
        checkpoint: Path | str | None = None,
        callbacks: Iterable[Callback] = (),
        progress: bool = True,
        seed: int = 0,
        optimizer_state: str = "run",
    ) -> None:
        resets_optimizer(optimizer_state, 0)  # validates the policy name before anything is built
        lrs = {"lr": lr, **{f"lr_schedule[{e}]": v for e, v in (lr_schedule or {}).items()}}
        bad_lrs = {k: v for k, v in lrs.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)}
        if bad_lrs or any(not isinstance(e, int) or e < 0 for e in (lr_schedule or {})):
            raise ValueError(f"Learning rates must be finite and >= 0 and lr_schedule keys epochs >= 0; got "
                             f"{bad_lrs or dict(lr_schedule or {})} (a negative lr would train by gradient ascent).")
        if checkpoint is not None and Path(checkpoint).is_dir():
            raise ValueError(f"checkpoint {checkpoint} is a directory; give a file path such as "
                             f"{Path(checkpoint) / 'train.pt'}.")
        self.optimizer_state = optimizer_state
        self.device = torch.device(device) if device is not None else default_device()
        seed_everything(seed)
        self.model, self.objective = model.to(self.device), objective
        if isinstance(objective, nn.Module):
            objective.to(self.device)
        params = list(model.parameters())
        extra = getattr(objective, "trainable_parameters", None)
        if extra is not None:
            params += list(extra())
        self.base_lr, self.lr_schedule = lr, dict(lr_schedule or {})
        self.optimizer = make_optimizer(params, optimizer, lr, weight_decay)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.callbacks, self.progress = list(callbacks), progress
        self.epoch, self.step, self.history = 0, 0, History()
        self._good_state: dict[str, Any] | None = None
        self._stop_request: str | None = None
        self.rank, self.world_size = distributed.world()
        # under torchrun: the model and the objective as one DistributedDataParallel module
        self._parallel = distributed.data_parallel(model, objective, self.device) if self.world_size > 1 else None

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically: weights, optimizer, epoch, history and torch's CPU
        random state (dropout, augmentation)."""
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history.epochs, "rng": torch.get_rng_state(),
        }
        if hasattr(self.model, "config"):
            state["config"] = self.model.config()
        if isinstance(self.objective, nn.Module):
            state["objective"] = self.objective.state_dict()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if isinstance(self.objective, nn.Module) and "objective" in state:
            self.objective.load_state_dict(state["objective"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = History(list(state["history"]))
        if "rng" in state:
            torch.set_rng_state(state["rng"])

    def resume(self) -> bool:
        """Load the checkpoint file if it exists; True when training continues from it.

        Raises ValueError naming the file when it is unreadable or belongs to another model or optimizer.
        """
        if self.checkpoint is None or not self.checkpoint.is_file():
            return False
        fix = f"{repair_hint(self.checkpoint)} Or point `checkpoint` at this run's own file."
        try:
            state = torch.load(self.checkpoint, map_location=self.device, weights_only=False)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
            raise ValueError(f"Cannot resume from {self.checkpoint}: it is not a readable checkpoint "
                             f"({type(exc).__name__}: {exc}). {fix}") from exc
        try:
            self.load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = exc.args[0] if exc.args else type(exc).__name__
            raise ValueError(f"Cannot resume from {self.checkpoint}: it was written for another model, objective "
                             f"or optimizer ({detail}). {fix}") from exc
        return True

    # -- the loop ------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Ask the loop to end (from a callback): after the current batch, or right away from `on_epoch_end`.
        A partly trained epoch is undone (the model goes back to the last finished epoch, as in a checkpoint);
        `history.stopped` records `reason` and `history.requested` is True."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"stop() needs a reason to record, e.g. trainer.stop('val_acc stopped improving'); got {reason!r}.")
        self._stop_request = reason

    def fit(self, train: Iterable[tuple[torch.Tensor, torch.Tensor]], epochs: int,
            eval_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> History:
        """Train until `epochs` epochs are done in total (a resumed trainer continues). `train` is any
        re-iterable of (x, y) batches (each epoch iterates it once); see the module docstring."""
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}.")
        if not hasattr(train, "__iter__"):
            raise TypeError(f"The training data must be an iterable of (x, y) batches (a Loader, a torch DataLoader, "
                            f"a list of tensor pairs), not {type(train).__name__}.")
        if isinstance(train, Iterator):
            raise TypeError(f"The training data is a one-shot iterator ({type(train).__name__}): every epoch iterates "
                            "the data anew, so pass a re-iterable (a list of batches, a DataLoader, a Loader).")
        if hasattr(train, "__len__") and len(train) == 0:
            detail = (f" ({train.examples_per_epoch} examples, batch size {train.batch_size}"
                      f"{', drop_last' if train.drop_last else ''})" if isinstance(train, Loader) else "")
            raise ValueError(f"The training data gives no batch{detail}; nothing would be "
                             "trained. Use a non-empty split or a smaller batch.")
        self._check_labels(train)
        if epochs == 0 and self.epoch == 0:
            warnings.warn("fit(epochs=0): nothing to train; the model is unchanged.", stacklevel=2)
        keep_freed_memory()
        if self.world_size > 1:
            if not hasattr(train, "set_rank"):
                raise TypeError(f"Under torchrun the training data must split each batch over the processes "
                                f"(`set_rank(rank, world_size)`, as the kit's Loader does); {type(train).__name__} "
                                "cannot: wrap the data in indistill_lab.data.Loader.")
            train.set_rank(self.rank, self.world_size)  # this rank's share of each batch
        self._stop_request = None
        self._good_state = copy.deepcopy(self.state())
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            while self.epoch < epochs:
                logs = self._run_epoch(train, epochs)
                if logs is None:
                    break
                if eval_data is not None:
                    logs["val_acc"] = accuracy(self.model, eval_data, self.device)
                self.history.epochs.append(logs)
                self.epoch += 1
                self._good_state = copy.deepcopy(self.state())
                if self.checkpoint is not None and self.rank == 0:
                    save_checkpoint(self.checkpoint, self._good_state)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, logs)
                if self._stop_request is not None:
                    self._stop(self._stop_request, requested=True)
                    break
        except KeyboardInterrupt:
            self._stop(f"interrupted during epoch {self.epoch + 1}")
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _check_labels(self, train: Loader) -> None:
        """Labels must be class indices of the model's output (when the model says how many classes it has)."""
        classes = getattr(self.model, "num_classes", None)
        y = getattr(getattr(train, "data", None), "y", None)
        if not isinstance(classes, int) or not isinstance(y, torch.Tensor) or y.numel() == 0:
            return
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise ValueError(f"Training labels range over {low}..{high} but the model has {classes} classes "
                             f"(labels 0..{classes - 1}); relabel the data or build the model with more classes.")

    def _batch_logs(self, terms: dict[str, torch.Tensor], loss: torch.Tensor,
                    n: int) -> tuple[dict[str, float], float, int]:
        """The batch's loss terms and total as floats, the weight of this rank's loss and the batch size.
        Under torchrun the batch is the global one (one all-reduce, so every rank sees the same loss) and a
        rank's loss is weighted by its share x ranks, so the averaged gradient is the global batch's."""
        logs = {k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())}
        if self.world_size == 1:
            return logs, 1.0, n
        logs, total = distributed.global_batch(logs, n, self.device)
        return logs, n * self.world_size / total, total

    def _stop(self, reason: str, requested: bool = False) -> None:
        """Go back to the last finished epoch and record why training stopped (a warning unless `requested`)."""
        assert self._good_state is not None
        self.load_state(copy.deepcopy(self._good_state))
        self.history.stopped, self.history.requested = reason, requested
        if not requested:
            kept = f"; checkpoint {self.checkpoint} keeps epoch {self.epoch}" if self.checkpoint else ""
            warnings.warn(f"Training stopped: {reason}. The model is back at the end of epoch {self.epoch}{kept}.",
                          stacklevel=3)

    def _phase_starts(self) -> list[int]:
        starts = getattr(self.objective, "phase_starts", None)
        return list(starts()) if callable(starts) else []

    @staticmethod
    def _check_terms(terms: Any) -> None:
        """The objective's result is a dict of named scalar tensors; say which term is not."""
        if not isinstance(terms, dict):
            raise TypeError(f"The objective returned {type(terms).__name__}, not a dict of named loss terms; "
                            "return e.g. {'ce': loss}.")
        for name, value in terms.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Loss term {name!r} is a {type(value).__name__}, not a tensor; return the loss "
                                "as a scalar tensor that carries gradients.")
            if value.numel() != 1:
                raise ValueError(f"Loss term {name!r} has shape {tuple(value.shape)}, not a single number: reduce "
                                 "it to a scalar (e.g. .mean() over the batch, or F.cross_entropy(..., reduction='mean')).")

    @staticmethod
    def _batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) from one item of the training data; anything else raises saying what is needed."""
        if (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            return batch[0], batch[1]
        shape = (f"a {type(batch).__name__} of {len(batch)} items" if isinstance(batch, (tuple, list))
                 else f"a {type(batch).__name__}")
        raise TypeError(f"Each training batch must be a pair (x, y) of tensors (inputs, class labels), got {shape}. "
                        "A Dataset of (image, label) items through a torch DataLoader gives such pairs.")

    def _run_epoch(self, train: Iterable[tuple[torch.Tensor, torch.Tensor]], epochs: int) -> dict[str, float] | None:
        if resets_optimizer(self.optimizer_state, self.epoch, self._phase_starts()):
            self.optimizer.state.clear()  # the same as a freshly created optimizer, lr kept
        lr = lr_for_epoch(self.lr_schedule, self.base_lr, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        set_epoch = getattr(train, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        on_epoch_start = getattr(self.objective, "on_epoch_start", None)
        if callable(on_epoch_start):
            on_epoch_start(self.epoch)
        self.model.train()
        sums: dict[str, float] = {}
        seen, start = 0, time.perf_counter()
        total = len(train) if hasattr(train, "__len__") else None
        bar = (tqdm(total=total, desc=f"epoch {self.epoch + 1}/{epochs}", leave=False)
               if self.progress and tqdm is not None and self.rank == 0 else None)
        for batch in train:
            x, y = self._batch(batch)
            x, y = x.to(self.device), y.to(self.device)
            terms = (self._parallel(x, y, self.epoch) if self._parallel is not None
                     else self.objective(self.model, x, y, self.epoch))
            self._check_terms(terms)
            loss = sum(terms.values())
            batch_logs, share, n = self._batch_logs(terms, loss, len(y))
            value = batch_logs["loss"]
            if not math.isfinite(value):
                if bar is not None:
                    bar.close()
                self._stop(f"non-finite loss ({value}) at epoch {self.epoch + 1}, step {self.step}")
                return None
            self.optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1 else loss).backward()
            self.optimizer.step()
            self.step += 1
            for k, v in batch_logs.items():
                sums[k] = sums.get(k, 0.0) + v * n
            seen += n
            for cb in self.callbacks:
                cb.on_batch_end(self, batch_logs)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4f}")
                bar.update()
            if self._stop_request is not None:
                if bar is not None:
                    bar.close()
                self._stop(self._stop_request, requested=True)
                return None
        if bar is not None:
            bar.close()
        if seen == 0:
            raise ValueError(f"The training data gave no batch in epoch {self.epoch + 1}; each epoch iterates it anew, "
                             "so it must yield (x, y) batches every time (a generator is used up after one pass).")
        logs = {k: v / max(seen, 1) for k, v in sums.items()}
        logs.update(epoch=self.epoch + 1, lr=lr, seconds=time.perf_counter() - start)
        return logs

