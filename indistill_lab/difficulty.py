"""Per-layer distillation difficulty: one table of measures on comparable scales, and one rule to a curriculum.

For each aligned (teacher layer, student layer) pair, with the student at its initialisation:

- `nmse`, the **variance-normalised MSE at the start**: mean((s - t)^2) / var(t), the direct loss InDistill
  minimises in units of the target's own spread (1 = as far as predicting the target's mean everywhere). Scaling
  both sides of a pair by one factor leaves it unchanged; the raw MSE scales with the factor squared, so raw
  MSEs of layers of different scales cannot be compared. (A fresh student's features are small, its BatchNorms
  holding running statistics 0 and 1, so at the start nMSE largely reflects the teacher's features.)
- `one_minus_cka`, **1 - linear CKA at the start** (`alignment.linear_cka`): how dissimilar the representations are
  up to rotation and scale (0 = the same up to those).
- `steps`, the **optimizer steps until the held-out loss falls to `fraction` of its start** when that pair is
  distilled alone (direct MSE, nothing else): a ratio of losses, so scale-free too. A probe of n steps that never
  gets there knows only "at least n": the value is **censored**, stored as None with `"censored": True` and shown
  as ">= n", never replaced by n.

**The rule** (`curriculum_from_table`, `RULE`): the layer phases split an epoch budget in proportion to `nmse`,
after one epoch each (largest remainders round; `curriculum.allocate_epochs`), shallow to deep, one layer at a
time. It uses `nmse` because it is defined for every layer before any training (never censored, no probe run),
it is comparable across layers, and it is the quantity a phase reduces; on the kit's networks it does not predict
the steps column (notebook 05). `layer_difficulty` computes the same measure from one batch, for runs that build
their curriculum on the fly (the `indistill-difficulty` method, notebook 06's editor); the other two columns are
there to check it against.

    table = difficulty_table(pruned_auxiliary, student, pairs, train, probe_x)
    print(table_text(table))                                  # censored values read ">= n"
    curriculum = curriculum_from_table(table, budget=12, final=final, total_epochs=20)
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from .alignment import linear_cka
from .curriculum import Curriculum, Pair, Phase, Term
from .taps import features
from .objective import CurriculumObjective
from .data import Loader, Split
from .modes import eval_mode
from .train import Callback, Trainer

RULE = ("phase lengths in proportion to the variance-normalised MSE at the start (nmse), after one epoch each, "
        "shallow to deep")
"""The one rule from a difficulty table to a curriculum, as `curriculum_from_table` applies it."""


def normalised_mse(student_features: torch.Tensor, teacher_features: torch.Tensor) -> float:
    """mean((s - t)^2) / var(t): the direct MSE in units of the teacher features' variance (scale-free)."""
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"Features of shapes {tuple(student_features.shape)} and {tuple(teacher_features.shape)} "
                         "differ; difficulty by MSE needs aligned layers (prune the teacher to the student's widths "
                         "first).")
    return float(((student_features - teacher_features) ** 2).mean() / teacher_features.var().clamp_min(1e-12))


def start_gap(teacher: nn.Module, student: nn.Module, pairs: Sequence[Pair], x: torch.Tensor) -> list[dict[str, float]]:
    """The start-of-training measures of each pair on probe inputs `x`, as the models are now:
    {"nmse": variance-normalised MSE, "one_minus_cka": 1 - linear CKA}."""
    t_feats = features(teacher, x, [t for t, _ in pairs])
    s_feats = features(student, x, [s for _, s in pairs])
    return [{"nmse": normalised_mse(s_feats[s], t_feats[t]),
             "one_minus_cka": 1.0 - linear_cka(t_feats[t].flatten(1), s_feats[s].flatten(1))} for t, s in pairs]


def steps_to_fraction(steps: Sequence[float], losses: Sequence[float], fraction: float) -> float | None:
    """First (linearly interpolated) step at which `losses` fall to `fraction` of `losses[0]`; None if they never
    do within the measured steps (censored: only "at least steps[-1]" is known).

    >>> steps_to_fraction([0, 10, 20], [10.0, 6.0, 2.0], 0.5)
    12.5
    """
    if len(steps) != len(losses) or not losses:
        raise ValueError(f"steps and losses must be equally long and non-empty, got {len(steps)} and {len(losses)}.")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}.")
    goal = fraction * losses[0]
    for i in range(1, len(losses)):
        if losses[i] <= goal:
            s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
            return float(s1 if l0 == l1 else s0 + (s1 - s0) * (l0 - goal) / (l0 - l1))
    return None


class _HeldOutLoss(Callback):
    """Measures the distillation objective on fixed held-out inputs every `every` steps (and at the start)."""

    def __init__(self, x: torch.Tensor, every: int) -> None:
        self.x, self.every = x, every
        self.steps: list[int] = []
        self.losses: list[float] = []

    def measure(self, trainer: Trainer) -> None:
        model = trainer.model
        with eval_mode(model), torch.no_grad():
            terms = trainer.objective(model, self.x.to(trainer.device), torch.zeros(len(self.x), dtype=torch.long), 0)
        self.steps.append(trainer.step)
        self.losses.append(float(sum(terms.values())))

    def on_train_start(self, trainer: Trainer) -> None:
        self.measure(trainer)

    def on_batch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.step % self.every == 0:
            self.measure(trainer)


def distil_alone(teacher: nn.Module, student: nn.Module, pair: Pair, train: Split, probe_x: torch.Tensor,
                 epochs: int = 1, lr: float = 1e-3, batch_size: int = 128, evals: int = 40,
                 seed: int = 0) -> dict[str, list[float]]:
    """Distil one layer pair alone (direct MSE, Adam) into a copy of `student` for `epochs` passes over `train`;
    the held-out loss curve. Returns {"step": [...], "loss": [...]}: the MSE on `probe_x` before the first step
    and then about `evals` times, evenly spaced. `student` itself is not changed."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if evals < 1:
        raise ValueError(f"evals must be >= 1 (held-out measurements), got {evals}.")
    curriculum = Curriculum((Phase(pair[0], pair[1], "mse", start=0, epochs=epochs),), None, epochs)
    model = copy.deepcopy(student)
    objective = CurriculumObjective(curriculum, teacher, model, example=probe_x[:4])
    loader = Loader(train, batch_size, seed=seed)
    probe = _HeldOutLoss(probe_x, max(1, len(loader) * epochs // evals))
    Trainer(model, objective=objective, lr=lr, callbacks=[probe], progress=False, seed=seed,
            device="cpu").fit(loader, epochs)
    return {"step": [float(s) for s in probe.steps], "loss": probe.losses}


def difficulty_table(teacher: nn.Module, student: nn.Module, pairs: Sequence[Pair], train: Split,
                     probe_x: torch.Tensor, epochs: int = 1, fraction: float = 0.5, batch_size: int = 128,
                     **distil_kwargs: Any) -> dict[str, Any]:
    """One row per pair: `nmse` and `one_minus_cka` at the start (on `probe_x`), and `steps` until the pair's loss,
    distilled alone for `epochs` passes over `train`, reaches `fraction` of its start on the held-out `probe_x`
    (None with "censored": True when the probe ended first), plus the loss curve. JSON-ready."""
    gaps = start_gap(teacher, student, pairs, probe_x)
    rows = []
    for (t, s), gap in zip(pairs, gaps):
        curve = distil_alone(teacher, student, (t, s), train, probe_x, epochs, batch_size=batch_size, **distil_kwargs)
        rows.append({"teacher": t, "student": s, **gap, "curve": curve})
    probe_steps = epochs * len(Loader(train, batch_size))
    return at_budget({"fraction": fraction, "probe_steps": probe_steps, "batch_size": batch_size, "rows": rows},
                     probe_steps)


def at_budget(table: dict[str, Any], steps: int) -> dict[str, Any]:
    """The table a probe of only `steps` steps would have produced: the curves cut at `steps`, each row's `steps`
    measured on the cut curve (censored at `steps` when not reached there). The start measures do not change."""
    if not 1 <= steps <= table["probe_steps"]:
        raise ValueError(f"steps must lie in 1..{table['probe_steps']} (the probe's length), got {steps}.")
    rows = []
    for row in table["rows"]:
        keep = [i for i, s in enumerate(row["curve"]["step"]) if s <= steps]
        curve = {k: [v[i] for i in keep] for k, v in row["curve"].items()}
        reached = steps_to_fraction(curve["step"], curve["loss"], table["fraction"])
        rows.append({**row, "curve": curve, "steps": reached, "censored": reached is None})
    return {**table, "probe_steps": steps, "rows": rows}


def steps_label(row: dict[str, Any]) -> str:
    """A row's steps as read: the number, or ">= n" when censored (n = the last step its probe measured)."""
    return f">= {row['curve']['step'][-1]:.0f}" if row["censored"] else f"{row['steps']:.0f}"


def table_text(table: dict[str, Any]) -> str:
    """The difficulty table as aligned text, censored steps as ">= n"."""
    steps_title = f"steps to {table['fraction']:.0%} (batch {table['batch_size']})"
    lines = [f"{'pair':18s} {'nMSE':>6s} {'1 - CKA':>8s}   {steps_title}"]
    for row in table["rows"]:
        lines.append(f"{row['teacher'] + ' -> ' + row['student']:18s} {row['nmse']:6.3f} {row['one_minus_cka']:8.3f}   "
                     f"{steps_label(row)}")
    return "\n".join(lines)


def curriculum_from_table(table: dict[str, Any], budget: int, final: Term | None, total_epochs: int,
                          **kwargs: Any) -> Curriculum:
    """The rule (`RULE`): `Curriculum.from_difficulty` with the table's `nmse` column as the scores. The censored
    `steps` column never enters it."""
    pairs = [(row["teacher"], row["student"]) for row in table["rows"]]
    return Curriculum.from_difficulty(pairs, [row["nmse"] for row in table["rows"]], budget, final, total_epochs,
                                      **kwargs)


@torch.no_grad()
def layer_difficulty(teacher: nn.Module, student: nn.Module, pairs: Sequence[Pair], x: torch.Tensor) -> list[float]:
    """The rule's measure, `nmse`, per pair on inputs `x` (the table's first column, without the rest): what a run
    that builds its curriculum on the fly passes to `Curriculum.from_difficulty`."""
    t_feats = features(teacher, x, [t for t, _ in pairs])
    s_feats = features(student, x, [s for _, s in pairs])
    out = []
    for t, s in pairs:
        try:
            out.append(normalised_mse(s_feats[s], t_feats[t]))
        except ValueError as exc:
            raise ValueError(f"{t} -> {s}: {exc}") from exc
    return out
