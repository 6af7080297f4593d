"""Run-wide settings read from the environment: quick mode, data root, device, seeding."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

QUICK_ENV = "INDISTILL_QUICK"
DATA_ENV = "INDISTILL_DATA"
HOME_ENV = "INDISTILL_HOME"
REPO_ROOT = Path(__file__).resolve().parent.parent


def kit_home(root: Path = REPO_ROOT) -> Path:
    """The folder that holds `data/` (datasets, the zoo) and `results/`: `$INDISTILL_HOME` if set; the repository
    when the kit runs from a clone (`pyproject.toml` beside the package, `root`); otherwise, for an installed
    package, a user data folder (`$XDG_DATA_HOME/indistill_lab`, by default `~/.local/share/indistill_lab`), so
    that nothing is ever written into site-packages."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if (root / "pyproject.toml").is_file():
        return root
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share").expanduser() / "indistill_lab"


HOME = kit_home()


def quick_mode() -> bool:
    """True when `INDISTILL_QUICK` is set to a true value: CI and tests shrink data and epochs."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def data_root() -> Path:
    """Where datasets live: `$INDISTILL_DATA`, else `data/` in the kit's home (the repository in a clone)."""
    return Path(os.environ.get(DATA_ENV, HOME / "data")).expanduser()


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (loaders carry their own seeded generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
