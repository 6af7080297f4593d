"""Data-parallel training of one model over several processes started by torchrun.

    torchrun --nproc-per-node 2 my_training.py        # gloo on CPUs; on a GPU machine one process per GPU (NCCL)
    torchrun --nproc-per-node 4 -m indistill_lab.experiments.train_model --dataset cifar10 \
        --model preact-resnet18 --epochs 80 --batch-size 512 --out runs/teacher-cifar10.pt   # a kit model with CE

In a script of your own:

    device = distributed.setup()                       # joins torchrun's process group, returns this rank's device
    trainer = Trainer(model, device=device, checkpoint="runs/model.pt")
    trainer.resume()                                   # every rank loads the same checkpoint
    trainer.fit(loader, epochs)                        # the loader's batch size is the global batch
    distributed.teardown()

Under an initialised process group the `Trainer` wraps the model (and the objective's own parameters)
in DistributedDataParallel, gives each rank its share of every global batch (`Loader.set_rank`),
weights each rank's loss by its share so the averaged gradient is the global batch's, logs the
global batch's loss, and writes checkpoints on rank 0 only. Without torchrun nothing changes.
Each rank's BatchNorm layers see only its share of a batch (SyncBatchNorm needs GPUs), and so do
losses that relate the examples of a batch (PKT's similarities): not the single-process numbers.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch
from torch import distributed as dist
from torch import nn

from .config import default_device


def world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files."""
    return world()[0] == 0


def setup(backend: str | None = None) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR in the environment) and
    return this process's device: GPU `LOCAL_RANK` with NCCL where there are GPUs, else the CPU with gloo.
    Without torchrun, no group: the default device."""
    if "WORLD_SIZE" not in os.environ:
        return default_device()
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return device


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ModelAndObjective(nn.Module):
    """The model and the objective as one module, so DistributedDataParallel averages the gradients of
    both (an objective's own parameters, e.g. a FitNets connector, too); the objective still gets the
    plain model, so its layer paths are unchanged."""

    def __init__(self, model: nn.Module, objective: Callable[..., Mapping[str, torch.Tensor]]) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> Mapping[str, torch.Tensor]:
        return self.objective(self.model, x, y, epoch)


def data_parallel(model: nn.Module, objective: Callable[..., Mapping[str, torch.Tensor]],
                  device: torch.device) -> nn.Module:
    """`ModelAndObjective` under DistributedDataParallel (which broadcasts rank 0's weights now). Unused
    parameters are allowed: a curriculum phase trains only some layers."""
    return nn.parallel.DistributedDataParallel(ModelAndObjective(model, objective),
                                               device_ids=[device] if device.type == "cuda" else None,
                                               find_unused_parameters=True)


def global_batch(values: Mapping[str, float], n: int, device: torch.device) -> tuple[dict[str, Any], int]:
    """Each value's mean over the global batch, from this rank's means over its `n` examples, and the
    global batch's size: one all-reduce."""
    sums = torch.tensor([float(n)] + [v * n for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    total = int(sums[0].item())
    return {k: s / total for k, s in zip(values, sums[1:].tolist())}, total
