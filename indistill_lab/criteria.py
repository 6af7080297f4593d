"""Channel importance criteria: which output channels of a layer survive pruning (higher score = keep).

One contract, `criterion(layer) -> 1-D tensor` over a `Layer` (a conv/linear layer, the BatchNorm
after it, its path), so a notebook can score one layer and a new criterion is a few lines. The
magnitude, BN-scale and random criteria are thin adapters over Torch-Pruning's own importance
classes, read at the layer's own output channels; the activation-based first-order Taylor
criterion (Molchanov et al. 2017) is the kit's own, since Torch-Pruning scores weights, not
activations.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from .data import Loader, Split
from .modes import eval_mode


@dataclass
class Layer:
    """What a criterion sees: a conv/linear layer, the BatchNorm right after it (if any), its path."""

    path: str
    module: nn.Module
    bn: nn.BatchNorm2d | nn.BatchNorm1d | None = None
    group: Any = None
    """Torch-Pruning's group rooted at this layer's output channels (set by `prune_to_widths`; built
    from the layer alone when missing)."""

    def pruning_group(self) -> Any:
        """This layer's Torch-Pruning group: the given one, else one traced from the layer (and its BN) alone."""
        if self.group is not None:
            return self.group
        return own_group(self.module, self.bn)

    @property
    def out_channels(self) -> int:
        return self.module.weight.shape[0]


def own_group(module: nn.Module, bn: nn.Module | None = None) -> Any:
    """A Torch-Pruning group for a layer outside any model: traced on the layer (then its BN) alone."""
    if isinstance(module, nn.Conv2d):
        side = [module.dilation[i] * (module.kernel_size[i] - 1) + 1 for i in range(2)]
        shape, fn = (1, module.in_channels, *side), tp.prune_conv_out_channels
    elif isinstance(module, nn.Linear):
        shape, fn = (1, module.in_features), tp.prune_linear_out_channels
    else:
        raise TypeError(f"Criteria score Conv2d or Linear layers, got {type(module).__name__}.")
    net = nn.Sequential(module, *([bn] if bn is not None else []))
    frozen = [p for p in net.parameters() if not p.requires_grad]
    for p in frozen:  # Torch-Pruning traces through autograd
        p.requires_grad_(True)
    try:
        with eval_mode(net):
            graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(shape))
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return graph.get_pruning_group(module, fn, list(range(module.weight.shape[0])))


def _root_scores(importance: Any, layer: Layer) -> torch.Tensor:
    """A Torch-Pruning importance read at the layer's own output channels (the group's first entry),
    so coupled layers are scored one by one and `prune_to_widths` sums them, whatever the criterion."""
    importance.group_reduction, importance.normalizer = "first", None
    return importance(layer.pruning_group()).detach().cpu()


class Criterion:
    """Channel importance: `criterion(layer) -> 1-D tensor`, one score per output channel, higher = keep.

    Subclass and implement `__call__`; override `prepare(model, layers)` when the scores need
    a pass over the model first (e.g. gradients). A new criterion is a few lines:

        >>> class MaxAbs(Criterion):
        ...     name = "max |w|"
        ...     def __call__(self, layer):
        ...         return layer.module.weight.detach().abs().flatten(1).amax(1)
        >>> MaxAbs()(Layer("conv", nn.Conv2d(1, 3, 3))).shape
        torch.Size([3])
    """

    name = "criterion"

    def prepare(self, model: nn.Module, layers: Sequence[Layer]) -> None:
        """Called once with the model and all layers to be scored, before any `__call__`."""

    def __call__(self, layer: Layer) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class L1(Criterion):
    """L1 norm of each output filter (Li et al. 2017, the InDistill reference choice).

        >>> conv = nn.Conv2d(1, 2, 1, bias=False)
        >>> conv.weight.data = torch.tensor([[[[-3.0]]], [[[2.0]]]])
        >>> L1()(Layer("c", conv)).tolist()
        [3.0, 2.0]
    """

    name = "L1"

    def __call__(self, layer: Layer) -> torch.Tensor:
        return _root_scores(tp.importance.MagnitudeImportance(p=1), layer)


class L2(Criterion):
    """L2 norm of each output filter.

        >>> conv = nn.Conv2d(1, 1, (1, 2), bias=False)
        >>> conv.weight.data = torch.tensor([[[[3.0, 4.0]]]])
        >>> L2()(Layer("c", conv)).tolist()
        [5.0]
    """

    name = "L2"

    def __call__(self, layer: Layer) -> torch.Tensor:
        return _root_scores(tp.importance.MagnitudeImportance(p=2), layer).sqrt()  # Torch-Pruning sums squares


class BNScale(Criterion):
    """|gamma| of the BatchNorm after the layer (Liu et al. 2017, network slimming).

        >>> bn = nn.BatchNorm2d(2); bn.weight.data = torch.tensor([-0.5, 0.2])
        >>> BNScale()(Layer("c", nn.Conv2d(1, 2, 1), bn)).tolist()
        [0.5, 0.20000000298023224]
    """

    name = "BN scale"

    def __call__(self, layer: Layer) -> torch.Tensor:
        if layer.bn is None or layer.bn.weight is None:
            raise ValueError(f"BN-scale criterion needs an affine BatchNorm after {layer.path!r}; "
                             "this layer has none. Use L1, L2 or Taylor for it.")
        return _root_scores(tp.importance.BNScaleImportance(), layer)


class Random(Criterion):
    """Random scores (the control): deterministic for a given seed and layer path.

        >>> a, b = Random(seed=1), Random(seed=1)
        >>> layer = Layer("c", nn.Conv2d(1, 4, 1))
        >>> torch.equal(a(layer), b(layer))
        True
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, layer: Layer) -> torch.Tensor:
        with torch.random.fork_rng():  # Torch-Pruning draws from the global generator: seed it, then restore it
            torch.manual_seed(self.seed * 1_000_003 + zlib.crc32(layer.path.encode()))
            return tp.importance.RandomImportance()(layer.pruning_group())

    def __repr__(self) -> str:
        return f"Random(seed={self.seed})"


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


class Taylor(Criterion):
    """First-order Taylor estimate of the loss change when a channel is removed (Molchanov et al. 2017).

    Removing channel c sets its output a_c (after the BN, if any) to zero, so to first order the
    loss changes by -sum(a_c * dL/da_c). The score is |sum over the batch and positions of
    a_c * dL/da_c| / batch size, averaged over the given batches. Exact when the loss is linear
    in the channel. The model is run in eval mode (BN statistics untouched) and no `.grad` is left.

        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
        >>> batches = [(torch.randn(4, 1, 5, 5), torch.tensor([0, 1, 2, 0]))]
        >>> crit = Taylor(batches)
        >>> crit.prepare(model, [Layer("0", model[0])])
        >>> crit(Layer("0", model[0])).shape
        torch.Size([2])
    """

    name = "Taylor"

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn = _cross_entropy,
                 num_batches: int = 4) -> None:
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}.")
        self.batches, self.loss_fn, self.num_batches = batches, loss_fn, num_batches
        self._scores: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, layers: Sequence[Layer]) -> None:
        taps = {layer.path: (layer.bn if layer.bn is not None else layer.module) for layer in layers}
        sums = {path: torch.zeros(layer.out_channels) for path, layer in zip(taps, layers)}
        outputs: dict[str, torch.Tensor] = {}
        handles = [m.register_forward_hook(lambda _m, _i, out, p=p: outputs.__setitem__(p, out))
                   for p, m in taps.items()]
        seen = 0
        device = next(model.parameters()).device
        try:
            with eval_mode(model):
                for x, y in self.batches:
                    if seen == self.num_batches:
                        break
                    x, y = x.to(device), y.to(device)
                    with torch.enable_grad():
                        loss = self.loss_fn(model, x, y)
                        acts = [outputs[p] for p in taps]
                        grads = torch.autograd.grad(loss, acts)
                    for p, a, g in zip(taps, acts, grads):
                        dims = [d for d in range(a.dim()) if d != 1]
                        sums[p] += ((a * g).sum(dims).abs() / len(x)).detach().cpu()
                    seen += 1
        finally:
            for h in handles:
                h.remove()
        if seen == 0:
            raise ValueError("Taylor criterion got no batches: pass a loader or a list of (x, y) batches.")
        self._scores = {p: s / seen for p, s in sums.items()}

    def __call__(self, layer: Layer) -> torch.Tensor:
        if layer.path not in self._scores:
            raise RuntimeError(f"Taylor scores for {layer.path!r} are missing: call prepare(model, layers) "
                               "first (prune_to_widths does it for you).")
        return self._scores[layer.path]

    def __repr__(self) -> str:
        return f"Taylor(num_batches={self.num_batches})"


def criteria(batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, seed: int = 0) -> dict[str, Criterion]:
    """The built-in criteria by name (Taylor only when `batches` are given), e.g. for a dropdown."""
    out: dict[str, Criterion] = {"L1": L1(), "L2": L2(), "BN scale": BNScale(), "random": Random(seed)}
    if batches is not None:
        out["Taylor"] = Taylor(batches)
    return out




def make_criterion(name: str, train: Split, seed: int = 0, batch_size: int = 64) -> Criterion:
    """A built-in criterion by name; Taylor gets its batches from `train` (seeded)."""
    known = criteria(batches=Loader(train, batch_size, shuffle=True, seed=seed), seed=seed)
    if name not in known:
        raise KeyError(f"Unknown criterion {name!r}. Known: {', '.join(known)}.")
    return known[name]
