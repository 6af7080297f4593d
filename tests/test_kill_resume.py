"""A table run killed (SIGKILL) inside a run resumes from that run's last finished epoch and ends with the rows
of an uninterrupted run (issue 21)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from indistill_lab.experiments.tables import read_results

TIMING = {"train_seconds", "eval_seconds", "wall_seconds"}
EPOCHS = 12


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "indistill_lab", "reproduce", "--methods", "student-ce", "--seeds", "1",
            "--epochs", str(EPOCHS), "--out", str(out)]


def rows(out: Path) -> list[dict]:
    (csv,) = out.glob("*.csv")
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_results(csv)]


def test_a_killed_run_resumes_inside_the_run_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    env = {**os.environ, "INDISTILL_QUICK": "1", "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    checkpoints: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        checkpoints = list(killed.glob("checkpoints/*/student-ce-0.pt"))
        if checkpoints:
            break
        time.sleep(0.05)
    assert checkpoints, "the run wrote no checkpoint before it ended"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = torch.load(checkpoints[0], weights_only=False)["epoch"]
    assert 1 <= epoch < EPOCHS, f"killed at epoch {epoch}: not inside the run"
    assert not list(killed.glob("*.csv")) or not read_results(next(killed.glob("*.csv")))

    resumed = subprocess.run(command(killed), env=env, check=True, capture_output=True, text=True, timeout=600)
    assert rows(killed) == rows(whole) and len(rows(whole)) == 1
    assert not checkpoints[0].exists(), "the finished run's checkpoint was left behind"
    assert "1 to do" in resumed.stdout
