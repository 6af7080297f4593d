"""The Trainer under torchrun: 2 CPU processes with gloo against one process with the same global batch
(tests/ddp_train.py trains both ways: one epoch with a checkpoint, then resumed to 3 epochs).

Tolerances. Without BatchNorm (the MLP) both runs compute the same global-batch gradient, summed in
another order (two share-weighted half-batch means, all-reduced, against one mean): float rounding only.
Measured after 12 Adam steps: weights within 3e-8, epoch losses within 5e-8 relative; checked at
atol 1e-6 / rtol 1e-5 (weights) and 1e-6 relative (losses). With BatchNorm (the kit's ConvNet) each rank
normalises by its own half-batch's statistics (SyncBatchNorm needs GPUs), another computation: measured
1.2% apart in epoch loss, checked to 5% relative.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import distributed as dist

import ddp_train
from indistill_lab import distributed, zoo
from indistill_lab.experiments import train_model
from indistill_lab.data import Loader

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this build")


def test_loader_shares_each_global_batch_between_ranks():
    data = ddp_train.data()
    whole = Loader(data, 32, seed=3)
    batches = [whole.indices.clone() for _ in whole]
    shards = []
    for rank in range(2):
        loader = Loader(data, 32, seed=3)
        loader.set_rank(rank, 2)
        shards.append([loader.indices.clone() for _ in loader])
    assert len(shards[0]) == len(shards[1]) == len(batches) == 4
    for b, s0, s1 in zip(batches, *shards):
        assert sorted(torch.cat([s0, s1]).tolist()) == sorted(b.tolist())  # the same global batch, split
    odd = Loader(ddp_train.data().subset(97), 32, seed=3)  # a last batch of 1 example cannot be split in 2
    odd.set_rank(1, 2)
    assert len(odd) == 3 and len(list(odd)) == 3
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        odd.set_rank(2, 2)


def test_two_gloo_processes_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).parent / "ddp_train.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ddp_train.run(tmp_path)  # the single-process reference, same global batch
    finally:
        torch.set_num_threads(threads)
    # only rank 0 wrote checkpoints: 1 + 2 epochs per model
    assert [json.loads((tmp_path / f"saves-2-rank{r}.json").read_text()) for r in (0, 1)] == [6, 0]
    for kind in ("mlp", "convnet"):
        one, two = (torch.load(tmp_path / f"{kind}-{w}.pt") for w in (1, 2))
        assert [e["epoch"] for e in two["history"]] == [1, 2, 3]  # resumed after epoch 1
        losses = torch.tensor([[e["loss"] for e in run["history"]] for run in (one, two)])
        if kind == "mlp":
            for name, w in one["state"].items():
                torch.testing.assert_close(two["state"][name], w, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0.0)
        else:
            torch.testing.assert_close(losses[1], losses[0], rtol=0.05, atol=0.0)


def test_main_trains_saves_and_resumes_in_one_process(tmp_path, capsys):
    out = tmp_path / "student.pt"
    args = ["--model", "student", "--train-size", "64", "--batch-size", "32", "--out", str(out)]
    assert train_model.main([*args, "--epochs", "1"]) == 0
    assert "student on fashion-mnist: 1 epochs on 1 process(es), test accuracy" in capsys.readouterr().out
    assert train_model.main([*args, "--epochs", "2"]) == 0  # resumes from <out>.ckpt: one more epoch
    assert torch.load(tmp_path / "student.pt.ckpt", weights_only=False)["epoch"] == 2
    assert list(zoo.load_file(out).widths) == [8, 16, 32]
