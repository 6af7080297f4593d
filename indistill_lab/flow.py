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

A path *survives* pruning when every one of its channels is kept. Pruning criteria can then
be compared by how many of a model's top paths they preserve.

The path score is this kit's construction, so it needs a **causal check**: `ablation_check` zeroes
the channels on a class's top paths (`channels_zeroed`, forward hooks, removed on exit) and
measures the drop in that class's logit and accuracy, against the same number of random channels
and of the channels with the lowest attribution for the class.

    layers = flow_layers(model)                       # conv blocks in order
    paths = flow_paths(model, x, target=3).paths       # [(channels per block, score), ...]
    with channels_zeroed(model, path_channels(paths, layers)):
        logits = model(x)                              # the paths' channels cut out
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
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


def _captum_attr() -> Any:
    """captum's `attr` module, imported on first use: captum comes with the `lab` extra, not the library."""
    try:
        from captum import attr
    except ImportError as exc:
        raise ImportError("Attribution (flow paths) needs captum, part of the notebook stack: "
                          "pip install 'indistill_lab[lab]' (or pip install captum).") from exc
    return attr


def channel_attributions(model: nn.Module, x: torch.Tensor, target: int, layers: Sequence[FlowLayer] | None = None,
                         n_steps: int = 32, baseline: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per-channel evidence for class `target` at each block (LayerConductance, summed over space,
    positive part, normalised to sum 1). `x` is one input (C, H, W) or (1, C, H, W); the baseline
    defaults to zeros (the dataset's mean image, since inputs are normalised)."""
    return [a[0] for a in _per_input_attributions(model, _one_input(x), target, layers, n_steps, baseline)]


def class_attributions(model: nn.Module, x: torch.Tensor, target: int, layers: Sequence[FlowLayer] | None = None,
                       n_steps: int = 16) -> list[torch.Tensor]:
    """The evidence for class `target` per channel and block over a batch `x` (N, C, H, W), e.g. images of that
    class: the mean of each input's `channel_attributions`, so it sums to 1 per block. `top_paths` of these
    are the class's paths rather than one image's."""
    if x.dim() != 4 or len(x) == 0:
        raise ValueError(f"Give a non-empty batch of images (N, C, H, W), got shape {tuple(x.shape)}.")
    return [a.mean(dim=0) for a in _per_input_attributions(model, x, target, layers, n_steps, None)]


def _per_input_attributions(model: nn.Module, x: torch.Tensor, target: int, layers: Sequence[FlowLayer] | None,
                            n_steps: int, baseline: torch.Tensor | None) -> list[torch.Tensor]:
    """(N, C_l) per block: each input's positive LayerConductance per channel, normalised to sum 1."""
    layers = flow_layers(model) if layers is None else layers
    out = []
    with eval_mode(model):
        for layer in layers:
            cond = _captum_attr().LayerConductance(model, get_module(model, layer.out))
            attr = cond.attribute(x, baselines=baseline, target=target, n_steps=n_steps).detach()
            per_channel = attr.sum(dim=(2, 3)).clamp_min(0)
            out.append(per_channel / per_channel.sum(dim=1, keepdim=True).clamp_min(1e-12))
    return out


def attribution_maps(model: nn.Module, x: torch.Tensor, target: int,
                     layers: Sequence[FlowLayer] | None = None) -> list[torch.Tensor]:
    """Grad-CAM map (H_l, W_l) of class `target` at each block's output (ReLU applied): where the evidence lies."""
    x = _one_input(x)
    layers = flow_layers(model) if layers is None else layers
    with eval_mode(model):
        grad_cam = _captum_attr().LayerGradCam
        return [grad_cam(model, get_module(model, layer.out)).attribute(x, target=target, relu_attributions=True)
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


def path_channels(paths: Sequence[tuple[Sequence[int], float]], layers: Sequence[FlowLayer]) -> dict[str, list[int]]:
    """The channels that `paths` pass through, per block: conv path -> sorted channel indices (the form
    `channels_zeroed` and `PruneReport.kept` use)."""
    wrong = [list(channels) for channels, _ in paths if len(channels) != len(layers)]
    if wrong:
        raise ValueError(f"Paths must name one channel per block ({len(layers)} blocks), got {wrong[:3]}; pass the "
                         "paths and the layers of the same model.")
    return {layer.conv: sorted({int(channels[l]) for channels, _ in paths}) for l, layer in enumerate(layers)}


def busiest_channels(paths: Sequence[tuple[Sequence[int], float]], layers: Sequence[FlowLayer]
                     ) -> dict[str, tuple[int, int]]:
    """Per block, the channel the most `paths` pass through and how many do (conv path -> (channel, count);
    ties: the lower channel): the "highways" of a set of paths."""
    if not paths:
        raise ValueError("No paths given; busiest_channels needs at least one (channels per block, score) path.")
    out = {}
    for l, layer in enumerate(layers):
        counts: dict[int, int] = {}
        for channels, _ in paths:
            counts[int(channels[l])] = counts.get(int(channels[l]), 0) + 1
        out[layer.conv] = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return out


@contextmanager
def channels_zeroed(model: nn.Module, channels: Mapping[str, Sequence[int]]) -> Iterator[nn.Module]:
    """Inside the `with` block, the listed channels of each conv block (conv path -> channel indices) are zero at
    the block's output (after BN and ReLU, where attributions are measured), so nothing they carry reaches the
    later layers. Forward hooks, removed on exit even on error; the weights are never touched.

        with channels_zeroed(model, {"stage1.conv1": [3, 7]}):
            logits = model(x)
    """
    blocks = {layer.conv: layer for layer in flow_layers(model)}
    masks = {}
    for conv, idx in channels.items():
        if conv not in blocks:
            raise KeyError(f"{conv!r} is not a conv block of {type(model).__name__}; use one of {', '.join(blocks)}.")
        width = get_module(model, conv).out_channels
        bad = [i for i in idx if not 0 <= int(i) < width]
        if bad:
            raise ValueError(f"{conv} has {width} channels (0..{width - 1}); channel(s) {bad} do not exist.")
        mask = torch.ones(width)
        mask[[int(i) for i in idx]] = 0.0
        masks[blocks[conv].out] = mask.view(1, -1, 1, 1)
    handles = [get_module(model, out).register_forward_hook(lambda _m, _i, y, mask=mask: y * mask.to(y))
               for out, mask in masks.items()]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def class_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int) -> dict[str, float]:
    """On labelled inputs: the mean logit of class `target` over its own images ("logit"), the share of them
    classified as `target` ("accuracy") and the accuracy on the other classes' images ("others")."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels; give one label per input.")
    own = _own_class(y, target)
    with eval_mode(model):
        logits = model(x)
    predicted = logits.argmax(dim=1)
    return {"logit": float(logits[own, target].mean()), "accuracy": float((predicted[own] == target).float().mean()),
            "others": float((predicted[~own] == y[~own]).float().mean())}


def _own_class(y: torch.Tensor, target: int) -> torch.Tensor:
    """The mask of labels equal to `target`; an error unless both the class and other classes are present."""
    own = y == target
    if not own.any() or own.all():
        raise ValueError(f"Give images of class {target} and of other classes (got {int(own.sum())} of {len(y)}).")
    return own


def ablation_check(model: nn.Module, select_x: torch.Tensor, eval_x: torch.Tensor, eval_y: torch.Tensor, target: int,
                   n_paths: int = 10, draws: int = 5, n_steps: int = 16, seed: int = 0) -> dict[str, Any]:
    """Do class `target`'s top paths carry its evidence? Find them on `select_x` (images of the class,
    `class_attributions`), then on the held-out labelled images `eval_x`, `eval_y` measure `class_score` with
    the channels on those paths zeroed, against the same number of channels per block (never ones on the paths)
    with the lowest attribution for the class, and drawn at random (`draws` draws, seeded).

    JSON-ready: {"class", "paths", "zeroed": channels per block, "intact", "top paths", "lowest": scores,
    "random": one score per draw}. If the path score means something, "top paths" drops the class's logit
    and accuracy far more than "random", and "lowest" hardly at all."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1 (random control sets), got {draws}.")
    _own_class(eval_y, target)  # fails before the attributions are computed
    layers = flow_layers(model)
    attributions = class_attributions(model, select_x, target, layers, n_steps)
    paths = top_paths(attributions, connection_strength(model, layers), n_paths)
    top = path_channels(paths, layers)
    g = torch.Generator().manual_seed(seed)
    lowest: dict[str, list[int]] = {}
    random_sets: list[dict[str, list[int]]] = [{} for _ in range(draws)]
    for layer, a in zip(layers, attributions):
        on_paths = set(top[layer.conv])
        pool = [c for c in range(len(a)) if c not in on_paths]
        if len(pool) < len(on_paths):
            raise ValueError(f"The top {n_paths} paths use {len(on_paths)} of {len(a)} channels of {layer.conv}, "
                             "leaving too few for a control set of the same size; lower n_paths.")
        lowest[layer.conv] = sorted(sorted(pool, key=lambda c: (float(a[c]), c))[:len(on_paths)])
        for chosen in random_sets:
            draw = torch.randperm(len(pool), generator=g)[:len(on_paths)].tolist()
            chosen[layer.conv] = sorted(pool[i] for i in draw)

    def score(channels: Mapping[str, Sequence[int]]) -> dict[str, float]:
        with channels_zeroed(model, channels):
            return class_score(model, eval_x, eval_y, target)

    return {"class": target, "paths": [[list(c), v] for c, v in paths],
            "zeroed": {conv: len(c) for conv, c in top.items()}, "intact": score({}), "top paths": score(top),
            "lowest": score(lowest), "random": [score(chosen) for chosen in random_sets]}


ABLATION_CONDITIONS = ("top paths", "random", "lowest")
"""The channel sets `ablation_check` zeroes, in the order figures and tables show them."""


def ablation_summary(checks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Drops caused by zeroing each condition's channels (intact minus ablated), over `ablation_check` results
    (one per class): per condition and measure ("logit", "accuracy", "others") the mean and standard deviation
    over classes (random: each class's mean over its draws first), and "random_as_large": per measure, the share of
    (class, random draw) pairs whose drop is at least the same class's top-paths drop."""
    if not checks:
        raise ValueError("No ablation results to summarise; give ablation_check's result for at least one class.")
    measures = ("logit", "accuracy", "others")

    def drop(check: Mapping[str, Any], score: Mapping[str, float], measure: str) -> float:
        return check["intact"][measure] - score[measure]

    per_class = {c: {m: [] for m in measures} for c in ABLATION_CONDITIONS}
    as_large = {m: [] for m in measures}
    for check in checks:
        for m in measures:
            top = drop(check, check["top paths"], m)
            random_drops = [drop(check, r, m) for r in check["random"]]
            per_class["top paths"][m].append(top)
            per_class["lowest"][m].append(drop(check, check["lowest"], m))
            per_class["random"][m].append(sum(random_drops) / len(random_drops))
            as_large[m] += [d >= top for d in random_drops]
    out: dict[str, Any] = {c: {m: _mean_sd(v) for m, v in per_class[c].items()} for c in ABLATION_CONDITIONS}
    out["random_as_large"] = {m: sum(v) / len(v) for m, v in as_large.items()}
    out["classes"] = len(checks)
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
