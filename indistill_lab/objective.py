"""A curriculum as a training objective: `CurriculumObjective(curriculum, teacher, student)` is the
`(model, x, y, epoch) -> {term: loss}` callable the `Trainer` runs, computing only the terms active
at each epoch, with the teacher's targets from a forward pass or a feature cache."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .curriculum import LABELS, Curriculum, TeacherFeatures, Term, term_spec
from .taps import OUTPUT, features
from .losses import DistillLoss
from .models import model_input_shape
from .taps import Taps


class CurriculumObjective(nn.Module):
    """Runs a `Curriculum` as a `Trainer` objective: `(model, x, y, epoch) -> {term key: weighted loss}`.

    Each step the teacher's targets come from `teacher_features(x, paths)` (default: one forward
    pass of the teacher in eval mode under no_grad; pass a cache there instead), the student runs
    once with its taps, and only the terms active at `epoch` are computed. Losses with parameters
    (FitNets connectors) are built up front from one probe batch, so `trainable_parameters()`
    hands them to the optimizer. The teacher is not a submodule: it is neither trained nor saved
    in checkpoints.
    """

    def __init__(self, curriculum: Curriculum, teacher: nn.Module, student: nn.Module,
                 example: torch.Tensor | None = None, teacher_features: TeacherFeatures | None = None) -> None:
        super().__init__()
        self.curriculum = curriculum
        self.__dict__["teacher"] = teacher  # plain attribute: not a submodule
        self._teacher_features = teacher_features
        if example is None:
            example = _probe_input(student)
        curriculum.check_models(teacher, student)
        teacher_paths = curriculum.layers("teacher")
        built = curriculum.build_losses(features(student, example, curriculum.layers("student")),
                                        self.teacher_targets(example, teacher_paths) if teacher_paths else {})
        self._slot = {spec: f"term{i}" for i, spec in enumerate(built)}
        self.losses = nn.ModuleDict({self._slot[spec]: loss for spec, loss in built.items()})

    def phase_starts(self) -> list[int]:
        """The curriculum's phase boundaries (read by the Trainer's optimizer-state policy)."""
        return self.curriculum.phase_starts()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the losses themselves (FitNets connectors); empty for parameter-free losses."""
        return list(self.losses.parameters())

    def loss_for(self, term: Term) -> DistillLoss:
        """The loss module that computes `term`."""
        return self.losses[self._slot[term_spec(term)]]

    def teacher_targets(self, x: torch.Tensor, paths: Sequence[str]) -> Mapping[str, torch.Tensor]:
        """The teacher's detached features at `paths` for batch `x` (from the plugged-in source if any)."""
        if self._teacher_features is not None:
            return self._teacher_features(x, paths)
        teacher = self.teacher
        if next(teacher.parameters(), x).device != x.device:
            teacher.to(x.device)
        return features(teacher, x, paths)

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        terms = self.curriculum.active_terms(epoch)
        paths = list(dict.fromkeys(t.teacher for t in terms if t.teacher != LABELS))
        targets = {**(self.teacher_targets(x, paths) if paths else {}), LABELS: y}
        student_paths = list(dict.fromkeys(t.student for t in terms))
        with Taps(model, [p for p in student_paths if p != OUTPUT]) as taps:
            out = model(x)
        feats = dict(taps.outputs)
        feats[OUTPUT] = out
        return {t.key: t.weight * self.loss_for(t)(feats[t.student], targets[t.teacher]) for t in terms}


def _probe_input(model: nn.Module) -> torch.Tensor:
    return torch.zeros(2, *model_input_shape(model, "pass `example`, a small batch (>= 2 samples) of real inputs"))
