"""Temporarily switch a model to eval mode: BN uses running statistics, dropout is off."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`with eval_mode(model):` runs the block in eval mode and restores the previous mode, even on error.

    Measurements (accuracy, features, Fisher, attributions, tracing) must not update BN statistics
    nor leave a model that was training in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
