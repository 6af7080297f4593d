"""Lightweight self-distillation, DRG and DSR (docs/self_distillation.md; docs/methods.md section 3).

No teacher: the student's own shallow head (DRG) and its own previous mini-batch (DSR) are the
sources. These methods own their loop (the objective keeps state across batches and trains a head),
but run under the same `RunConfig` as every other method: same student, loader, epochs, Adam lr
schedule and optimizer-state policy, so their rows sit in the same tables. `optimizer="sgd"` gives
the paper's optimiser instead (SGD 0.1, momentum 0.9, wd 5e-4, lr x0.1 at 30/60/80% of the epochs,
the paper's 60/120/160 of 200).
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterable, Mapping, Sequence

from ..config import seed_everything
from ..self_distillation import SelfDistillation
from ..train import Callback, Trainer
from .base import Context, Method, Trained, config_optimizer, register

SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "milestones": (0.3, 0.6, 0.8), "factor": 0.1}
"""The paper's optimiser (CIFAR-100: 200 epochs, drops at 60/120/160), milestones as fractions of the run."""


def paper_sgd(epochs: int) -> dict[str, Any]:
    """Trainer options of the paper's optimiser for a run of `epochs` (momentum kept for the whole run); every
    curriculum and self-distillation method takes them, `get_method("hinton-kd").train(ctx, seed,
    optimizer=paper_sgd(cfg.epochs))`."""
    return {"optimizer": "momentum", "lr": SGD["lr"], "weight_decay": SGD["weight_decay"],
            "lr_schedule": sgd_schedule(epochs), "optimizer_state": "run"}


def sgd_schedule(epochs: int) -> dict[int, float]:
    """The paper's step decay scaled to `epochs`: epoch -> lr (x0.1 at each milestone)."""
    lr, schedule = SGD["lr"], {}
    for fraction in SGD["milestones"]:
        lr *= SGD["factor"]
        schedule[max(1, round(fraction * epochs))] = round(lr, 12)
    return schedule


class SelfKD(Method):
    """CE + (DRG: head CE + reverse guidance) + (DSR), heads on `stages` (default: the deepest stage
    at least 4x4, e.g. 'stage2' of the kit's ConvNets). With neither term it is plain CE."""

    name = "self-kd"
    description = "self-distillation, configurable (not registered)"
    own_student = True  # trains `ctx.new_student()`: the preset, or a model of the user's (Context.student)
    drg: ClassVar[bool] = True
    dsr: ClassVar[bool] = True

    def __init__(self, optimizer: str = "adam", stages: Sequence[str] | None = None,
                 drg: bool | None = None, dsr: bool | None = None) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' (the run configuration's) or 'sgd' (the paper's), got {optimizer!r}.")
        self.optimizer, self.stages = optimizer, stages
        self.use_drg = self.drg if drg is None else drg
        self.use_dsr = self.dsr if dsr is None else dsr

    def train(self, ctx: Context, seed: int = 0, callbacks: Iterable[Callback] = (),
              progress: bool = False, epochs: int | None = None,
              optimizer: Mapping[str, Any] | None = None) -> Trained:
        """A fresh student (seeded; the configuration's preset or `ctx.student`'s model) trained with the
        self-distillation objective, under this recipe's optimiser or the Trainer options `optimizer` (as for
        every method); the returned student is the backbone alone (the heads stay in `extras['objective']`)."""
        cfg = ctx.cfg
        seed_everything(seed)
        student = ctx.new_student()
        loader = ctx.loader_for(seed)
        objective = SelfDistillation(student, ctx.train.x[:2], self.stages, drg=self.use_drg, dsr=self.use_dsr,
                                     temperature=cfg.kd_temperature)
        if optimizer is None:
            optimizer = paper_sgd(cfg.epochs) if self.optimizer == "sgd" else config_optimizer(cfg)
        trainer = Trainer(student, objective, seed=seed, callbacks=callbacks, progress=progress, **optimizer)
        trainer.fit(loader, cfg.epochs if epochs is None else epochs)
        if trainer.history.stopped:
            raise RuntimeError(f"{self.name}: training stopped ({trainer.history.stopped}).")
        return Trained(student.cpu().eval(), trainer.history, trains_head=True,
                       extras={"objective": objective.cpu(), "optimizer": trainer.optimizer})


@register
class SelfDRG(SelfKD):
    name = "self-drg"
    description = "self-distillation: CE + an attention head's CE + reverse guidance (head teaches output, alpha 0.2, T 4)"
    drg, dsr = True, False


@register
class SelfDSR(SelfKD):
    name = "self-dsr"
    description = "self-distillation: CE + shape-wise regularisation (sorted logits vs previous batch, beta 1, T 4)"
    drg, dsr = False, True


@register
class SelfDRGDSR(SelfKD):
    name = "self-drg-dsr"
    description = "self-distillation: CE + head CE + DRG + DSR (the paper's full loss), no teacher"
    drg, dsr = True, True
