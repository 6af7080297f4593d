"""Knowledge sources: the frozen models a student learns from, exposed as named layers.

`Sources(teacher=..., aux=..., pruned=...)` makes one module whose layers a curriculum names as
'pruned.stage1', 'aux.act_fc1', 'teacher.classifier'. `KeptChannels` and `ReferenceTargets` are
two more ways to read targets for a pruned student off an unpruned auxiliary (docs/methods.md, 1).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .adapter import last_conv, spec_of
from .alignment import linear_cka
from .taps import features
from .taps import Taps


class Sources(nn.Module):
    """The frozen models a student learns from, as children of one module, so a curriculum names a
    layer of any of them: 'pruned.stage1', 'aux.act_fc1', 'teacher.classifier'.

    `features(x, paths)` runs only the models the paths name (each in eval mode, no grad): the
    `TeacherFeatures` callable a `CurriculumObjective` or a `FeatureCache` takes.
    """

    def __init__(self, **models: nn.Module) -> None:
        super().__init__()
        if not models:
            raise ValueError("Sources needs at least one model, e.g. Sources(pruned=pruned_auxiliary).")
        for name, model in models.items():
            self.add_module(name, model.eval().requires_grad_(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("Sources is not a network; ask for layers with sources.features(x, paths).")

    def features(self, x: torch.Tensor, paths: Sequence[str]) -> dict[str, torch.Tensor]:
        by_model: dict[str, list[str]] = {}
        for path in paths:
            name, _, sub = path.partition(".")
            if name not in self._modules or not sub:
                raise KeyError(f"Source layer {path!r} must be '<model>.<layer>' with <model> one of "
                               f"{', '.join(self._modules)}.")
            by_model.setdefault(name, []).append(sub)
        out: dict[str, torch.Tensor] = {}
        for name, subs in by_model.items():
            for sub, value in features(self._modules[name], x, subs).items():
                out[f"{name}.{sub}"] = value
        return out


class _Select(nn.Module):
    """Keeps the given channels of its input (a named module, so `Taps` can record its output)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("channels", torch.as_tensor(list(channels), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.channels)


class KeptChannels(nn.Module):
    """The unpruned model's stage outputs restricted to the channels pruning kept, under the stage names.

    A coherent pruned network computes its deeper stages from the kept channels only, so its stage-2/3
    features are those of a damaged network (before any fine-tune). The reference code pruned each conv in
    isolation, so its targets were these: the original network's features at the kept channels.
    `KeptChannels(aux, {"stage1": [...], ...})` exposes them as layers 'stage1', ... of a module.
    """

    def __init__(self, model: nn.Module, kept: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        self.model = model
        for path, channels in kept.items():
            self.add_module(path, _Select(channels))

    @classmethod
    def from_report(cls, model: nn.Module, report: Any) -> "KeptChannels":
        """Kept channels of each stage's last conv (`adapter.last_conv`), read off a `PruneReport`, for the
        stages of the model's description (`adapter.spec_of`). A stage whose channels were not pruned is
        not listed in the report: all of its channels are kept."""
        kept = {}
        for stage in spec_of(model).stages:
            conv = last_conv(model, stage)
            kept[stage] = report.kept.get(conv, range(model.get_submodule(conv).out_channels))
        return cls(model, kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = [p for p, _ in self.named_children() if p != "model"]
        with Taps(self.model, stages) as taps:
            out = self.model(x)
        for path in stages:
            getattr(self, path)(taps[path])
        return out



class ReferenceTargets(nn.Module):
    """The InDistill reference code's targets: each stage's conv pruned *in isolation*.

    Stage k's target is the pruned conv k (its kept filters, full-width input) applied to the
    *unpruned* model's stage k-1 output, then a BatchNorm with the kept gammas, beta = 0 and batch
    statistics (the reference left it in train mode after resetting its stats), ReLU and pool. So
    targets are batch-standardised, unlike a coherent pruned network's. Defined for one conv per
    stage (the paper's auxiliary). Exposed as layers 'stage1', ... of this module.
    """

    def __init__(self, model: nn.Module, kept: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        if getattr(model, "convs_per_stage", None) != 1:
            convs = getattr(model, "convs_per_stage", f"not the kit's ConvNet ({type(model).__name__}), so not 1")
            raise ValueError("ReferenceTargets prunes each stage's single conv in isolation, as the reference did; "
                             f"this model has {convs} convs per stage. Use KeptChannels or the "
                             "coherent pruned network instead.")
        self.model = model
        for path, channels in kept.items():
            self.add_module(path, _isolated_stage(getattr(model, path), list(channels)))

    @classmethod
    def from_report(cls, model: nn.Module, report: Any) -> "ReferenceTargets":
        """Kept filters of each stage's conv, read off a `PruneReport`."""
        return cls(model, {p: report.kept[f"{p}.conv1"] for p in spec_of(model).stages})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = [p for p, _ in self.named_children() if p != "model"]
        with Taps(self.model, stages) as taps:
            out = self.model(x)
        for i, path in enumerate(stages):
            getattr(self, path)(x if i == 0 else taps[stages[i - 1]])
        return out


def _isolated_stage(stage: nn.Sequential, keep: list[int]) -> nn.Sequential:
    """conv (kept filters) -> batch-statistics BN (kept gammas, beta 0) -> the stage's activation and pool."""
    conv, bn = stage.conv1, stage.bn1
    idx = torch.as_tensor(keep, dtype=torch.long)
    pruned = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding,
                       bias=conv.bias is not None)
    norm = nn.BatchNorm2d(len(keep), eps=bn.eps, track_running_stats=False)  # always batch statistics
    with torch.no_grad():
        pruned.weight.copy_(conv.weight[idx])
        if conv.bias is not None:
            pruned.bias.copy_(conv.bias[idx])
        norm.weight.copy_(bn.weight[idx])
        norm.bias.zero_()
    rest = [(n, m) for n, m in stage.named_children() if n not in ("conv1", "bn1")]
    return nn.Sequential(OrderedDict([("conv1", pruned), ("bn1", norm), *rest])).requires_grad_(False)


def target_gaps(sources: Sources, x: torch.Tensor, stages: Sequence[str],
                variants: Sequence[str] = ("pruned", "reference", "tuned"), baseline: str = "kept") -> list[dict[str, Any]]:
    """How far each set of layer targets is from the unpruned auxiliary's own features at the kept
    channels (`baseline`), per stage: relative MSE (MSE over the baseline's variance; scale-sensitive)
    and linear CKA (1 = the same representation up to rotation and scale). Variants the sources lack
    are skipped."""
    present = [v for v in variants if v in sources._modules]
    feats = sources.features(x, [f"{m}.{s}" for m in [baseline, *present] for s in stages])
    rows = []
    for stage in stages:
        base = feats[f"{baseline}.{stage}"].flatten(1)
        for variant in present:
            target = feats[f"{variant}.{stage}"].flatten(1)
            rows.append({"stage": stage, "targets": variant,
                         "relative_mse": float(((target - base) ** 2).mean() / base.var().clamp_min(1e-12)),
                         "cka": linear_cka(target, base)})
    return rows
