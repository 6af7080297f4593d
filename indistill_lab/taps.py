"""Read intermediate features by module path with forward hooks, never by editing the model.

    with Taps(model, ["stage1", "stage2"]) as taps:
        logits = model(x)
    taps["stage1"].shape        # (N, C, H, W)

The hooks are removed when the `with` block ends, even on error, so they cannot leak
between notebook cells.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable, Sequence

import torch
from torch import nn

from .modes import eval_mode


def module_paths(model: nn.Module) -> list[str]:
    """All addressable module paths of a model (the names `Taps` accepts)."""
    return [name for name, _ in model.named_modules() if name]


OUTPUT = "output"
"""Layer name meaning "the model's output" (logits), e.g. for the KD loss."""


LISTED_PATHS = 40
"""Up to this many valid paths an error lists them all; beyond, the model's top-level modules."""


def unknown_path(path: str, model: nn.Module, valid: Sequence[str], listing: str = "Valid paths") -> str:
    """The message for a layer path `model` lacks: the closest valid paths, then all of them (for a large
    model, e.g. a torchvision ResNet, its top-level modules and how to list every path)."""
    close = difflib.get_close_matches(path, list(valid), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    if len(valid) > LISTED_PATHS:
        top = ", ".join(p for p in valid if "." not in p)
        return (f"Unknown layer path {path!r} in {type(model).__name__}.{hint} Its top-level modules: {top} "
                "(every path: indistill_lab.taps.module_paths(model)).")
    return f"Unknown layer path {path!r} in {type(model).__name__}.{hint} {listing}: {', '.join(valid)}."


def stage_containers(model: nn.Module) -> list[str]:
    """Children named stage1, stage2, ... or layer1, layer2, ... (the kit's ConvNets, ResNets), in order."""
    names = [n for n, _ in model.named_children() if re.fullmatch(r"(stage|layer)\d+", n)]
    return sorted(names, key=lambda n: int(re.sub(r"\D", "", n)))


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at `path`; an unknown path raises a KeyError listing close and valid paths."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    raise KeyError(unknown_path(path, model, module_paths(model)))


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


def features(model: nn.Module, x: torch.Tensor, paths: Sequence[str]) -> dict[str, torch.Tensor]:
    """Detached features at `paths` (OUTPUT = the model's output), in eval mode (the mode is restored).
    Unlike `tap`, which reads the model as it is (train or eval), this is how targets are read."""
    taps = Taps(model, [p for p in paths if p != OUTPUT], detach=True)
    with eval_mode(model), torch.no_grad(), taps:
        out = model(x)
    feats = dict(taps.outputs)
    if OUTPUT in paths:
        feats[OUTPUT] = out
    return feats
