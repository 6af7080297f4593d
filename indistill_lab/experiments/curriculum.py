"""Curriculum comparisons: train one student per schedule from the same initialisation and record
per-term loss curves and retrieval mAP (notebook 06 browses them with `viz.curriculum.ComparisonView`)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from torch import nn

from ..curriculum import Curriculum
from ..objective import CurriculumObjective
from ..data import Loader, Split
from ..metrics import evaluate_retrieval
from ..train import Callback, Trainer


class _EpochTerms(Callback):
    """Collects the per-epoch mean of every logged term (the trainer's epoch logs)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.epochs.append({k: float(v) for k, v in logs.items() if "/" in k or k == "loss"})


def train_with_curriculum(curriculum: Curriculum, teacher: nn.Module, student: nn.Module, train: Split,
                          batch_size: int = 128, lr: float = 1e-3, lr_schedule: Mapping[int, float] | None = None,
                          seed: int = 0, callbacks: Sequence[Callback] = (), progress: bool = False,
                          device: str | None = None, optimizer_state: str = "epoch") -> list[dict[str, float]]:
    """Train `student` (in place) with the curriculum's terms only (no cross-entropy, as in the paper);
    return the per-epoch mean of every term. Batches drop the remainder so PKT never sees one sample.
    `optimizer_state` is the Trainer's policy at phase boundaries (default: cleared each epoch, as the
    InDistill reference does)."""
    record = _EpochTerms()
    trainer = Trainer(student, objective=CurriculumObjective(curriculum, teacher, student, example=train.x[:2]),
                      lr=lr, lr_schedule=dict(lr_schedule or {}), callbacks=[record, *callbacks],
                      progress=progress, seed=seed, device=device,
                      optimizer_state=optimizer_state)
    trainer.fit(Loader(train, batch_size, shuffle=True, seed=seed, drop_last=True), curriculum.total_epochs)
    return record.epochs


def compare_curricula(curricula: Mapping[str, Curriculum], teacher: nn.Module,
                      make_student: Callable[[], nn.Module], train: Split, test: Split, top_k: int = 100,
                      **train_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Train one student per curriculum (each from `make_student()`, so seed it for the same init) and
    evaluate retrieval (queries = `test`, database = `train`, penultimate features). JSON-ready."""
    out = {}
    for name, curriculum in curricula.items():
        student = make_student()
        curves = train_with_curriculum(curriculum, teacher, student, train, **train_kwargs)
        out[name] = {"curriculum": curriculum.to_dict(), "epochs": curves,
                     "retrieval": evaluate_retrieval(student, test, train, top_k=top_k,
                                                         device=train_kwargs.get("device"))}
    return out
