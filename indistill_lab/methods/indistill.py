"""InDistill and its variants (docs/methods.md, section 1).

All share the recipe: distil the student's stages directly (MSE, no encoder) from targets at the
student's widths, shallow to deep inside the critical period, then a final-layer KD. They differ
in the schedule (paper's a + k, all at once, measured difficulty), in where the targets come from
(the coherent pruned auxiliary; its kept channels of the unpruned one; the reference code's
isolated pruned convs; the pruned auxiliary after a PKT fine-tune) and in the final term.
"""
from __future__ import annotations

from torch import nn

from ..adapter import spec_of
from ..curriculum import Curriculum, Term, paper_epochs, stage_pairs
from ..difficulty import layer_difficulty
from .base import Context, Method, probe_batch, register
from .baselines import kd_term, pkt_term


class InDistill(Method):
    """The paper's curriculum from the source `targets_from`, then `final` (PKT by default)."""

    targets_from = "pruned"

    def final(self, student: nn.Module, ctx: Context) -> Term:
        return pkt_term(student, ctx)

    def pairs(self, student: nn.Module) -> list[tuple[str, str]]:
        return [(f"{self.targets_from}.{p}", p) for p in spec_of(student).stages]

    def budget(self, student: nn.Module, ctx: Context) -> int:
        """Epochs of the layer-by-layer phase: the paper's a + k summed over the student's stages."""
        return paper_epochs(len(spec_of(student).stages), ctx.cfg.a)

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        cfg = ctx.cfg
        return Curriculum.paper(self.pairs(student), self.final(student, ctx), cfg.epochs, a=cfg.a,
                                critical_end=self.budget(student, ctx))


@register
class InDistillAllAtOnce(InDistill):
    name = "indistill-all-at-once"
    description = "direct MSE on all pruned-auxiliary layers together, then PKT (no curriculum)"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        L = self.budget(student, ctx)
        return Curriculum.all_at_once(self.pairs(student), L, self.final(student, ctx), ctx.cfg.epochs, critical_end=L)


@register
class InDistillPaper(InDistill):
    name = "indistill-paper"
    description = "InDistill: direct MSE layer by layer for a+k epochs, shallow to deep, then PKT"


@register
class InDistillDifficulty(InDistill):
    name = "indistill-difficulty"
    description = "InDistill with epochs per layer from measured difficulty (same budget), then PKT"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        """Difficulty = the untrained student's relative MSE to the pruned auxiliary on real inputs
        (`difficulty.layer_difficulty`); the paper's intermediate budget is split accordingly."""
        pruned = ctx.require_sources(self.name).pruned
        difficulty = layer_difficulty(pruned, student, stage_pairs(pruned, student), probe_batch(ctx))
        L = self.budget(student, ctx)
        return Curriculum.from_difficulty(self.pairs(student), difficulty, L, self.final(student, ctx),
                                          ctx.cfg.epochs, critical_end=L)


@register
class InDistillKeptChannels(InDistill):
    name = "indistill-kept-channels"
    description = ("InDistill (paper curriculum) with targets = the unpruned PKT auxiliary's features at the "
                   "kept channels, then PKT")
    targets_from = "kept"


@register
class InDistillReference(InDistill):
    name = "indistill-reference"
    description = ("InDistill (paper curriculum) with the reference code's targets: each pruned conv on the "
                   "unpruned auxiliary's previous stage, BN with beta 0 on batch statistics, then PKT")
    targets_from = "reference"

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        if ctx.sources is not None and self.targets_from not in ctx.sources._modules:
            raise ValueError(f"{self.name} needs the reference code's targets (source 'reference'), which exist only "
                             "for the paper's ConvNets (one conv per stage); these sources have "
                             f"{', '.join(ctx.sources._modules)}. Use indistill-kept-channels for other models.")
        return super().curriculum(student, ctx)


@register
class InDistillFinetuned(InDistill):
    name = "indistill-finetuned"
    description = "InDistill (paper curriculum) from the coherent pruned auxiliary after a short PKT fine-tune, then PKT"
    targets_from = "tuned"


@register
class InDistillKD(InDistill):
    name = "indistill-kd"
    description = "InDistill as a warm-up (the WACV framing): the paper's layer phases, then Hinton KD instead of PKT"

    def final(self, student: nn.Module, ctx: Context) -> Term:
        return kd_term(student, ctx)
