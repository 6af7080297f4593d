"""Trace of the Fisher information of the weights, per layer: the critical-period diagnostic.

Achille, Rovere and Soatto (ICLR 2019) track

    tr F = E_x E_{y ~ p_w(y|x)} || grad_w log p_w(y|x) ||^2

over training: it rises fast while the network absorbs information, then falls. Two details
make it the *Fisher* and not a gradient norm: `y` is sampled from the model's own prediction
(not the true label), and the squared norm is taken per example (a batch gradient would
average the examples' gradients before squaring and lose most of the signal).

Per-example gradients come from `torch.func`: `vmap` over `grad` of a one-example loss,
in chunks, with the model in eval mode so BatchNorm uses its running statistics (in train
mode BN mixes the examples of a batch, which vmap over single examples cannot express).
`fisher_trace_loop` is the slow, obvious reference: one backward pass per example.

    >>> from indistill_lab.models import build_model
    >>> model = build_model("student")
    >>> trace = fisher_trace(model, torch.randn(8, 1, 28, 28), depth=1)
    >>> sorted(trace)
    ['classifier', 'fc1', 'stage1', 'stage2', 'stage3']
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from .modes import eval_mode
from .train import Callback, Trainer


def parameter_group(name: str, depth: int | None = None) -> str:
    """Which layer a parameter belongs to: its module path, cut to the first `depth` parts.

    `"stage1.conv1.weight"` -> `"stage1.conv1"` (depth None) or `"stage1"` (depth 1).
    """
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1 or None (full module path), got {depth}.")
    module = name.rsplit(".", 1)[0] if "." in name else name
    return ".".join(module.split(".")[:depth]) if depth is not None else module


@torch.no_grad()
def sample_labels(model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels drawn from the model's own predictive distribution p_w(y|x) (eval mode)."""
    with eval_mode(model):
        probs = F.softmax(model(x).float(), dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_inputs(x: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}.")
    if labels.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},) to match x, got {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be class indices in 0..{num_classes - 1} (the model's classes), got values "
                         f"from {int(labels.min())} to {int(labels.max())}.")


def _groups(model: nn.Module, depth: int | None) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(parameter_group(name, depth), []).append(name)
    if not groups:
        raise ValueError("The model has no trainable parameters: there is no Fisher information to measure.")
    return groups


def fisher_trace(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    depth: int | None = None,
    chunk_size: int | None = 64,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Per-layer trace of the Fisher information on the probe inputs `x` (vectorised).

    Returns {layer: mean over examples of the summed squared per-example gradient of
    -log p(y|x) over that layer's parameters}; the values add up to the total trace.
    `labels` default to a sample from the model's prediction (`generator` seeds it);
    `depth` groups parameters by module path (see `parameter_group`); `chunk_size`
    bounds how many examples vmap processes at once (None: all).
    The model is evaluated in eval mode (BatchNorm running statistics); its mode is restored.
    """
    if labels is None:
        labels = sample_labels(model, x, generator)
    _check_inputs(x, labels, getattr(model, "num_classes", None))
    groups = _groups(model, depth)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b for n, b in model.named_buffers()}

    def neg_log_lik(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, frozen, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    def squared_norms(xi: torch.Tensor, yi: torch.Tensor) -> dict[str, torch.Tensor]:
        g = grad(neg_log_lik)(params, xi, yi)
        return {k: sum(g[n].pow(2).sum() for n in names) for k, names in groups.items()}

    with eval_mode(model):
        per_example = vmap(squared_norms, chunk_size=chunk_size)(x, labels)
    return {k: float(v.mean()) for k, v in per_example.items()}


def fisher_trace_loop(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                      depth: int | None = None) -> dict[str, float]:
    """The same quantity as `fisher_trace`, one backward pass per example: the slow reference."""
    _check_inputs(x, labels, getattr(model, "num_classes", None))
    groups = _groups(model, depth)
    named = dict(model.named_parameters())
    totals = dict.fromkeys(groups, 0.0)
    try:
        with eval_mode(model):
            for xi, yi in zip(x, labels):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(xi.unsqueeze(0)), yi.unsqueeze(0)).backward()
                for k, names in groups.items():
                    totals[k] += sum(float(named[n].grad.pow(2).sum()) for n in names)
    finally:
        model.zero_grad(set_to_none=True)
    return {k: v / len(x) for k, v in totals.items()}


class FisherTraceCallback(Callback):
    """Records the per-layer Fisher trace on a fixed probe set while a `Trainer` trains.

    Measures once before training (step 0), then after every epoch, or every `every_steps`
    optimisation steps when given, and also after each step listed in `extra_steps` (e.g. densely
    in the first epoch, where the trace moves fastest). `records` holds dicts {"step", "trace"};
    `epochs()` turns their steps into (fractional) epochs and `series(layer)` gives one layer's values.
    Labels are resampled from the model at each measurement with the same seed, so the only
    thing that changes between records is the model.
    """

    def __init__(self, probe_x: torch.Tensor, depth: int | None = 1, every_steps: int | None = None,
                 chunk_size: int | None = 64, seed: int = 0, extra_steps: Sequence[int] = ()) -> None:
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1 or None (once per epoch), got {every_steps}.")
        if any(not isinstance(s, int) or s < 1 for s in extra_steps):
            raise ValueError(f"extra_steps must be optimisation steps >= 1 (whole numbers), got {list(extra_steps)}.")
        self.probe_x, self.depth, self.every_steps = probe_x, depth, every_steps
        self.extra_steps = frozenset(extra_steps)
        self.chunk_size, self.seed = chunk_size, seed
        self.records: list[dict[str, Any]] = []
        self.steps_per_epoch: int | None = None

    def measure(self, trainer: Trainer) -> None:
        """Append the current model's per-layer trace to `records`."""
        x = self.probe_x.to(trainer.device)
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        trace = fisher_trace(trainer.model, x, depth=self.depth, chunk_size=self.chunk_size, generator=g)
        self.records.append({"step": trainer.step, "trace": trace})

    def on_train_start(self, trainer: Trainer) -> None:
        if not self.records:
            self.measure(trainer)

    def on_batch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if ((self.every_steps is not None and trainer.step % self.every_steps == 0)
                or trainer.step in self.extra_steps):
            self.measure(trainer)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.steps_per_epoch is None:
            self.steps_per_epoch = trainer.step // trainer.epoch
        if self.every_steps is None and self.records[-1]["step"] != trainer.step:
            self.measure(trainer)

    def epochs(self) -> list[float]:
        """When each record was taken, in epochs (needs one finished epoch to know its length)."""
        if self.steps_per_epoch is None:
            raise RuntimeError("The epoch length is known after the first finished epoch; use the records' steps.")
        return [r["step"] / self.steps_per_epoch for r in self.records]

    def series(self, layer: str = "total") -> list[float]:
        """Values of one layer over the records; "total" sums all layers."""
        if layer == "total":
            return [sum(r["trace"].values()) for r in self.records]
        if self.records and layer not in self.records[0]["trace"]:
            raise KeyError(f"No layer {layer!r} in the Fisher records; layers: {', '.join(self.records[0]['trace'])}.")
        return [r["trace"][layer] for r in self.records]
