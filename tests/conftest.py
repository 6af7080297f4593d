"""Shared fixtures: quick mode for every test, small deterministic data."""
from __future__ import annotations

import pytest
import torch

from indistill_lab.data import Split, dataset_info


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Quick mode, and results, caches and checkpoints written outside the repository."""
    monkeypatch.setenv("INDISTILL_QUICK", "1")
    monkeypatch.setenv("INDISTILL_OUT", str(tmp_path_factory.getbasetemp() / "out"))
    torch.manual_seed(0)


@pytest.fixture
def tiny_split() -> Split:
    """64 random 28x28 images whose label is recoverable from the mean brightness (learnable fast)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 10
    x = torch.randn(64, 1, 28, 28, generator=g) * 0.3 + (y.float() / 5 - 1).view(-1, 1, 1, 1)
    return Split(x, y, dataset_info("fashion-mnist"), "tiny")
