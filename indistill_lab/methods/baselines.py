"""The baselines InDistill is compared with: cross-entropy, Hinton KD, PKT, FitNets (docs/methods.md, 1)."""
from __future__ import annotations

from torch import nn

from ..adapter import spec_of
from ..curriculum import Curriculum, Term, paper_epochs
from .base import Context, Method, register


def kd_term(student: nn.Module, ctx: Context) -> Term:
    """Hinton KD from the teacher's logits (its classifier layer) at the configured temperature."""
    return Term(f"teacher.{ctx.source_spec('teacher').classifier}", spec_of(student).classifier, "kd",
                params={"temperature": ctx.cfg.kd_temperature})


def pkt_term(student: nn.Module, ctx: Context) -> Term:
    """PKT from the PKT auxiliary's embedding to the student's embedding."""
    return Term(f"aux.{ctx.source_spec('aux').embedding}", spec_of(student).embedding, "pkt")


@register
class StudentCE(Method):
    name = "student-ce"
    description = "student trained with cross-entropy only"


@register
class HintonKD(Method):
    name = "hinton-kd"
    description = "Hinton KD from the teacher's logits at the run's kd_temperature (4 by default), all epochs"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        return Curriculum((), kd_term(student, ctx), ctx.cfg.epochs)


@register
class PKT(Method):
    name = "pkt"
    description = "PKT on the final (embedding) layer only, from the PKT auxiliary, all epochs"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        return Curriculum((), pkt_term(student, ctx), ctx.cfg.epochs)


@register
class FitNets(Method):
    name = "fitnets"
    description = "FitNets hints through 1x1 connectors from the unpruned PKT auxiliary, paper schedule, then PKT"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        cfg = ctx.cfg
        stages = spec_of(student).stages
        return Curriculum.paper([(f"aux.{p}", p) for p in stages], pkt_term(student, ctx), cfg.epochs,
                                a=cfg.a, loss="fitnets", critical_end=paper_epochs(len(stages), cfg.a))
