"""Read intermediate features by module path with forward hooks, never by editing the model.

    with Taps(model, ["stage1", "stage2"]) as taps:
        logits = model(x)
    taps["stage1"].shape        # (N, C, H, W)

The hooks are removed when the `with` block ends, even on error, so they cannot leak
between notebook cells.
"""
from __future__ import annotations

import difflib
from typing import Iterable

import torch
from torch import nn


def module_paths(model: nn.Module) -> list[str]:
    """All addressable module paths of a model (the names `Taps` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at `path`; an unknown path raises a KeyError listing close and valid paths."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    valid = module_paths(model)
    close = difflib.get_close_matches(path, valid, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise KeyError(
        f"Unknown layer path {path!r} in {type(model).__name__}.{hint} Valid paths: {', '.join(valid)}."
    )


class Taps:
    """Context manager recording the outputs of the modules at `paths` during forward passes.

    `detach=True` stores detached outputs (for targets and plots); keep the default `False`
    when a loss must backpropagate through the tapped features.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], detach: bool = False) -> None:
        self.model, self.paths, self.detach = model, list(dict.fromkeys(paths)), detach
        self.modules = {p: get_module(model, p) for p in self.paths}  # validate before hooking
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, path: str):
        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[path] = output.detach() if self.detach else output

        return record

    def __enter__(self) -> "Taps":
        self.outputs.clear()
        for path, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __getitem__(self, path: str) -> torch.Tensor:
        if path not in self.outputs:
            raise KeyError(f"No output recorded for {path!r}: was the model run inside the `with` block?")
        return self.outputs[path]


def tap(model: nn.Module, x: torch.Tensor, paths: Iterable[str]) -> dict[str, torch.Tensor]:
    """One forward pass under no_grad, returning the detached outputs at `paths`."""
    with torch.no_grad(), Taps(model, paths, detach=True) as taps:
        model(x)
    return dict(taps.outputs)
