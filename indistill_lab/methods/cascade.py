"""Cascaded teaching assistants (Miles & Mikolajczyk 2020; docs/cascade.md): the two phases and the methods.

Phase 1 trains every model of a `Cascade` jointly with the hierarchical loss while the masks learn
(the shared Trainer, the cascade as its model). Phase 2 exports the student to a physically smaller
network and fine-tunes it alone, its mask now fixed, from frozen snapshots of the larger models: its
teacher is swapped for the next larger one whenever the student beats it on a probe set.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .. import zoo
from ..cascade import Cascade, CascadeLoss, cascade_levels, maskable_layers
from ..data import Loader
from ..modes import eval_mode
from ..pruning import PruneReport
from ..taps import Taps
from ..train import Callback, CosineLR, History, Trainer
from .base import Context, Method, Trained, register


@dataclass(frozen=True)
class CascadeSchedule:
    """Epochs of the two phases, the optimiser (the kit's Adam by default; the paper: SGD Nesterov), and the
    last `low_epochs` of phase 2 at `lr_low`, or with `cosine` a cosine decay from `lr` over each phase
    (the paper's; `low_epochs` then unused). `record_every` > 0 snapshots the masks every that many steps."""

    joint_epochs: int
    student_epochs: int
    lr: float = 1e-3
    lr_low: float = 1e-4
    low_epochs: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    record_every: int = 0
    cosine: bool = False

    def __post_init__(self) -> None:
        if self.joint_epochs < 1 or self.student_epochs < 0:
            raise ValueError(f"Need joint_epochs >= 1 and student_epochs >= 0, got {self.joint_epochs} and "
                             f"{self.student_epochs}.")


class MaskRecorder(Callback):
    """Snapshots of every model's mask (lists of 0/1 over `cascade.layers`): at the start, every `every`
    steps (0: never) and at each epoch's end (once per step), with the step and epoch they were taken at."""

    def __init__(self, cascade: Cascade, every: int = 0) -> None:
        self.cascade, self.every = cascade, every
        self.snapshots: list[dict[str, Any]] = []

    def record(self, trainer: Trainer) -> None:
        self.snapshots.append({"step": trainer.step, "epoch": trainer.epoch,
                               "masks": [self.cascade.mask(i).int().tolist() for i in range(len(self.cascade))]})

    def on_train_start(self, trainer: Trainer) -> None:
        self.record(trainer)

    def on_batch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.every and trainer.step % self.every == 0:
            self.record(trainer)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.snapshots[-1]["step"] != trainer.step:
            self.record(trainer)


class StudentObjective(nn.Module):
    """Phase 2: the exported student against `teachers[current]` (frozen networks, masked, full width)
    with the cascade's loss. `kept` gives the student's kept channels per hint site (in the full network's
    numbering), `teacher_kept` each teacher's (None: all); hints compare the channels both keep."""

    def __init__(self, teachers: Sequence[nn.Module], loss: CascadeLoss, kept: dict[str, list[int]],
                 teacher_kept: Sequence[dict[str, list[int]] | None] | None = None) -> None:
        super().__init__()
        self.teachers = nn.ModuleList([t.eval().requires_grad_(False) for t in teachers])
        self.loss, self.current = loss, 0
        mine = {p: k for p, k in kept.items() if p in loss.hint_paths}
        self.pairs = [{p: _shared_channels(k, None if tk is None else tk[p]) for p, k in mine.items()}
                      for tk in (teacher_kept or [None] * len(teachers))]

    def forward(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        teacher, pairs = self.teachers[self.current], self.pairs[self.current]
        with torch.no_grad(), Taps(teacher, list(pairs), detach=True) as t_taps:
            t_logits = teacher(x)
        with Taps(student, list(pairs)) as s_taps:
            logits = student(x)
        s_hints = {p: s_taps[p].index_select(1, s.to(x.device)) for p, (s, _) in pairs.items()}
        t_hints = {p: t_taps[p].index_select(1, t.to(x.device)) for p, (_, t) in pairs.items()}
        return {"L0": self.loss.model_loss(logits, y, t_logits, s_hints, t_hints)}


def _shared_channels(student: list[int], teacher: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in the exported student's channels, and the teacher's channel indices, of the filters
    both keep (`student`, `teacher`: kept indices of the full network; None: the teacher keeps all)."""
    both = [(pos, c) for pos, c in enumerate(student) if teacher is None or c in set(teacher)]
    return torch.tensor([p for p, _ in both], dtype=torch.long), torch.tensor([c for _, c in both], dtype=torch.long)


class TeacherSwap(Callback):
    """After each phase-2 epoch: when the student's probe accuracy beats its current teacher's, move on to
    the next larger teacher. `events` lists (epoch, new teacher index)."""

    def __init__(self, objective: StudentObjective, probe: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.objective, self.probe = objective, probe
        self.teacher_acc = [self._accuracy(t) for t in objective.teachers]
        self.events: list[tuple[int, int]] = []

    def _accuracy(self, model: nn.Module) -> float:
        x, y = self.probe
        device = next(model.parameters()).device
        with torch.no_grad(), eval_mode(model):
            pred = torch.cat([model(b.to(device)).argmax(1).cpu() for b in x.split(1000)])
        return float((pred == y).float().mean())

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        obj = self.objective
        logs.update(probe_acc=self._accuracy(trainer.model), teacher=obj.current)
        if logs["probe_acc"] > self.teacher_acc[obj.current] and obj.current < len(obj.teachers) - 1:
            obj.current += 1
            self.events.append((trainer.epoch, obj.current))


@dataclass
class CascadeResult:
    """The exported student and what happened on the way."""

    student: nn.Module
    report: PruneReport
    cascade: Cascade
    history: History
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    swaps: list[tuple[int, int]] = field(default_factory=list)


def phase_lr(schedule: CascadeSchedule, epochs: int, steps_per_epoch: int) -> tuple[dict[int, float], list[Callback]]:
    """The Trainer's `lr_schedule` and callbacks for a phase of `epochs`: a cosine decay over the phase, or
    `lr` with the last `low_epochs` at `lr_low`."""
    if schedule.cosine:
        cos = CosineLR(schedule.lr, max(1, epochs * steps_per_epoch))
        return cos.epoch_starts(steps_per_epoch, epochs), [cos]
    return {epochs - schedule.low_epochs: schedule.lr_low}, []


def train_cascade(network: nn.Module, levels: Sequence[float], loader: Loader, schedule: CascadeSchedule,
                  probe: tuple[torch.Tensor, torch.Tensor], seed: int = 0, callbacks: Iterable[Callback] = (),
                  progress: bool = False, checkpoint_dir: Path | str | None = None,
                  hierarchical: bool = True, mask_options: dict[str, Any] | None = None,
                  loss_options: dict[str, Any] | None = None) -> CascadeResult:
    """Both phases on a copy of the pretrained `network`; raises RuntimeError if a phase stopped early
    (non-finite loss, Ctrl-C). Checkpoints go to `checkpoint_dir`/joint.pt and student.pt when given.
    `mask_options` (gate, normalise, nested) go to `Cascade`, `loss_options` (alpha, beta, temperature,
    t_squared) to `CascadeLoss`."""
    callbacks = list(callbacks)
    ckpt = (lambda name: Path(checkpoint_dir) / name) if checkpoint_dir is not None else (lambda name: None)
    torch.manual_seed(seed)
    cascade = Cascade(network, levels, hierarchical=hierarchical, **(mask_options or {}))
    loss = CascadeLoss(network, cascade.hint_paths, **(loss_options or {}))
    recorder = MaskRecorder(cascade, schedule.record_every)
    opt = dict(optimizer=schedule.optimizer, lr=schedule.lr, weight_decay=schedule.weight_decay, seed=seed,
               progress=progress)
    lrs, extra = phase_lr(schedule, schedule.joint_epochs, len(loader))
    joint = Trainer(cascade, loss, callbacks=[recorder, *extra, *callbacks], checkpoint=ckpt("joint.pt"),
                    lr_schedule=lrs if schedule.cosine else None, **opt)
    joint.resume()
    joint.fit(loader, schedule.joint_epochs)
    if joint.history.stopped:
        raise RuntimeError(f"cascade: training stopped ({joint.history.stopped}).")
    cascade.cpu()
    student, report = cascade.export(0)
    student.train().requires_grad_(True)
    teachers = [cascade.member(j) for j in range(1, len(cascade))] + [copy.deepcopy(loss.top)]
    def sites(i: int) -> dict[str, list[int]]:
        return {cascade.sites[p]: k for p, k in cascade.kept(i).items()}
    objective = StudentObjective(teachers, loss, sites(0), [sites(j) for j in range(1, len(cascade))] + [None])
    swap = TeacherSwap(objective, probe)
    lrs, extra = phase_lr(schedule, schedule.student_epochs, len(loader))
    alone = Trainer(student, objective, callbacks=[swap, *extra, *callbacks], checkpoint=ckpt("student.pt"),
                    lr_schedule=lrs, **opt)
    alone.fit(loader, schedule.student_epochs)
    if alone.history.stopped:
        raise RuntimeError(f"cascade: training stopped ({alone.history.stopped}).")
    epochs = ([{**e, "phase": "joint"} for e in joint.history.epochs]
              + [{**e, "phase": "student"} for e in alone.history.epochs])
    return CascadeResult(student.cpu().eval(), report, cascade, History(epochs), recorder.snapshots, swap.events)


def student_level(network: nn.Module, student: nn.Module) -> float:
    """The pruned fraction of `network`'s maskable filters (`maskable_layers`) that leaves as many as `student`
    has at the same module paths: the student sets the cascade's filter budget."""
    layers = maskable_layers(network)
    mods, smods = dict(network.named_modules()), dict(student.named_modules())
    missing = [p for p in layers if not isinstance(smods.get(p), nn.Conv2d)]
    if missing:
        raise ValueError(f"The cascade prunes {type(network).__name__}'s maskable convs {layers} to the student's "
                         f"filter count there, but the student has no conv at {missing}: give a student with the "
                         "pruned network's module paths (e.g. prune_to_widths of it).")
    total = sum(mods[p].out_channels for p in layers)
    kept = sum(smods[p].out_channels for p in layers)
    if not 0 < kept < total:
        raise ValueError(f"The student keeps {kept} of the {total} filters of {type(network).__name__}'s maskable "
                         f"convs {layers}: the cascade needs a student with fewer filters there (and at least one).")
    return 1.0 - kept / total


def pretrained_network(ctx: Context, method: str) -> nn.Module:
    """The network the cascade prunes: for the kit's preset student, the zoo's cross-entropy auxiliary when the
    configuration uses the zoo; otherwise (and always for a student of the user's) the context's auxiliary."""
    if ctx.student is None and ctx.cfg.use_zoo:
        entry = zoo.read_manifest()["models"].get(ctx.cfg.auxiliary)
        if entry is not None and entry.get("dataset") == ctx.cfg.dataset:
            return zoo.load(ctx.cfg.auxiliary)
    return copy.deepcopy(ctx.require_sources(method).aux)


class CascadedTA(Method):
    """The cascade with `assistants` TAs on the auxiliary (`pretrained_network`), the student's level set by the
    student's filter count at the auxiliary's maskable convs: the kit's preset student, or the user's
    (`Context.student`, which must share the auxiliary's module paths). The student it returns is the auxiliary
    pruned by the learned masks; convs tied by residual additions keep the auxiliary's widths."""

    assistants = 1
    own_student = True  # the student sets the budget; the trained student is the auxiliary's pruned copy

    def source_layers(self, ctx: Context) -> list[str]:
        return []  # learns from its own cascade, no cached targets

    def train(self, ctx: Context, seed: int = 0, callbacks: Iterable[Callback] = (),
              progress: bool = False, epochs: int | None = None) -> Trained:
        network = pretrained_network(ctx, self.name)
        try:
            level = student_level(network, ctx.new_student())
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from None
        cfg = ctx.cfg
        student_epochs = max(1, cfg.epochs // 3)  # two thirds joint, one third the student alone
        joint_epochs = max(1, cfg.epochs - student_epochs)
        low = min(student_epochs - 1, max(0, cfg.epochs - cfg.lr_drop_epoch))
        if epochs is not None:  # the first `epochs` of the same schedule (lr drop at the same phase-2 epoch)
            drop_at = student_epochs - low
            joint_epochs, student_epochs = max(1, min(joint_epochs, epochs)), max(0, epochs - joint_epochs)
            low = max(0, student_epochs - drop_at)
        schedule = CascadeSchedule(joint_epochs, student_epochs, lr=cfg.lr, lr_low=cfg.lr_low, low_epochs=low)
        probe = (ctx.train.x[-2000:], ctx.train.y[-2000:])
        try:
            result = train_cascade(network, cascade_levels(level, self.assistants), ctx.loader_for(seed), schedule,
                                   probe, seed, callbacks, progress)
        except RuntimeError as err:
            raise RuntimeError(f"{self.name}: {err}") from None
        return Trained(result.student, result.history, True,
                       extras={"report": result.report, "swaps": result.swaps, "level": level})


@register
class CascadeOneTA(CascadedTA):
    name = "cascade-ta"
    description = ("cascaded channel pruning of the CE auxiliary to the student's filter count, one weight-sharing "
                   "teaching assistant, hierarchical self-distillation, then the exported student fine-tuned")


@register
class CascadeNoTA(CascadedTA):
    name = "cascade-no-ta"
    description = "the cascade without assistants: the pruned student learns straight from the unpruned model"
    assistants = 0
