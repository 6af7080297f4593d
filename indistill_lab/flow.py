"""Information-flow paths: which channels carry the evidence for a class, layer after layer.

For one input and one class:

1. **Channel attribution** `a_l(c)`: captum's `LayerConductance` at the output of the l-th
   conv block (after BN and ReLU), summed over space, positive part (evidence *for* the
   class), normalised to sum 1 within the layer.
2. **Connection strength** `s_l(j, i)`: how strongly channel i of block l feeds channel j of
   block l+1: the L1 norm of the kernel `W[j, i]` times the next BatchNorm's scale
   `|gamma_j| / sqrt(var_j + eps)` (what multiplies channel i's activation on its way to j),
   divided by its maximum within the layer pair.
3. **Link weight** `a_l(i) * s_l(j, i) * a_{l+1}(j)`; a **path** (one channel per block) scores
   the product of each channel's attribution and each connection's strength on it,
   `prod_l a_l(c_l) * prod_l s_l(c_{l+1}, c_l)`. `top_paths` finds the highest-scoring paths
   exactly (k-best dynamic programming over all channels, not only the top few).

A teacher path *survives* pruning when every one of its channels is kept. Pruning criteria
can then be compared by how many of the teacher's top paths they preserve.

    layers = flow_layers(model)                       # conv blocks in order
    paths = flow_paths(model, x, target=3).paths       # [(channels per block, score), ...]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from captum.attr import LayerConductance, LayerGradCam
from torch import nn

from .modes import eval_mode
from .taps import get_module


@dataclass(frozen=True)
class FlowLayer:
    """One conv block: its conv, the BatchNorm after it (if any), and the module whose output is attributed."""

    conv: str
    bn: str | None
    out: str


@dataclass
class FlowResult:
    """Attributions and top paths of one model for one input and class."""

    layers: list[FlowLayer]
    attributions: list[torch.Tensor]
    paths: list[tuple[tuple[int, ...], float]]

    def to_dict(self) -> dict:
        """JSON-serialisable form (for caches)."""
        return {"layers": [layer.conv for layer in self.layers],
                "attributions": [a.tolist() for a in self.attributions],
                "paths": [[list(c), s] for c, s in self.paths]}


def flow_layers(model: nn.Module) -> list[FlowLayer]:
    """The conv blocks of a plain conv chain (conv -> [BN] -> ReLU), in forward order.

    Raises a TypeError for models without such a chain (paths need each conv to feed the next).
    """
    named = list(model.named_modules())
    layers = []
    for i, (name, module) in enumerate(named):
        if not isinstance(module, nn.Conv2d):
            continue
        bn, out = None, name
        for follower_name, follower in named[i + 1:i + 3]:
            if isinstance(follower, nn.BatchNorm2d) and bn is None and out == name:
                bn = out = follower_name
            elif isinstance(follower, nn.ReLU):
                out = follower_name
                break
        layers.append(FlowLayer(name, bn, out))
    if len(layers) < 2:
        raise TypeError(f"{type(model).__name__} has {len(layers)} conv layer(s); flow paths need a chain of at least "
                        "two convs (conv -> BN -> ReLU blocks, like the kit's ConvNet).")
    for a, b in zip(layers, layers[1:]):
        conv_a, conv_b = get_module(model, a.conv), get_module(model, b.conv)
        if conv_b.in_channels != conv_a.out_channels or conv_b.groups != 1:
            raise TypeError(f"{b.conv} does not read {a.conv}'s channels one to one ({conv_a.out_channels} out, "
                            f"{conv_b.in_channels} in); flow paths need a plain conv chain (no residual/grouped convs).")
    return layers


def connection_strength(model: nn.Module, layers: Sequence[FlowLayer]) -> list[torch.Tensor]:
    """For each consecutive pair of blocks, s (C_{l+1}, C_l): |W[j, i]|_1 * |gamma_j| / sigma_j, max-normalised."""
    out = []
    for nxt in layers[1:]:
        weight = get_module(model, nxt.conv).weight.detach().abs().sum(dim=(2, 3))
        if nxt.bn is not None:
            bn = get_module(model, nxt.bn)
            weight = weight * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)).unsqueeze(1)
        out.append(weight / weight.max().clamp_min(1e-12))
    return out


def channel_attributions(model: nn.Module, x: torch.Tensor, target: int, layers: Sequence[FlowLayer] | None = None,
                         n_steps: int = 32, baseline: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per-channel evidence for class `target` at each block (LayerConductance, summed over space,
    positive part, normalised to sum 1). `x` is one input (C, H, W) or (1, C, H, W); the baseline
    defaults to zeros (the dataset's mean image, since inputs are normalised)."""
    x = _one_input(x)
    layers = flow_layers(model) if layers is None else layers
    out = []
    with eval_mode(model):
        for layer in layers:
            cond = LayerConductance(model, get_module(model, layer.out))
            attr = cond.attribute(x, baselines=baseline, target=target, n_steps=n_steps).detach()
            per_channel = attr[0].sum(dim=(1, 2)).clamp_min(0)
            out.append(per_channel / per_channel.sum().clamp_min(1e-12))
    return out


def attribution_maps(model: nn.Module, x: torch.Tensor, target: int,
                     layers: Sequence[FlowLayer] | None = None) -> list[torch.Tensor]:
    """Grad-CAM map (H_l, W_l) of class `target` at each block's output (ReLU applied): where the evidence lies."""
    x = _one_input(x)
    layers = flow_layers(model) if layers is None else layers
    with eval_mode(model):
        return [LayerGradCam(model, get_module(model, layer.out)).attribute(x, target=target, relu_attributions=True)
                .detach()[0, 0] for layer in layers]


def _one_input(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"Give one input image (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}.")
    return x


def top_paths(attributions: Sequence[torch.Tensor], strengths: Sequence[torch.Tensor],
              n_paths: int = 10) -> list[tuple[tuple[int, ...], float]]:
    """The `n_paths` highest-scoring paths (one channel per layer), best first, each with its score
    prod_l a_l(c_l) * prod_l s_l(c_{l+1}, c_l). Exact (k-best dynamic programming in log space);
    paths through a channel with zero attribution or a zero connection are never returned."""
    if len(strengths) != len(attributions) - 1:
        raise ValueError(f"{len(attributions)} layers of attributions need {len(attributions) - 1} strength matrices, "
                         f"got {len(strengths)}.")
    for l, s in enumerate(strengths):
        if s.shape != (len(attributions[l + 1]), len(attributions[l])):
            raise ValueError(f"strength matrix {l} has shape {tuple(s.shape)}; expected (channels of layer {l + 1}, "
                             f"channels of layer {l}) = ({len(attributions[l + 1])}, {len(attributions[l])}).")
    if n_paths < 1:
        raise ValueError(f"n_paths must be >= 1, got {n_paths}.")
    logs = [a.double().log() for a in attributions]
    score = logs[0].unsqueeze(1)                                  # (C_0, 1): best partial scores ending at each channel
    paths = torch.arange(len(logs[0])).view(-1, 1, 1)             # (C_0, 1, 1): the channels of those partial paths
    for l, s in enumerate(strengths):
        cand = score.unsqueeze(0) + s.double().log().unsqueeze(2) + logs[l + 1].view(-1, 1, 1)  # (C_{l+1}, C_l, K)
        flat = cand.flatten(1)
        k = min(n_paths, flat.shape[1])
        score, idx = flat.topk(k, dim=1)                          # (C_{l+1}, k)
        prev_channel, prev_rank = idx // paths.shape[1], idx % paths.shape[1]
        head = paths[prev_channel, prev_rank]                     # (C_{l+1}, k, l + 1)
        tail = torch.arange(len(logs[l + 1])).view(-1, 1, 1).expand(-1, k, 1)
        paths = torch.cat([head, tail], dim=2)
    best, idx = score.flatten().topk(min(n_paths, score.numel()))
    flat_paths = paths.flatten(0, 1)[idx]
    return [(tuple(int(c) for c in p), float(v.exp())) for p, v in zip(flat_paths, best) if torch.isfinite(v)]


def flow_paths(model: nn.Module, x: torch.Tensor, target: int, n_paths: int = 10, n_steps: int = 32) -> FlowResult:
    """Attributions and the top `n_paths` paths of `model` for input `x` and class `target`."""
    layers = flow_layers(model)
    attributions = channel_attributions(model, x, target, layers, n_steps)
    return FlowResult(layers, attributions, top_paths(attributions, connection_strength(model, layers), n_paths))


def surviving(paths: Sequence[tuple[Sequence[int], float]], layers: Sequence[FlowLayer],
              kept: Mapping[str, Sequence[int]]) -> list[bool]:
    """For each path, whether all its channels survive pruning (`kept`: conv path -> kept original indices,
    as in `pruning.PruneReport.kept`; a layer missing from `kept` was not pruned)."""
    keep_sets = [set(kept[layer.conv]) if layer.conv in kept else None for layer in layers]
    return [all(s is None or c in s for c, s in zip(channels, keep_sets)) for channels, _ in paths]


def to_original_indices(paths: Sequence[tuple[Sequence[int], float]], layers: Sequence[FlowLayer],
                        kept: Mapping[str, Sequence[int]]) -> list[tuple[tuple[int, ...], float]]:
    """Paths of a pruned model, with each channel renamed to its index in the unpruned model."""
    return [(tuple(kept[layer.conv][c] if layer.conv in kept else c for c, layer in zip(channels, layers)), score)
            for channels, score in paths]


def chance_survival(layers: Sequence[FlowLayer], kept: Mapping[str, Sequence[int]], widths: Sequence[int]) -> float:
    """Probability that a path survives when each layer keeps a random subset of its channels:
    the product over layers of (kept channels / channels). `widths` are the unpruned widths per layer."""
    frac = 1.0
    for layer, width in zip(layers, widths):
        if layer.conv in kept:
            frac *= len(kept[layer.conv]) / width
    return frac


def path_survival(model: nn.Module, kept_by_criterion: Mapping[str, Mapping[str, Sequence[int]]], x: torch.Tensor,
                  targets: Sequence[int], n_paths: int = 20, n_steps: int = 32) -> dict[str, dict[str, list[float]]]:
    """How much of `model`'s top `n_paths` paths (input `x[k]`, class `targets[k]`) each pruning decision keeps
    (`kept_by_criterion`: name -> `PruneReport.kept`). Per input: "paths", the fraction of paths kept whole,
    and "channels", the fraction of the paths' channels (path x layer) kept. Returns name -> measure -> list."""
    if len(x) != len(targets):
        raise ValueError(f"{len(x)} inputs but {len(targets)} targets; give one class per input.")
    layers = flow_layers(model)
    strengths = connection_strength(model, layers)
    out: dict[str, dict[str, list[float]]] = {name: {"paths": [], "channels": []} for name in kept_by_criterion}
    for xi, target in zip(x, targets):
        paths = top_paths(channel_attributions(model, xi, int(target), layers, n_steps), strengths, n_paths)
        for name, kept in kept_by_criterion.items():
            alive = surviving(paths, layers, kept)
            out[name]["paths"].append(sum(alive) / max(len(alive), 1))
            hits = [surviving([((c,), 0.0)], [layer], kept)[0] for channels, _ in paths
                    for c, layer in zip(channels, layers)]
            out[name]["channels"].append(sum(hits) / max(len(hits), 1))
    return out


SURVIVAL_RUN = {"dataset": "fashion-mnist", "images": 20, "n_paths": 20, "n_steps": 32, "taylor_batches": 4,
                "seed": 0}
"""The precomputed survival comparison of notebook 03: zoo teacher pruned to the zoo student's widths."""


def cached_path_survival(refresh: bool = False, **overrides: object) -> dict[str, object]:
    """How much of the zoo teacher's top paths (true class of `images` test images) survives pruning to the
    student's widths under each built-in criterion (`path_survival` measures), with the chance levels of random
    channel choices; stored in results/precomputed/flow-*.json."""
    from . import zoo
    from .cache import cached
    from .data import Loader, load_split
    from .criteria import criteria
    from .pruning import prune_to_widths

    params = {**SURVIVAL_RUN, **overrides}

    def compute() -> dict[str, object]:
        teacher, student = zoo.load("teacher"), zoo.load("student")
        test = load_split(params["dataset"], "test", quick=False).subset(params["images"], seed=params["seed"])
        train = load_split(params["dataset"], "train", quick=False).subset(128 * params["taylor_batches"])
        kept, chance = {}, {}
        layers = flow_layers(teacher)
        widths = [get_module(teacher, layer.conv).out_channels for layer in layers]
        for name, criterion in criteria(Loader(train, 128, shuffle=False), seed=params["seed"]).items():
            _, report = prune_to_widths(teacher, student, criterion)
            kept[name] = report.kept
            chance[name] = {"paths": chance_survival(layers, report.kept, widths),
                            "channels": sum(len(report.kept[l.conv]) / w for l, w in zip(layers, widths)) / len(layers)}
        survival = path_survival(teacher, kept, test.x, test.y.tolist(), params["n_paths"], params["n_steps"])
        return {"survival": survival, "chance": chance, "images": test.y.tolist()}

    return cached("flow", params, compute, refresh=refresh)
