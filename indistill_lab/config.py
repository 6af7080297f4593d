"""Run-wide settings read from the environment: quick mode, data root, device, seeding."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

QUICK_ENV = "INDISTILL_QUICK"
DATA_ENV = "INDISTILL_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent


def quick_mode() -> bool:
    """True when `INDISTILL_QUICK` is set to a true value: CI and tests shrink data and epochs."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def data_root() -> Path:
    """Where datasets live: `$INDISTILL_DATA`, else the repository's `data/` folder."""
    return Path(os.environ.get(DATA_ENV, REPO_ROOT / "data")).expanduser()


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (loaders carry their own seeded generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
