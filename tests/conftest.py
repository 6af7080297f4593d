"""Shared fixtures: quick mode for every test, small deterministic data."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch

from indistill_lab.data import Split, dataset_info


@pytest.fixture(autouse=True, scope="session")
def _outside_the_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Results, caches and checkpoints of every test (and of module-scoped fixtures, set up before any
    function-scoped one) go to pytest's temporary folder, never into the repository."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INDISTILL_OUT", str(tmp_path_factory.mktemp("out")))
        yield


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDISTILL_QUICK", "1")
    torch.manual_seed(0)


@pytest.fixture
def tiny_split() -> Split:
    """64 random 28x28 images whose label is recoverable from the mean brightness (learnable fast)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 10
    x = torch.randn(64, 1, 28, 28, generator=g) * 0.3 + (y.float() / 5 - 1).view(-1, 1, 1, 1)
    return Split(x, y, dataset_info("fashion-mnist"), "tiny")
