"""Runs where researchers already look: a `Trainer` callback that writes TensorBoard event files.

    from indistill_lab.tracking import TensorBoard
    Trainer(model, callbacks=[TensorBoard("runs/my-student")]).fit(loader, 15)
    # then: tensorboard --logdir runs

TensorBoard is the optional `log` extra (`pip install 'indistill_lab[log]'`); nothing else in the kit needs it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .train import Callback, Trainer

SKIPPED = ("epoch",)
"""Epoch log entries that are the x axis, not a curve."""


def _summary_writer(log_dir: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError("The TensorBoard callback needs the tensorboard package: "
                          "pip install 'indistill_lab[log]' (or pip install tensorboard).") from exc
    return SummaryWriter(log_dir)


class TensorBoard(Callback):
    """Writes each finished epoch's logs (every loss term, the total, lr, val_acc, seconds) as scalars
    'epoch/<name>' at step = epoch number, and, with `every_steps > 0`, each `every_steps`-th batch's terms as
    'batch/<name>' at the optimizer step. Why a run stopped early is written as text. Under torchrun only rank 0
    writes. `writer` replaces the event-file writer (anything with add_scalar, add_text, flush, close)."""

    def __init__(self, log_dir: Path | str, every_steps: int = 0,
                 writer: Callable[[str], Any] = _summary_writer) -> None:
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0 (0 = epochs only), got {every_steps}.")
        self.log_dir, self.every_steps, self._make_writer = str(log_dir), every_steps, writer
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.rank == 0 and self.writer is None:
            self.writer = self._make_writer(self.log_dir)

    def on_batch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.writer is not None and self.every_steps and trainer.step % self.every_steps == 0:
            for name, value in logs.items():
                self.writer.add_scalar(f"batch/{name}", value, trainer.step)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in logs.items():
            if name not in SKIPPED:
                self.writer.add_scalar(f"epoch/{name}", value, trainer.epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        if trainer.history.stopped:
            self.writer.add_text("stopped", trainer.history.stopped, trainer.epoch)
        self.writer.close()
        self.writer = None
