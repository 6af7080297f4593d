"""One home per method: each module here registers its methods (see `base` for the interface).

    from indistill_lab.methods import get_method, method_names
    trained = get_method("indistill-paper").train(Context(cfg, prep.train, prep.sources), seed=0)
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Context, Method, Trained, check_names, describe, get_method, method_names, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Context", "Method", "Trained", "check_names", "describe", "get_method", "method_names", "register"]
