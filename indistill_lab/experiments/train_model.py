"""Train one kit model with cross-entropy, under torchrun or in one process (`indistill_lab.distributed`):

    torchrun --standalone --nproc-per-node 2 -m indistill_lab.experiments.train_model --model student \
        --epochs 15 --out runs/student.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import distributed, zoo
from ..errors import cli, positive
from ..data import Loader, crop_flip, load_split
from ..metrics import accuracy
from ..models import build_model
from ..train import Trainer


def main(argv: list[str] | None = None) -> int:
    """Train a kit model with cross-entropy, under torchrun or in one process: resumable from
    `<out>.ckpt`; rank 0 writes the model (zoo format) to `--out` and prints the test accuracy."""
    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m indistill_lab.experiments.train_model",
                                     description=main.__doc__)
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "cifar10"])
    parser.add_argument("--model", default="teacher", help="teacher, auxiliary, student or preact-resnet18")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's lr; 1e-4 for the last 30 epochs")
    parser.add_argument("--train-size", type=int, help="a class-balanced subset of the training split")
    parser.add_argument("--out", type=Path, required=True, help="the trained model (zoo format)")
    args = parser.parse_args(argv)
    positive("--epochs", args.epochs)
    positive("--batch-size", args.batch_size)
    positive("--train-size", args.train_size)
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}.")
    device = distributed.setup()
    train, test = load_split(args.dataset, "train"), load_split(args.dataset, "test")
    if args.train_size:
        train = train.subset(args.train_size)
    loader = Loader(train, args.batch_size, seed=0, transform=crop_flip() if args.dataset == "cifar10" else None)
    trainer = Trainer(build_model(args.model, args.dataset), lr=args.lr, lr_schedule={max(args.epochs - 30, 1): 1e-4},
                      device=device, checkpoint=args.out.with_name(args.out.name + ".ckpt"))
    trainer.resume()
    trainer.fit(loader, args.epochs)
    if distributed.is_main():
        zoo.save_model(trainer.model.cpu(), args.out)
        print(f"{args.model} on {args.dataset}: {trainer.epoch} epochs on {distributed.world()[1]} process(es), test accuracy "
              f"{accuracy(trainer.model, Loader(test, 1000, shuffle=False), 'cpu'):.4f}; saved {args.out}")
    distributed.teardown()
    return 0


if __name__ == "__main__":
    cli(main)
