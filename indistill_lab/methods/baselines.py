"""The baselines InDistill is compared with: cross-entropy, Hinton KD, PKT, FitNets (docs/methods.md, 1)."""
from __future__ import annotations

from torch import nn

from ..curriculum import Curriculum, Term
from .base import Context, Method, register


def kd_term(ctx: Context) -> Term:
    """Hinton KD from the teacher's logits at the configured temperature."""
    return Term("teacher.classifier", "classifier", "kd", params={"temperature": ctx.cfg.kd_temperature})


def pkt_term(student: nn.Module) -> Term:
    """PKT from the PKT auxiliary's embedding to the student's embedding."""
    return Term("aux.act_fc1", student.embedding_path, "pkt")


@register
class StudentCE(Method):
    name = "student-ce"
    description = "student trained with cross-entropy only"


@register
class HintonKD(Method):
    name = "hinton-kd"
    description = "Hinton KD from the teacher's logits at the run's kd_temperature (4 by default), all epochs"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        return Curriculum((), kd_term(ctx), ctx.cfg.epochs)


@register
class PKT(Method):
    name = "pkt"
    description = "PKT on the final (embedding) layer only, from the PKT auxiliary, all epochs"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        return Curriculum((), pkt_term(student), ctx.cfg.epochs)


@register
class FitNets(Method):
    name = "fitnets"
    description = "FitNets hints through 1x1 connectors from the unpruned PKT auxiliary, paper schedule, then PKT"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        cfg = ctx.cfg
        return Curriculum.paper([(f"aux.{p}", p) for p in student.stage_paths], pkt_term(student), cfg.epochs,
                                a=cfg.a, loss="fitnets", critical_end=cfg.intermediate_epochs)
