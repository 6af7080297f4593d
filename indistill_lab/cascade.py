"""Cascaded channel pruning with hierarchical self-distillation (Miles & Mikolajczyk 2020; docs/cascade.md).

One pretrained network; models T0 (the student) .. T(N-1) (unpruned) share its conv weights W. Each model
has its own per-filter scores, its own BN layers and its own head (every non-conv parameter). Model i's
mask keeps the filters whose scores pass one *global* threshold, so exactly a fraction k_i of the masked
filters is pruned; the first conv is never masked. Model i's scores are updated with the gradient of its
teacher's (model i+1's) loss.

How a score learns is the reconstruction's main choice (docs/cascade.md, "mask learning"):

- `gate="saliency"` (default): each score tracks its filter's saliency for the teacher: the per-example
  first-order loss change of removing the filter, squared and averaged (a Fisher estimate of the loss
  increase), relative to the layer's mean. Per-example squares do not cancel once BN has settled, unlike
  their batch sum. With `normalise` scores are divided by their layer's mean before the global threshold,
  and with `nested` a model may keep only filters its teacher keeps.
- `gate="bn-output"` (`LEGACY`, the kit's first version): edge-popup's signed straight-through gradient
  sum(dL/dY * Y) on BN's output, raw scores, no nesting.

    cascade = Cascade(pretrained, cascade_levels(0.6, assistants=1))   # levels [0.6, 0.3, 0.0]
    logits = cascade(x)                                                # one tensor per model
    student, report = cascade.export(0)                                # a physically smaller network
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .losses import KDLoss
from .modes import eval_mode
from .pruning import (
    Criterion,
    Layer,
    PruneReport,
    _Graph,
    _infer_input_shape,
    prune_to_widths,
    soft_prune,
)


def cascade_levels(student_level: float, assistants: int) -> list[float]:
    """Pruned fractions [k0, ..., 0]: the student's, `assistants` evenly spaced ones, the unpruned model's.

        >>> cascade_levels(0.6, 2)
        [0.6, 0.4, 0.2, 0.0]
    """
    if isinstance(assistants, bool) or not isinstance(assistants, int) or assistants < 0:
        raise ValueError(f"assistants must be an int >= 0, got {assistants!r}.")
    check_levels([student_level, 0.0])
    n = assistants + 1
    return [round(student_level * (n - j) / n, 6) for j in range(n + 1)]


def check_levels(levels: Sequence[float]) -> None:
    """Levels run from the student (most pruned) to the unpruned model: each in [0, 1), strictly decreasing."""
    if isinstance(levels, (int, float, str)) or not hasattr(levels, "__iter__"):
        raise ValueError(f"levels must be a list of pruned fractions from the student's down to 0, got {levels!r}; "
                         "e.g. cascade_levels(0.6, assistants=1) gives [0.6, 0.3, 0.0].")
    levels = list(levels)
    if len(levels) < 2:
        raise ValueError(f"A cascade needs at least a student and the unpruned model (2 levels), got {levels}.")
    bad = [k for k in levels if not 0.0 <= float(k) < 1.0]
    if bad:
        raise ValueError(f"Pruning levels must be in [0, 1) (the fraction of masked filters removed), got {bad} "
                         f"in {levels}.")
    if any(a <= b for a, b in zip(levels, levels[1:])):
        raise ValueError(f"Levels must decrease strictly from the student to the unpruned teacher (each model "
                         f"keeps more filters than the one it teaches), got {levels}.")
    if levels[-1] != 0.0:
        raise ValueError(f"The last model is the unpruned one: its level must be 0, got {levels[-1]}.")


def global_mask(scores: torch.Tensor, sizes: Sequence[int], level: float, normalise: bool = False,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 mask over the concatenated filters of all layers: exactly round(level * total) zeros.

    One global threshold on the scores, except that each layer keeps at least its best filter (a layer
    with no filter would cut the network). `normalise` first divides each layer's scores by their mean
    absolute value (over its allowed filters), so a layer whose scores are on a smaller scale is not
    emptied; `allowed` (0/1) restricts the kept filters to a subset, e.g. the teacher's kept filters.

        >>> global_mask(torch.tensor([0.1, 0.9, 0.5, 0.2, 0.3]), [2, 3], 0.6).tolist()
        [0.0, 1.0, 1.0, 0.0, 0.0]
        >>> global_mask(torch.tensor([0.1, 0.9, 0.5, 0.2, 0.3]), [2, 3], 0.6, normalise=True).tolist()
        [0.0, 1.0, 1.0, 0.0, 0.0]
        >>> global_mask(torch.tensor([1.0, 2.0, 30.0, 20.0, 10.0]), [2, 3], 0.2).tolist()
        [0.0, 1.0, 1.0, 1.0, 1.0]
        >>> global_mask(torch.tensor([1.0, 2.0, 30.0, 20.0, 10.0]), [2, 3], 0.2, normalise=True).tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    total = sum(sizes)
    keep = total - round(level * total)
    if keep < len(sizes):
        raise ValueError(f"Level {level} keeps {keep} of {total} filters, fewer than the {len(sizes)} masked "
                         "layers (each needs one): use a lower level.")
    scores = scores.detach().float()
    ok = torch.ones(total, dtype=torch.bool, device=scores.device) if allowed is None else allowed.bool()
    if int(ok.sum()) < keep or any(not c.any() for c in ok.split(list(sizes))):
        raise ValueError(f"Level {level} keeps {keep} filters but only {int(ok.sum())} are allowed (or a layer has "
                         "none): the allowed set must come from a less pruned model.")
    if normalise:
        scale = torch.cat([(c.abs() * a).sum().div(a.sum()).clamp_min(1e-12).expand(len(c))
                           for c, a in zip(scores.split(list(sizes)), ok.float().split(list(sizes)))])
        scores = scores / scale
    scores = scores.masked_fill(~ok, float("-inf"))
    mask = torch.zeros(total, device=scores.device)
    best = torch.stack([chunk.argmax() + start for chunk, start in
                        zip(scores.split(list(sizes)), torch.tensor([0, *sizes[:-1]]).cumsum(0))])
    mask[best] = 1.0
    rest = scores.masked_fill(mask.bool(), float("-inf"))
    mask[rest.topk(keep - len(sizes)).indices] = 1.0
    return mask


def kept_overlap(inner: torch.Tensor, outer: torch.Tensor) -> float:
    """Fraction of the filters `inner` keeps (a student's 0/1 mask) that `outer` (its teacher's) keeps too:
    1.0 when the masks nest.

        >>> kept_overlap(torch.tensor([1., 1., 0., 1.]), torch.tensor([1., 0., 1., 1.]))
        0.6666666666666666
    """
    inner, outer = inner.bool(), outer.bool()
    if inner.shape != outer.shape or not inner.any():
        raise ValueError(f"Masks must have one shape and the inner one keep a filter; got {tuple(inner.shape)} "
                         f"and {tuple(outer.shape)} with {int(inner.sum())} kept.")
    return int((inner & outer).sum()) / int(inner.sum())


def layers_at_floor(mask: torch.Tensor, sizes: Sequence[int]) -> int:
    """How many layers a flat mask leaves at their floor of one filter (a collapsed layer)."""
    return sum(int(c.sum()) == 1 for c in mask.split(list(sizes)))


def filter_saliency(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per filter, (1/2) * mean over examples of (first-order change of example i's loss when the filter's
    output `out` is removed)^2: a Fisher estimate of the loss increase (Theis et al. 2018).

    `grad` is dL/d out of the batch-mean loss, so example i's own change is B * sum_hw grad_i * out_i. The
    batch *sum* of these changes is what a signed straight-through gradient sees, and it is about 0 for a
    kept filter once BN's scale has settled (it equals gamma * dL/dgamma + beta * dL/dbeta); the squares
    are not.
    """
    per_example = (grad * out).flatten(2).sum(2) * grad.shape[0]
    return 0.5 * per_example.pow(2).mean(0)


def score_signals(cascade: "Cascade", x: torch.Tensor, y: torch.Tensor, model: int = -1) -> dict[str, torch.Tensor]:
    """What each gate would read for every filter of model `model` (default: the unpruned one) on a batch, per
    masked layer (rows: filters): column 0 the signed first-order signal the first version's scores got,
    |mean_i d_i|, column 1 the per-example spread sqrt(mean_i d_i^2), with d_i example i's first-order loss
    change when the filter's output is removed. A trained network's kept filters have column 0 near 0 (it is
    gamma * dL/dgamma + beta * dL/dbeta at BN's settled point) while column 1 is not: why the kit's scores
    use the squares (`filter_saliency`)."""
    member = cascade.members[model]
    outs: dict[str, torch.Tensor] = {}

    def keep(site: str) -> Any:
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            outs[site] = out
        return hook

    sites = [cascade.sites[p] for p in cascade.layers]
    handles = [member.get_submodule(site).register_forward_hook(keep(site)) for site in sites]
    try:
        with torch.enable_grad():
            F.cross_entropy(member(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    result = {}
    for site in sites:
        d = (outs[site].grad * outs[site]).flatten(2).sum(2) * len(y)  # (examples, filters)
        result[site] = torch.stack([d.mean(0).abs(), d.pow(2).mean(0).sqrt()], 1).detach()
    member.zero_grad(set_to_none=True)
    return result


class SaliencyMask(torch.autograd.Function):
    """Y = pre * m (a hard 0/1 mask per channel, the reading model's); the score's gradient is
    (score - relative saliency) on the channels the mask keeps, 0 elsewhere, so SGD moves each kept filter's
    score toward its saliency over the layer's mean (`filter_saliency`)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, mask: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (pre.dim() - 2)
        ctx.save_for_backward(pre, mask, score)  # not the output: an in-place ReLU after it may overwrite it
        ctx.shape = shape
        return pre * mask.view(shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
        pre, mask, score = ctx.saved_tensors
        sal = filter_saliency(grad, pre * mask.view(ctx.shape))
        relative = sal / ((sal * mask).sum() / mask.sum()).clamp_min(1e-20)
        return grad * mask.view(ctx.shape), None, (score.detach() - relative) * mask


class StraightThroughMask(torch.autograd.Function):
    """Y = pre * m (m a hard 0/1 mask per channel); the score gets dL/dS_n = sum over batch, h, w of
    dL/dY_n * pre_n, as if Y = pre * S (edge-popup's estimator), so a pruned filter's score still moves."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, mask: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (pre.dim() - 2)
        ctx.save_for_backward(pre, mask)
        ctx.shape = shape
        return pre * mask.view(shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
        pre, mask = ctx.saved_tensors
        dims = [d for d in range(grad.dim()) if d != 1]
        return grad * mask.view(ctx.shape), None, (grad * pre).sum(dims)


# How scores learn (see the module's docstring); LEGACY is the kit's first version, kept to show what it did.
GATES: dict[str, type[torch.autograd.Function]] = {"saliency": SaliencyMask, "bn-output": StraightThroughMask}
LEGACY: dict[str, Any] = {"gate": "bn-output", "normalise": False, "nested": False}


def maskable_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """Convs whose filters can be masked alone, in forward order, without the first conv: grouped convs
    and convs coupled to others through residual additions are left unmasked."""
    shape = _infer_input_shape(model, input_shape)
    graph = _Graph(model, shape)
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, p=p: order.append(p))
             for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    order = list(dict.fromkeys(order))
    found = [p for p in order[1:] if graph.prunable.get(p) == [p]]
    if not found:
        raise ValueError(f"{type(model).__name__} has no maskable layer: the cascade masks the filters of convs "
                         f"after the first whose channels are not tied to other layers (convs seen: {order}).")
    return found


class _FromMask(Criterion):
    """Scores = a fixed 0/1 mask per layer, so `prune_to_widths` keeps exactly the masked-in filters."""

    name = "cascade mask"

    def __init__(self, kept: dict[str, list[int]]) -> None:
        self.kept = kept

    def __call__(self, layer: Layer) -> torch.Tensor:
        scores = torch.zeros(layer.out_channels)
        scores[self.kept[layer.path]] = 1.0
        return scores


class Cascade(nn.Module):
    """N models sharing one set of conv weights: `members[i]` is model Ti (plain network, own BN and head),
    `scores[i]` its flat per-filter scores over `layers`, `levels[i]` its pruned fraction.

    `hierarchical=True` (the paper) routes the score gradient of model Ti's forward pass to T(i-1)'s
    scores, so each model's mask is learned with its teacher's loss; False trains each with its own.
    `gate`, `normalise` and `nested` choose how masks learn (module docstring; `LEGACY` the first version).
    """

    def __init__(self, network: nn.Module, levels: Sequence[float], input_shape: Sequence[int] | None = None,
                 hierarchical: bool = True, hint_layers: int = 3, gate: str = "saliency", normalise: bool = True,
                 nested: bool = True) -> None:
        super().__init__()
        check_levels(levels)
        if gate not in GATES:
            raise ValueError(f"Unknown gate {gate!r}: use one of {', '.join(GATES)}.")
        self.levels, self.hierarchical = [float(k) for k in levels], hierarchical
        self.gate, self.normalise, self.nested = gate, bool(normalise), bool(nested)
        self.input_shape = _infer_input_shape(network, input_shape)
        base = copy.deepcopy(network).train().requires_grad_(True)
        self.layers = maskable_layers(base, self.input_shape)
        graph = _Graph(base, self.input_shape)
        self.sites = {p: graph.names[graph.bn_after(graph.modules[p]) or graph.modules[p]] for p in self.layers}
        self.sizes = [graph.modules[p].out_channels for p in self.layers]
        self.hint_paths = [self.sites[p] for p in self.layers[-hint_layers:]]
        for k in self.levels:
            global_mask(torch.zeros(sum(self.sizes)), self.sizes, k)  # each level must leave a filter per layer
        shared = [(n, p) for n, p in base.named_parameters()
                  if isinstance(base.get_submodule(n.rpartition(".")[0]), nn.Conv2d)]
        self.members = nn.ModuleList([base] + [copy.deepcopy(base) for _ in self.levels[1:]])
        for member in self.members[1:]:  # tie: every member's convs hold the base's Parameter objects
            for name, param in shared:
                owner, _, attr = name.rpartition(".")
                setattr(member.get_submodule(owner), attr, param)
        init = torch.cat([_relative_l1(graph.modules[p].weight) for p in self.layers])
        self.scores = nn.ParameterList([nn.Parameter(init.clone()) for _ in self.levels])
        self.hints: list[dict[str, torch.Tensor]] = []
        self.last_masks: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.levels)

    def masks(self) -> list[torch.Tensor]:
        """Every model's flat 0/1 mask over `layers` (global threshold at its level), computed from the top
        down: with `nested`, model i chooses among the filters model i+1 keeps."""
        out = [torch.ones(sum(self.sizes), device=self.scores[-1].device)]
        for i in reversed(range(len(self) - 1)):
            out.insert(0, global_mask(self.scores[i], self.sizes, self.levels[i], self.normalise,
                                      out[0] if self.nested else None))
        return out

    def mask(self, i: int) -> torch.Tensor:
        """Model i's flat 0/1 mask (see `masks`)."""
        return self.masks()[i]

    def hint_weights(self, i: int, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per hint site, 0/1 over its channels: those model i (last forward's mask) and `teacher` both keep."""
        both = (self.last_masks[i] * teacher).split(self.sizes)
        return {self.sites[p]: m for p, m in zip(self.layers, both) if self.sites[p] in self.hint_paths}

    def kept(self, i: int) -> dict[str, list[int]]:
        """Model i's kept filter indices per masked layer."""
        return {p: m.nonzero().flatten().tolist() for p, m in zip(self.layers, self.mask(i).split(self.sizes))}

    def assistant(self, j: int) -> nn.Module:
        """Teaching assistant j (1 .. N-2) as a plain masked network (see `member`)."""
        if not 1 <= j <= len(self) - 2:
            raise ValueError(f"No assistant {j}: this cascade (levels {self.levels}) has {len(self) - 2} "
                             "assistant(s); build it with cascade_levels(k, assistants >= 1) to have one.")
        return self.member(j)

    def _sink(self, i: int) -> int | None:
        """Whose scores model i's forward pass trains."""
        if self.hierarchical:
            return i - 1 if i > 0 else None
        return i if self.levels[i] > 0 else None

    @contextlib.contextmanager
    def _masked(self, i: int, mask: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        """Hooks that mask member i's layer outputs (straight-through into the sink's scores) and record hints."""
        sink, feats, handles = self._sink(i), {}, []
        chunks = mask.split(self.sizes)
        offsets = torch.tensor([0, *self.sizes]).cumsum(0).tolist()
        for n, path in enumerate(self.layers):
            def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor, n: int = n, site: str = self.sites[path]
                     ) -> torch.Tensor:
                score = (self.scores[sink][offsets[n]:offsets[n + 1]] if sink is not None
                         else torch.zeros(self.sizes[n], device=out.device))
                y = GATES[self.gate].apply(out, chunks[n].to(out.dtype), score)
                if site in self.hint_paths:
                    feats[site] = y
                    return y.clone()  # the hint stays the masked BN output under an in-place ReLU (ResNets)
                return y
            handles.append(self.members[i].get_submodule(self.sites[path]).register_forward_hook(hook))
        try:
            yield feats
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every model, student first; `self.hints[i]` holds model i's masked hint features."""
        logits, self.hints, self.last_masks = [], [], self.masks()
        for i, member in enumerate(self.members):
            with self._masked(i, self.last_masks[i]) as feats:
                logits.append(member(x))
            self.hints.append(feats)
        return logits

    def member(self, i: int) -> nn.Module:
        """Model i as a plain network with its current mask fixed (an independent copy, eval mode)."""
        kept = self.kept(i)
        report = PruneReport("cascade mask", {self.sites[p]: s for p, s in zip(self.layers, self.sizes)}, {},
                             {self.sites[p]: k for p, k in kept.items()})
        return soft_prune(copy.deepcopy(self.members[i]), report).eval()

    def export(self, i: int = 0) -> tuple[nn.Module, PruneReport]:
        """Model i physically pruned to its mask (Torch-Pruning), with params/FLOPs in the report; in eval
        mode it computes what `member(i)` computes."""
        kept = self.kept(i)
        return prune_to_widths(copy.deepcopy(self.members[i]).eval(), {p: len(k) for p, k in kept.items()},
                               _FromMask(kept), self.input_shape)


def _relative_l1(weight: torch.Tensor) -> torch.Tensor:
    """Initial scores: each filter's L1 norm over its layer's mean, so layers compete on one scale."""
    l1 = weight.detach().abs().flatten(1).sum(1)
    return l1 / l1.mean().clamp_min(1e-12)


class CascadeLoss(nn.Module):
    """The hierarchical objective: for each model i, CE(z_i, y) + alpha * KD(z_i | z_{i+1}) at temperature T
    + beta * hint (squared differences of the masked features of the last layers over the channels both
    models keep, summed per example, batch mean). KD is Hinton's T^2 * KL with `t_squared` (its gradient
    does not shrink with T), the spec's plain KL without. The top model learns from `top`, a frozen copy of
    the pretrained network. Teachers' outputs are detached: model i's loss trains model i (and, through
    the scores, model i-1's mask)."""

    def __init__(self, top: nn.Module, hint_paths: Sequence[str], alpha: float = 0.4, temperature: float = 15.0,
                 beta: float = 0.001, t_squared: bool = True) -> None:
        super().__init__()
        self.top = copy.deepcopy(top).eval().requires_grad_(False)
        self.hint_paths, self.alpha, self.beta = list(hint_paths), alpha, beta
        self.kd = KDLoss(temperature)
        self.kd_scale = 1.0 if t_squared else 1.0 / temperature ** 2

    def model_loss(self, logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor,
                   hints: dict[str, torch.Tensor], teacher_hints: dict[str, torch.Tensor],
                   weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """One model's loss against its teacher's (detached) logits and hint features; `weights` (0/1 per
        channel and hint site) keeps only the channels both models keep."""
        def diff(p: str) -> torch.Tensor:
            d = hints[p] - teacher_hints[p].detach()
            if weights is not None:
                d = d * weights[p].to(d.dtype).view(1, -1, *[1] * (d.dim() - 2))
            return (d ** 2).flatten(1).sum(1).mean()
        hint = sum((diff(p) for p in hints), torch.zeros((), device=logits.device))
        return (F.cross_entropy(logits, y) + self.alpha * self.kd_scale * self.kd(logits, teacher_logits.detach())
                + self.beta * hint)

    def forward(self, cascade: Cascade, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            top_hints: dict[str, torch.Tensor] = {}
            handles = [self.top.get_submodule(p).register_forward_hook(
                lambda _m, _i, out, p=p: top_hints.__setitem__(p, out.clone())) for p in self.hint_paths]
            try:
                top_logits = self.top(x)
            finally:
                for h in handles:
                    h.remove()
        logits = cascade(x)
        teachers = [*zip(logits[1:], cascade.hints[1:]), (top_logits, top_hints)]
        outer = [*cascade.last_masks[1:], cascade.last_masks[-1]]  # the top's teacher keeps every channel
        return {f"L{i}": self.model_loss(z, y, tz, cascade.hints[i], th, cascade.hint_weights(i, outer[i]))
                for i, (z, (tz, th)) in enumerate(zip(logits, teachers))}
