"""Curriculum comparisons: train one student per schedule from the same initialisation and record
per-term loss curves and retrieval mAP. `ComparisonLab` caches a comparison and browses it (notebook 06)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
from torch import nn

from ..cache import cached
from ..curriculum import Curriculum
from ..data import Loader, Split
from ..metrics import evaluate_retrieval
from ..objective import CurriculumObjective
from ..train import Callback, Trainer
from ..viz.common import Explorer
from ..viz.curriculum import ComparisonView, CurriculumEditor


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


class _Progress(Callback):
    """Reports 'schedule i/n, epoch e/E' to `report` after every epoch (a button's run shows it moving)."""

    def __init__(self, report: Callable[[str], None], label: str, total: int) -> None:
        self.report, self.label, self.total = report, label, total

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.report(f"{self.label}: epoch {trainer.epoch}/{self.total}")


def compare_curricula(curricula: Mapping[str, Curriculum], teacher: nn.Module,
                      make_student: Callable[[], nn.Module], train: Split, test: Split, top_k: int = 100,
                      report: Callable[[str], None] | None = None, **train_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Train one student per curriculum (each from `make_student()`, so seed it for the same init) and
    evaluate retrieval (queries = `test`, database = `train`, penultimate features). JSON-ready. `report`
    receives a line of progress after every epoch."""
    out = {}
    for i, (name, curriculum) in enumerate(curricula.items(), 1):
        student = make_student()
        progress = [_Progress(report, f"training {name!r} ({i}/{len(curricula)})", curriculum.total_epochs)] \
            if report is not None else []
        curves = train_with_curriculum(curriculum, teacher, student, train, callbacks=progress, **train_kwargs)
        out[name] = {"curriculum": curriculum.to_dict(), "epochs": curves,
                     "retrieval": evaluate_retrieval(student, test, train, top_k=top_k,
                                                         device=train_kwargs.get("device"))}
    return out


class ComparisonLab(Explorer):
    """Schedules compared once and cached (`results/precomputed/curriculum-compare-*.json`), browsed in a
    `ComparisonView`, with a button that reruns them and one that trains and adds the editor's schedule.

    `setup` records everything the runs depend on besides the schedules (it names the cache file) and
    must hold `optimizer_state`, the policy every schedule is trained with. The editor's schedule is trained
    with the editor's own optimizer policy, which is part of its cache key. A fresh run never replaces the
    committed comparison (see `cache.cached`); both buttons show their progress in `status`.
    """

    def __init__(self, schedules: Mapping[str, Curriculum], teacher: nn.Module, make_student: Callable[[], nn.Module],
                 train: Split, test: Split, setup: Mapping[str, Any], editor: CurriculumEditor | None = None) -> None:
        if "optimizer_state" not in setup:
            raise ValueError("setup must record the optimizer_state policy the schedules are trained with, "
                             "e.g. setup={..., 'optimizer_state': 'epoch'}.")
        self.setup, self.editor = dict(setup), editor
        self.status = widgets.HTML()
        self._run = lambda curricula, policy=self.setup["optimizer_state"]: compare_curricula(
            curricula, teacher, make_student, train, test, report=self._report, optimizer_state=policy)
        self._params = {**self.setup, "schedules": {k: c.to_dict() for k, c in schedules.items()}}
        self._schedules = dict(schedules)
        self.view = ComparisonView(cached("curriculum-compare", self._params, lambda: self._run(self._schedules)))
        self.rerun = widgets.Button(description="fresh run of all", icon="refresh",
                                    layout=widgets.Layout(width="auto"))
        self.rerun.on_click(lambda _: self.refresh())
        self.add_mine = widgets.Button(description="train and add my schedule", icon="plus",
                                       layout=widgets.Layout(width="auto"), disabled=editor is None)
        self.add_mine.on_click(lambda _: self.add_editor_schedule())

    def _report(self, line: str) -> None:
        self.status.value = line

    def refresh(self) -> None:
        """Train every schedule again and show the fresh runs beside the stored ones ('... (fresh)'); the
        stored comparison is kept as it is."""
        fresh = cached("curriculum-compare", self._params, lambda: self._run(self._schedules), refresh=True)
        for name, result in fresh.items():
            self.view.add(f"{name} (fresh)", result)
        self._report(f"fresh run done: {len(fresh)} schedule(s) added as '... (fresh)'")

    def add_editor_schedule(self) -> None:
        """Train the editor's current schedule with the editor's optimizer policy (cached by both) and add it
        to the view, named after the policy."""
        if self.editor is None:
            raise ValueError("This comparison has no editor: pass editor=CurriculumEditor(...).")
        user, policy = self.editor.curriculum, self.editor.optimizer_state.value
        key = {**self.setup, "optimizer_state": policy, "schedule": user.to_dict()}
        result = cached("curriculum-user", key, lambda: self._run({"my schedule": user}, policy))["my schedule"]
        self.view.add(f"my schedule ({policy})", result)
        self._report(f"added 'my schedule ({policy})'")

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.rerun, self.add_mine, self.status]), self.view.widget])
