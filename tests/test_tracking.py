"""The TensorBoard callback: what it writes, checked with a recording writer and (when tensorboard is installed,
the `log` extra) by reading the event file back."""
from __future__ import annotations

import pytest
import torch

from indistill_lab.data import Loader
from indistill_lab.models import build_model
from indistill_lab.tracking import TensorBoard
from indistill_lab.train import Callback, Trainer


class Recorder:
    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.texts, self.closed = log_dir, [], [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def _fit(tiny_split, callbacks, epochs=3):
    torch.manual_seed(0)
    trainer = Trainer(build_model("student"), device="cpu", progress=False, callbacks=callbacks)
    return trainer, trainer.fit(Loader(tiny_split, 16, seed=1), epochs, eval_data=Loader(tiny_split, 64, shuffle=False))


def test_epoch_and_batch_scalars_and_the_stop_reason(tiny_split, tmp_path):
    recorders = []
    board = TensorBoard(tmp_path, every_steps=2, writer=lambda d: recorders.append(Recorder(d)) or recorders[-1])

    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, logs):
            if trainer.epoch == 2:
                trainer.stop("enough")

    trainer, history = _fit(tiny_split, [board, StopAfterTwo()])
    (rec,) = recorders
    assert rec.log_dir == str(tmp_path) and rec.closed
    epoch = {(tag, step): v for tag, v, step in rec.scalars if tag.startswith("epoch/")}
    assert {t for t, _ in epoch} == {"epoch/ce", "epoch/loss", "epoch/lr", "epoch/seconds", "epoch/val_acc"}
    assert [epoch["epoch/ce", s] for s in (1, 2)] == history.series("ce")
    assert [epoch["epoch/val_acc", s] for s in (1, 2)] == history.series("val_acc")
    batch_steps = sorted({step for tag, _, step in rec.scalars if tag == "batch/ce"})
    assert batch_steps == [2, 4, 6, 8]  # 4 batches an epoch, 2 epochs, every 2nd step
    assert rec.texts == [("stopped", "enough", 2)]


def test_real_event_file_reads_back(tiny_split, tmp_path):
    pytest.importorskip("tensorboard", reason="the `log` extra (tensorboard) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, history = _fit(tiny_split, [TensorBoard(tmp_path)], epochs=2)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    ce = events.Scalars("epoch/ce")
    assert [e.step for e in ce] == [1, 2]
    assert [e.value for e in ce] == pytest.approx(history.series("ce"), rel=1e-6)


def test_negative_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="every_steps must be >= 0"):
        TensorBoard(tmp_path, every_steps=-1)
