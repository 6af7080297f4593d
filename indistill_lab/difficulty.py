"""Per-layer distillation difficulty: how far apart two aligned layers start and how long one takes to learn.

For each aligned (teacher layer, student layer) pair, with the student at its initialisation:

- `1 - CKA`: how dissimilar the two representations are (linear CKA, `alignment.linear_cka`);
- `initial MSE`: the direct feature loss InDistill will minimise, before any training;
- `epochs to fraction`: distil *that layer alone* (direct MSE, nothing else) and count the
  epochs until the held-out loss falls to `fraction` of its initial value (interpolated
  between measurements; capped at the budget when it never gets there).

The three columns form one table (`difficulty_table`); any column can feed
`Curriculum.from_difficulty`, which gives harder layers longer phases.

    table = difficulty_table(pruned_teacher, student, pairs, train, probe_x)
    [row["epochs_to_fraction"] for row in table["rows"]]
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import nn

from .alignment import linear_cka
from .curriculum import Curriculum, Pair, Phase
from .taps import features
from .objective import CurriculumObjective
from .data import Loader, Split
from .losses import FeatureMSE
from .modes import eval_mode
from .train import Callback, Trainer

COLUMNS = ("one_minus_cka", "initial_mse", "epochs_to_fraction")
"""The difficulty measures of one layer pair, as named in `difficulty_table` rows."""


def start_gap(teacher: nn.Module, student: nn.Module, pairs: Sequence[Pair], x: torch.Tensor) -> list[dict[str, float]]:
    """1 - linear CKA and the direct MSE between each pair's features on probe inputs `x`, as the models are now."""
    t_feats = features(teacher, x, [t for t, _ in pairs])
    s_feats = features(student, x, [s for _, s in pairs])
    mse = FeatureMSE()
    return [{"one_minus_cka": 1.0 - linear_cka(t_feats[t].flatten(1), s_feats[s].flatten(1)),
             "initial_mse": float(mse(s_feats[s], t_feats[t]))} for t, s in pairs]


def epochs_to_fraction(epochs: Sequence[float], losses: Sequence[float], fraction: float) -> float | None:
    """First (linearly interpolated) epoch at which `losses` fall to `fraction` of `losses[0]`; None if never.

    >>> epochs_to_fraction([0, 1, 2], [10.0, 6.0, 2.0], 0.5)
    1.25
    """
    if len(epochs) != len(losses) or not losses:
        raise ValueError(f"epochs and losses must be equally long and non-empty, got {len(epochs)} and {len(losses)}.")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}.")
    goal = fraction * losses[0]
    for i in range(1, len(losses)):
        if losses[i] <= goal:
            e0, e1, l0, l1 = epochs[i - 1], epochs[i], losses[i - 1], losses[i]
            return float(e1 if l0 == l1 else e0 + (e1 - e0) * (l0 - goal) / (l0 - l1))
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
                 epochs: int, lr: float = 1e-3, batch_size: int = 128, evals_per_epoch: int = 4,
                 seed: int = 0) -> dict[str, list[float]]:
    """Distil one layer pair alone (direct MSE) into a copy of `student`; the held-out loss curve.

    Returns {"epoch": [...], "loss": [...]} with the loss on `probe_x` measured `evals_per_epoch`
    times per epoch, starting before the first step. `student` itself is not changed.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    curriculum = Curriculum((Phase(pair[0], pair[1], "mse", start=0, epochs=epochs),), None, epochs)
    model = copy.deepcopy(student)
    objective = CurriculumObjective(curriculum, teacher, model, example=probe_x[:4])
    loader = Loader(train, batch_size, seed=seed)
    every = max(1, len(loader) // evals_per_epoch)
    probe = _HeldOutLoss(probe_x, every)
    Trainer(model, objective=objective, lr=lr, callbacks=[probe], progress=False, seed=seed,
            device="cpu").fit(loader, epochs)
    return {"epoch": [s / len(loader) for s in probe.steps], "loss": probe.losses}


def difficulty_table(teacher: nn.Module, student: nn.Module, pairs: Sequence[Pair], train: Split,
                     probe_x: torch.Tensor, epochs: int = 3, fraction: float = 0.5, **distil_kwargs: Any
                     ) -> dict[str, Any]:
    """One row per pair: 1 - CKA and initial MSE at the start, epochs until the single-layer loss reaches
    `fraction` of its start (capped at `epochs` when not reached, with "reached": False), and the curve.

    `train` is the probe budget for the single-layer runs; `probe_x` are held-out inputs. JSON-ready.
    """
    gaps = start_gap(teacher, student, pairs, probe_x)
    rows = []
    for (t, s), gap in zip(pairs, gaps):
        curve = distil_alone(teacher, student, (t, s), train, probe_x, epochs, **distil_kwargs)
        reached = epochs_to_fraction(curve["epoch"], curve["loss"], fraction)
        rows.append({"teacher": t, "student": s, **gap,
                     "epochs_to_fraction": reached if reached is not None else float(epochs),
                     "reached": reached is not None, "curve": curve})
    return {"fraction": fraction, "epochs": epochs, "rows": rows}


def curriculum_from_table(table: dict[str, Any], column: str, budget: int, final: Any, total_epochs: int,
                          **kwargs: Any) -> Curriculum:
    """`Curriculum.from_difficulty` with one column of a `difficulty_table` as the scores."""
    if column not in COLUMNS:
        raise KeyError(f"Unknown difficulty column {column!r}; use one of {', '.join(COLUMNS)}.")
    scores = [row[column] for row in table["rows"]]
    if any(not math.isfinite(v) for v in scores):
        raise ValueError(f"Column {column!r} has non-finite scores {scores}; measure again with a larger budget.")
    pairs = [(row["teacher"], row["student"]) for row in table["rows"]]
    return Curriculum.from_difficulty(pairs, scores, budget, final, total_epochs, **kwargs)


DIFFICULTY_RUN: dict[str, Any] = {"dataset": "fashion-mnist", "budgets": [256, 1024, 4096], "probe": 256,
                                  "epochs": 3, "fraction": 0.5, "criterion": "L1", "lr": 1e-3, "seed": 0}
"""The precomputed tables of notebook 05: zoo auxiliary pruned to the student's widths (the InDistill
teacher-side model) -> a fresh student, stage k to stage k, one table per probe budget (training images)."""


def cached_difficulty(refresh: bool = False, **overrides: Any) -> dict[str, Any]:
    """{"budgets": [...], "tables": {budget: difficulty_table}} for `DIFFICULTY_RUN` (plus `overrides`),
    stored in results/precomputed/difficulty-*.json."""
    from . import zoo
    from .cache import cached
    from .curriculum import stage_pairs
    from .data import load_split
    from .models import build_model
    from .criteria import criteria
    from .pruning import prune_to_widths

    params = {**DIFFICULTY_RUN, **overrides}

    def compute() -> dict[str, Any]:
        torch.manual_seed(params["seed"])
        student = build_model("student", params["dataset"])
        teacher, _ = prune_to_widths(zoo.load("auxiliary"), student, criteria()[params["criterion"]])
        probe_x = load_split(params["dataset"], "test", quick=False).subset(params["probe"], seed=params["seed"]).x
        train = load_split(params["dataset"], "train", quick=False)
        pairs = stage_pairs(teacher, student)
        tables = {str(b): difficulty_table(teacher.eval(), student, pairs, train.subset(b, seed=params["seed"]),
                                           probe_x, params["epochs"], params["fraction"], lr=params["lr"],
                                           seed=params["seed"]) for b in params["budgets"]}
        return {"budgets": params["budgets"], "tables": tables}

    return cached("difficulty", params, compute, refresh=refresh)


@torch.no_grad()
def layer_difficulty(teacher: nn.Module, student: nn.Module, pairs: Sequence[Pair], x: torch.Tensor) -> list[float]:
    """A cheap difficulty measure per pair: the untrained student's MSE to the teacher at that layer,
    relative to the teacher features' variance (1 = as far as a constant guess; scale-free across layers)."""
    t_feats = features(teacher, x, [t for t, _ in pairs])
    s_feats = features(student, x, [s for _, s in pairs])
    out = []
    for t, s in pairs:
        tf, sf = t_feats[t], s_feats[s]
        if tf.shape != sf.shape:
            raise ValueError(f"{t} -> {s}: shapes {tuple(tf.shape)} and {tuple(sf.shape)} differ; difficulty by "
                             "MSE needs aligned layers (prune the teacher to the student's widths first).")
        out.append(float(((sf - tf) ** 2).mean() / tf.var().clamp_min(1e-12)))
    return out
