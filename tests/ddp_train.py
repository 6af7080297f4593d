"""Trains two tiny models with the Trainer, in one process or under torchrun (tests/test_distributed.py):
one epoch with a checkpoint, then a fresh Trainer resumes from it and trains to `EPOCHS`. Rank 0 saves
the weights and history; every rank reports how many checkpoints it wrote.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_train.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from indistill_lab import distributed, train
from indistill_lab.data import Loader, Split, dataset_info
from indistill_lab.models import build_model

EPOCHS = 3
BATCH = 32  # the global batch: 99 examples give batches of 32, 32, 32 and 3 (shares 2 and 1 on 2 ranks)


def data() -> Split:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(99) % 10
    x = torch.randn(99, 1, 28, 28, generator=g) * 0.5 + (y.float() / 5 - 1).view(-1, 1, 1, 1)
    return Split(x, y, dataset_info("fashion-mnist"), "ddp-tiny")


def model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":  # no BatchNorm: the same gradients as one process up to float rounding
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    return build_model("student", "fashion-mnist", widths=[4, 8, 8], fc=[16])


def run(out: Path) -> None:
    """Train both models (one epoch, then resumed to EPOCHS) and write the results on rank 0."""
    device = distributed.setup()
    rank, world = distributed.world()
    saves = 0
    save = train.save_checkpoint

    def counted(path, payload):
        nonlocal saves
        saves += 1
        save(path, payload)

    train.save_checkpoint = counted
    for kind in ("mlp", "convnet"):
        ckpt = out / f"{kind}-{world}.ckpt"
        train.Trainer(model(kind), lr=3e-3, checkpoint=ckpt, progress=False, device=device).fit(
            Loader(data(), BATCH, seed=1), 1)
        resumed = train.Trainer(model(kind), lr=3e-3, checkpoint=ckpt, progress=False, device=device)
        assert resumed.resume() and resumed.epoch == 1
        resumed.fit(Loader(data(), BATCH, seed=1), EPOCHS)
        if distributed.is_main():
            torch.save({"state": resumed.model.state_dict(), "history": resumed.history.epochs},
                       out / f"{kind}-{world}.pt")
    (out / f"saves-{world}-rank{rank}.json").write_text(json.dumps(saves))
    distributed.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]))
