"""Any model, described by module paths: its stages, its embedding, its classifier, its input shape.

The kit's ConvNets describe themselves (`spec_of(model)`); for any other `nn.Module` a user gives
a `ModelSpec` once and attaches it, after which evaluation, retrieval, layer pairing and pruned-
target reading treat the model like a preset. No model is edited: features are read with hooks.

    from torchvision.models import resnet18
    teacher = resnet18(num_classes=10)
    spec = propose_spec(teacher, input_shape=(3, 32, 32))   # layer1..layer4, avgpool, fc
    with_spec(teacher, spec)                               # spec_of(teacher) now returns it
    spec.embed(teacher, x)                                 # (N, 512) retrieval features
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .modes import eval_mode
from .taps import Taps, module_paths, stage_containers

SPEC_ATTRIBUTE = "model_spec"
"""Where `with_spec` stores a user's spec on a model (a plain attribute: no weights, no hooks)."""


class SpecError(ValueError):
    """A model description that does not fit its model; the message names each path and what to use."""


@dataclass(frozen=True)
class ModelSpec:
    """What the kit needs to know about a classifier network, as module paths.

    `stages`: the layers distilled stage by stage, shallow to deep (their outputs are aligned);
    `embedding`: the layer whose output, flattened, is the penultimate representation (retrieval,
    PKT); `classifier`: the final `nn.Linear` that maps the embedding to logits; `input_shape`:
    (C, H, W) of one input, used for probe passes (shapes, pruning, FLOPs).
    """

    stages: tuple[str, ...]
    embedding: str
    classifier: str
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if not self.stages:
            raise SpecError("A ModelSpec needs at least one stage path (e.g. ['layer1', 'layer2']).")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise SpecError(f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape}.")

    def check(self, model: nn.Module) -> "ModelSpec":
        """This spec, after checking that every path exists in `model` (one error lists every unknown
        path with the closest valid ones), that the classifier is a Linear layer, and, with one probe pass of
        `input_shape`, that the embedding's output (flattened) is the classifier's input size."""
        valid = module_paths(model)
        roles = [*(("stage", p) for p in self.stages), ("embedding", self.embedding), ("classifier", self.classifier)]
        problems = [f"{role} {p!r} is not a module path of {type(model).__name__}" + _closest(p, valid)
                    for role, p in roles if p not in valid]
        if problems:
            top = ", ".join(name for name, _ in model.named_children())
            raise SpecError("The model description does not fit its model:\n  - " + "\n  - ".join(problems) +
                            f"\nIts top-level modules: {top} (every path: indistill_lab.taps.module_paths(model)).")
        head = model.get_submodule(self.classifier)
        if not isinstance(head, nn.Linear):
            linears = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise SpecError(f"classifier {self.classifier!r} is a {type(head).__name__}, not an nn.Linear; the "
                            f"classifier is the last Linear layer (Linear layers: {', '.join(linears) or 'none'}).")
        size = next((out[0].numel() for _, _, out in _call_order(model, self.input_shape, [self.embedding])), None)
        if size is None:
            raise SpecError(f"embedding {self.embedding!r} gives no tensor in a forward pass (never called, or it "
                            "returns something else); name the layer whose output feeds the classifier.")
        if size != head.in_features:
            raise SpecError(f"embedding {self.embedding!r} gives {size} features per input but classifier "
                            f"{self.classifier!r} takes {head.in_features}: the embedding is the layer whose output "
                            "feeds the classifier (e.g. 'avgpool' in a torchvision ResNet); propose_spec finds it.")
        return self

    def module(self, model: nn.Module, role: str) -> nn.Module:
        """The module of `role` ('embedding' or 'classifier') in `model`."""
        return model.get_submodule(getattr(self, role))

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The flattened output of the embedding layer for inputs `x`, as `model` is (mode and grad kept)."""
        with Taps(model, [self.embedding]) as taps:
            model(x)
        return taps[self.embedding].flatten(1)


def _closest(path: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(path, valid, n=3)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else "."


def with_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Attach `spec` (checked against `model`) so that `spec_of(model)` returns it; returns `model`.
    Copies (`copy.deepcopy`, pruning) keep it."""
    model.__dict__[SPEC_ATTRIBUTE] = spec.check(model)
    return model


def described(model: nn.Module) -> ModelSpec | None:
    """The spec attached with `with_spec`, else the one a kit model gives (`stage_paths`, `embedding_path`,
    `classifier`, `in_channels`/`image_size`; 32x32 for the CIFAR PreActResNet18, which has no image size),
    else None."""
    attached = model.__dict__.get(SPEC_ATTRIBUTE)
    if isinstance(attached, ModelSpec):
        return attached
    if hasattr(model, "stage_paths") and hasattr(model, "embedding_path") and hasattr(model, "classifier"):
        channels = int(getattr(model, "in_channels", 3))
        side = int(getattr(model, "image_size", 32))
        return ModelSpec(tuple(model.stage_paths), model.embedding_path, "classifier", (channels, side, side))
    return None


def spec_of(model: nn.Module) -> ModelSpec:
    """The description of `model` (`described`); a model without one raises a SpecError that shows the spec
    `propose_spec` would give, to check and attach with `with_spec`."""
    spec = described(model)
    if spec is not None:
        return spec
    try:
        proposal = f"propose_spec(model) gives {propose_spec(model)!r}"
    except SpecError as exc:
        proposal = f"propose_spec(model) cannot guess one ({exc})"
    raise SpecError(f"{type(model).__name__} has no model description. Describe it with "
                    "with_spec(model, ModelSpec(stages=[...], embedding=..., classifier=..., input_shape=(C, H, W))); "
                    f"{proposal}.")


def _first_conv_channels(model: nn.Module) -> int | None:
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _call_order(model: nn.Module, input_shape: Sequence[int],
                paths: Sequence[str] | None = None) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(path, module, output) of the modules at `paths` (default: every leaf module) in the order one forward
    pass of two zero inputs shaped `input_shape` calls them (eval mode, no grad)."""
    order: list[tuple[str, nn.Module, torch.Tensor]] = []

    def record(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: tuple, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                order.append((path, module, output))
        return hook

    wanted = set(paths) if paths is not None else None
    handles = [module.register_forward_hook(record(path)) for path, module in model.named_modules()
               if path and (path in wanted if wanted is not None else not any(True for _ in module.children()))]
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
    except RuntimeError as exc:
        raise SpecError(f"a probe input of shape {tuple(input_shape)} does not run through "
                        f"{type(model).__name__} ({exc}); pass the input_shape it expects.") from exc
    finally:
        for h in handles:
            h.remove()
    return order


def propose_spec(model: nn.Module, input_shape: Sequence[int] | None = None) -> ModelSpec:
    """A spec guessed from the model's structure, to check and attach with `with_spec`.

    One probe pass finds the classifier (the last Linear called) and the embedding (the layer called
    just before it whose output, flattened, has the classifier's input size: torchvision ResNet's
    'avgpool', VGG's 'classifier.5'). Stages are the `layerN`/`stageN` children (ResNets), else the
    max-pool layers (VGG's 'features.N' block ends). `input_shape` defaults to a kit model's own, else
    (first conv's input channels, 224, 224), torchvision's size.
    """
    if input_shape is None and hasattr(model, "image_size"):
        input_shape = (int(getattr(model, "in_channels", 3)), int(model.image_size), int(model.image_size))
    if input_shape is None:
        channels = _first_conv_channels(model)
        if channels is None:
            raise SpecError(f"{type(model).__name__} has no Conv2d to read the input channels from; pass input_shape.")
        input_shape = (channels, 224, 224)
    order = _call_order(model, input_shape)
    heads = [i for i, (_, m, _) in enumerate(order) if isinstance(m, nn.Linear)]
    if not heads:
        raise SpecError(f"{type(model).__name__} calls no nn.Linear layer, so there is no classifier to find.")
    last = heads[-1]
    classifier, head = order[last][0], order[last][1]
    before = [(p, out) for p, _, out in order[:last] if out[0].numel() == head.in_features]
    if not before:
        raise SpecError(f"no layer before the classifier {classifier!r} outputs its {head.in_features} inputs.")
    embedding = before[-1][0]
    stages = stage_containers(model) or [p for p, m, _ in order[:last] if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    if not stages:
        raise SpecError(f"{type(model).__name__} has no layerN/stageN children and no pooling layer to end stages at.")
    return ModelSpec(tuple(stages), embedding, classifier, tuple(input_shape))


def last_conv(model: nn.Module, stage: str) -> str:
    """Path of the last Conv2d inside `stage` (in definition order): the conv whose kept output channels
    are the stage's after pruning (for a residual stage, its group shares them)."""
    convs = [p for p, m in model.get_submodule(stage).named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise SpecError(f"stage {stage!r} of {type(model).__name__} holds no Conv2d.")
    return f"{stage}.{convs[-1]}" if convs[-1] else stage

