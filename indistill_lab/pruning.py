"""Structured channel pruning to target widths, on top of Torch-Pruning's dependency graph.

InDistill prunes the teacher's (or auxiliary's) layers down to the student's widths so the
two can be distilled layer to layer without an encoder. This module decides *which* channels
survive (a criterion) and removes the others coherently: every coupled layer (the next conv's
input channels, the BN, the flattened fc input, residual additions) loses the same channels,
so the result is a real, runnable smaller network. The first pruned layer's kept channels
compute exactly what they computed before; deeper layers also lose the contributions of the
removed input channels, so the pruned network equals the unpruned one with the removed
channels masked to zero (`soft_prune`, tested). BN statistics and biases are sliced, never reset.

    pruned, report = prune_to_widths(auxiliary, student, L1())   # widths taken from the student
    masked = soft_prune(auxiliary, report)                        # same decision, as masks

Widths: a dict {layer path: width} is the general form (any model). A list is a per-stage
shorthand for models built from stages: for the kit's ConvNet every conv of stage k gets
width k; for ResNets (`layer1` ... `layerN`) every conv of stage k *and* the stage's residual
stream get width k (the torchvision stem conv is coupled to `layer1`'s stream), which is what
a narrower ResNet of the same family looks like.

Residual couplings mean one decision can span several layers (a *group*); its channel scores
are the criterion's scores summed over the group's layers.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from .criteria import L1, Criterion, Layer
from .metrics import count_flops, count_parameters
from .models import model_input_shape
from .modes import eval_mode
from .taps import stage_containers, unknown_path

TORCH_PRUNING_VERSION = "1.6.1"  # the API below was written against this version

_PRUNABLE = (nn.Conv2d, nn.Linear)


class UnknownLayerError(KeyError):
    """A layer path the model does not have (a KeyError whose message prints unquoted)."""

    def __str__(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------------------------------
# The dependency graph: which layers can be pruned and which layers are coupled.
# ------------------------------------------------------------------------------------------
def _infer_input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The (C, H, W) a model's graph is traced with: `input_shape` checked against the model's first conv,
    else the shape the model declares."""
    if input_shape is None:
        return model_input_shape(model, "pass input_shape=(C, H, W), e.g. (3, 64, 64) for a torchvision model")
    shape = tuple(int(s) for s in input_shape)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width) of one example, got {shape}.")
    if first is not None and shape[0] != first.in_channels:
        raise ValueError(f"input_shape {shape} has {shape[0]} channel(s) but the model's first conv takes "
                         f"{first.in_channels}: give input_shape=({first.in_channels}, H, W).")
    return shape


class _Graph:
    """Torch-Pruning's dependency graph of one model, with the kit's view of it (paths, groups)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        device = next(model.parameters()).device
        # Torch-Pruning traces through autograd: a frozen model would yield an empty graph.
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        try:  # tracing runs a forward pass: eval mode keeps BN running stats untouched
            with eval_mode(model):
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=torch.zeros(1, *input_shape, device=device), verbose=False)
        finally:
            for p in frozen:
                p.requires_grad_(False)
        self.model = model
        self.modules = dict(model.named_modules())
        self.names = {m: n for n, m in self.modules.items()}
        self.prunable: dict[str, list[str]] = {}  # path -> paths of all layers coupled with it
        for path, module in self.modules.items():
            if isinstance(module, _PRUNABLE) and module in self.dg.module2node:
                members = self._coupled(module)
                if members is not None:
                    self.prunable[path] = members

    def _group(self, module: nn.Module, idxs: Sequence[int]) -> Any:
        fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        return self.dg.get_pruning_group(module, fn, list(idxs))

    def _coupled(self, module: nn.Module) -> list[str] | None:
        """Conv/linear layers whose outputs are pruned together with `module`'s; None if not prunable."""
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            return None  # grouped / depthwise convs are out of scope
        group = self._group(module, [0])
        consumers = [d for d, _ in group if self.dg.is_in_channel_pruning_fn(d.handler)]
        if not consumers:
            return None  # nothing downstream reads these channels: they are the model's output
        return [self.names[d.target.module] for d, _ in group
                if self.dg.is_out_channel_pruning_fn(d.handler) and isinstance(d.target.module, _PRUNABLE)]

    def bn_after(self, module: nn.Module) -> nn.Module | None:
        """The BatchNorm that directly consumes `module`'s output, if any."""
        for out in self.dg.module2node[module].outputs:
            if isinstance(out.module, nn.modules.batchnorm._BatchNorm):
                return out.module
        return None

    def layer(self, path: str) -> Layer:
        module = self.modules[path]
        return Layer(path, module, self.bn_after(module), self._group(module, range(_channels(module))))

    def check_path(self, path: str) -> None:
        valid = ", ".join(self.prunable)
        if path not in self.modules or not path:
            raise UnknownLayerError(unknown_path(path, self.model, list(self.prunable), "Prunable layers"))
        if path not in self.prunable:
            module = self.modules[path]
            why = ("it is not a Conv2d or Linear layer" if not isinstance(module, _PRUNABLE)
                   else "it is a grouped conv" if isinstance(module, nn.Conv2d) and module.groups != 1
                   else "nothing downstream reads its outputs (they are the model's outputs)")
            raise ValueError(f"Layer {path!r} ({type(module).__name__}) cannot be pruned: {why}. "
                             f"Prunable layers: {valid}.")


def prunable_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, list[str]]:
    """Prunable layer paths, each with the paths of the layers coupled to it (itself included).

    A layer coupled to others (a residual stream) can only be pruned together with them.
    """
    return dict(_Graph(model, _infer_input_shape(model, input_shape)).prunable)


def _widths_dict(graph: _Graph, widths: Sequence[int] | Mapping[str, int] | nn.Module) -> dict[str, int]:
    """Normalise a widths list, dict or student model into {prunable path: width}."""
    model = graph.model
    if isinstance(widths, nn.Module):
        student = widths
        if hasattr(student, "widths") and hasattr(model, "widths"):
            widths = list(student.widths)
        else:
            smods = dict(student.named_modules())
            widths = {p: smods[p].weight.shape[0] for p in graph.prunable
                      if p in smods and isinstance(smods[p], _PRUNABLE) and not isinstance(smods[p], nn.Linear)}
            if not widths:
                raise ValueError(f"No prunable conv of {type(model).__name__} has a namesake in the student "
                                 f"{type(student).__name__}: pass widths as a dict {{layer path: width}}.")
    if isinstance(widths, Mapping):
        out = dict(widths)
        for path in out:
            graph.check_path(path)
    else:
        stages = stage_containers(model)
        if not stages:
            raise ValueError(f"A widths list is a per-stage shorthand, but {type(model).__name__} has no "
                             "stage1../layer1.. children: pass a dict {layer path: width}, paths from "
                             "prunable_layers(model).")
        widths = list(widths)
        if len(widths) != len(stages):
            raise ValueError(f"{type(model).__name__} has {len(stages)} stages ({', '.join(stages)}) but "
                             f"{len(widths)} widths were given: {widths}. Give one width per stage.")
        out = {}
        for stage, width in zip(stages, widths):
            for path in graph.prunable:
                if path.startswith(stage + ".") and isinstance(graph.modules[path], nn.Conv2d):
                    out[path] = width
    for path, width in out.items():
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"Width for {path!r} must be a positive int, got {width!r}.")
        have = graph.modules[path].weight.shape[0]
        if width > have:
            raise ValueError(f"Target width {width} for {path!r} is larger than the layer ({have} channels): "
                             "pruning only removes channels. Use a wider model or a smaller target.")
    return out


# ------------------------------------------------------------------------------------------
# The decision and its two applications: hard (remove channels) and soft (mask them).
# ------------------------------------------------------------------------------------------
@dataclass
class PruneReport:
    """What `prune_to_widths` did. `kept` maps every layer whose outputs were pruned (conv, linear,
    BN) to the surviving channel indices of the *original* model, in order."""

    criterion: str
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    kept: dict[str, list[int]]
    groups: dict[str, list[str]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for caches)."""
        return dict(self.__dict__)

    def summary(self) -> str:
        rows = [f"{p}: {self.widths_before[p]} -> {self.widths_after[p]}" for p in self.widths_after]
        return (f"criterion {self.criterion}; " + "; ".join(rows) +
                f"\nparams {self.params_before:,} -> {self.params_after:,} "
                f"({self.params_after / self.params_before:.1%}); "
                f"MACs {self.flops_before:,} -> {self.flops_after:,} ({self.flops_after / self.flops_before:.1%})")


def prune_to_widths(
    model: nn.Module,
    widths: Sequence[int] | Mapping[str, int] | nn.Module,
    criterion: Criterion | None = None,
    input_shape: Sequence[int] | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, PruneReport]:
    """Prune `model`'s layers to `widths` (a per-stage list, a {path: width} dict, or a student model).

    Keeps the channels with the highest `criterion` scores (default L1) and removes the rest
    from every coupled layer, so the result runs and equals the input model with those channels
    masked to zero. Frozen models (requires_grad=False) are handled too. The input model is left untouched unless `inplace=True`. Returns the pruned model
    (same mode as the input) and a `PruneReport`.

        >>> from indistill_lab.models import build_model
        >>> pruned, report = prune_to_widths(build_model("auxiliary"), build_model("student"))
        >>> pruned.widths
        [8, 16, 32]
    """
    criterion = criterion if criterion is not None else L1()
    if not isinstance(criterion, Criterion):
        raise TypeError(f"criterion must be a Criterion (L1(), L2(), BNScale(), Taylor(batches), Random()), "
                        f"got {type(criterion).__name__}.")
    input_shape = _infer_input_shape(model, input_shape)
    target = model if inplace else copy.deepcopy(model)
    frozen = {name for name, p in target.named_parameters() if not p.requires_grad}
    graph = _Graph(target, input_shape)
    wanted = _widths_dict(graph, widths)

    # One decision per coupled group; two requests for the same group must agree.
    roots: dict[str, tuple[int, list[str]]] = {}
    for path, width in wanted.items():
        members = graph.prunable[path]
        root = next((r for r, (_, m) in roots.items() if path in m), None)
        if root is None:
            roots[path] = (width, members)
        elif roots[root][0] != width:
            raise ValueError(f"{path!r} is coupled with {root!r} (residual connection: {', '.join(members)}), "
                             f"so both need the same width; got {width} and {roots[root][0]}.")

    layers = {p: graph.layer(p) for _, members in roots.values() for p in members}
    criterion.prepare(target, list(layers.values()))
    params_before, flops_before = count_parameters(target), count_flops(target, input_shape)
    plan: dict[str, torch.Tensor] = {}
    for root, (width, members) in roots.items():
        scores = sum(criterion(layers[p]).detach().float().cpu() for p in members)
        if scores.shape != (layers[root].out_channels,):
            raise ValueError(f"Criterion {criterion!r} returned shape {tuple(scores.shape)} for {root!r}; "
                             f"expected one score per output channel ({layers[root].out_channels},).")
        plan[root] = torch.topk(scores, width, sorted=False).indices.sort().values

    widths_before = {p: layers[p].out_channels for p in layers}
    kept: dict[str, list[int]] = {}
    for root, keep in plan.items():
        drop = sorted(set(range(layers[root].out_channels)) - set(keep.tolist()))
        group = graph._group(graph.modules[root], drop or [0])
        for dep, idxs in group:
            module = dep.target.module
            if graph.dg.is_out_channel_pruning_fn(dep.handler) and module in graph.names:
                removed = set(idxs) if drop else set()
                kept[graph.names[module]] = [i for i in range(_channels(module)) if i not in removed]
        if drop:
            group.prune()
    for name, p in target.named_parameters():  # pruning replaces parameters: keep frozen ones frozen
        if name in frozen:
            p.requires_grad_(False)
    report = PruneReport(
        criterion=getattr(criterion, "name", type(criterion).__name__),
        widths_before=widths_before,
        widths_after={p: layers[p].out_channels for p in layers},
        kept=kept,
        groups={root: members for root, (_, members) in roots.items()},
        params_before=params_before, params_after=count_parameters(target),
        flops_before=flops_before, flops_after=count_flops(target, input_shape),
    )
    return target, report


def _channels(module: nn.Module) -> int:
    """Output channels of a conv, linear or BN layer."""
    return module.num_features if isinstance(module, nn.modules.batchnorm._BatchNorm) else module.weight.shape[0]


class _ChannelMask:
    """Forward hook zeroing the output channels not in `keep` (channel dimension 1)."""

    def __init__(self, keep: Sequence[int], channels: int) -> None:
        self.mask = torch.zeros(channels)
        self.mask[list(keep)] = 1.0

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        shape = [1] * output.dim()
        shape[1] = -1
        return output * self.mask.to(output.device, output.dtype).view(shape)


def soft_prune(model: nn.Module, report: PruneReport, inplace: bool = False) -> nn.Module:
    """The same decision as `report`, applied as output masks on the unpruned `model`.

    Every layer that hard pruning shrank (conv, linear, BN) gets a forward hook that zeroes the
    removed channels, so the masked model computes what the pruned model computes (padded with
    zeros). Returns a masked copy unless `inplace=True`. `remove_masks` undoes it.
    """
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    for path, keep in report.kept.items():
        if path not in modules:
            raise UnknownLayerError(f"The report names layer {path!r}, which {type(model).__name__} does not have: "
                           "was the report made for another model?")
        module = modules[path]
        channels = _channels(module)
        if channels != report.widths_before.get(path, channels) or max(keep, default=-1) >= channels:
            raise ValueError(f"Layer {path!r} has {channels} channels, the report keeps indices up to "
                             f"{max(keep)}: pass the unpruned model the report was made from.")
        module.register_forward_hook(_ChannelMask(keep, channels))
    return target


def remove_masks(model: nn.Module) -> nn.Module:
    """Remove the masks `soft_prune` added (in place); returns the model."""
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, _ChannelMask):
                del module._forward_hooks[key]
    return model


def widths_for_ratio(model: nn.Module, ratio: float | Sequence[float]) -> list[int]:
    """Per-stage widths after removing `ratio` of each stage's channels (one ratio, or one per stage).

    Stage width = round(width * (1 - ratio)), at least 1. For models with `.widths` (ConvNet).
    """
    if not hasattr(model, "widths"):
        raise ValueError(f"{type(model).__name__} has no per-stage widths: build a {{path: width}} dict instead.")
    stages = list(model.widths)
    ratios = [float(ratio)] * len(stages) if isinstance(ratio, (int, float)) else [float(r) for r in ratio]
    if len(ratios) != len(stages):
        raise ValueError(f"Got {len(ratios)} ratios for {len(stages)} stages.")
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"Pruning ratios must be in [0, 1), got {ratios}.")
    return [max(1, round(w * (1 - r))) for w, r in zip(stages, ratios)]
