"""A distillation curriculum as data, and the training objective that runs it.

A `Curriculum` is an ordered list of `Phase`s, each "distil teacher layer X into student
layer Y with loss L and weight w, from epoch `start` for `epochs` epochs", plus a `final`
term (usually PKT on the embeddings) that runs from the end of the last phase to the end
of training, and the epoch at which the critical learning period ends. Epochs count from 0.

    >>> c = Curriculum.paper([("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")],
    ...                      final=Term("act_fc1", "act_fc1", "pkt"), total_epochs=20, critical_end=12)
    >>> [(p.student, p.start, p.epochs) for p in c.phases]      # layer k for a + k epochs, a = 2
    [('stage1', 0, 3), ('stage2', 3, 4), ('stage3', 7, 5)]
    >>> [t.key for t in c.active_terms(7)], [t.key for t in c.active_terms(12)]
    (['mse/stage3'], ['pkt/act_fc1'])

Constructors: `Curriculum.paper` (the paper's a + k rule), `Curriculum.from_difficulty`
(longer phases for harder layers within an epoch budget), `Curriculum.all_at_once` (the
no-curriculum control) and the plain constructor (by hand). A curriculum checks itself on
construction and `check_models` checks it against a teacher and a student. `to_json` /
`from_json` round-trip it.

`objective.CurriculumObjective` plugs a curriculum into `train.Trainer` as its objective.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .losses import LOSSES, DistillLoss, make_loss
from .taps import OUTPUT, features, get_module


Pair = tuple[str, str]
TeacherFeatures = Callable[[torch.Tensor, Sequence[str]], Mapping[str, torch.Tensor]]
"""Returns the teacher's (detached) features at the given layer paths for a batch `x`."""


class CurriculumError(ValueError):
    """A curriculum that cannot be run; the message lists every problem and how to fix it."""


@dataclass(frozen=True)
class Term:
    """One distillation term: teacher layer -> student layer, with a loss name, weight and loss params."""

    teacher: str
    student: str
    loss: str = "mse"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The name this term is logged under, e.g. 'mse/stage2'."""
        return f"{self.loss}/{self.student}"


@dataclass(frozen=True)
class Phase(Term):
    """A term active during epochs [start, start + epochs)."""

    start: int = 0
    epochs: int = 1

    @property
    def end(self) -> int:
        return self.start + self.epochs

    def active(self, epoch: int) -> bool:
        return self.start <= epoch < self.end

    def term(self) -> Term:
        return Term(self.teacher, self.student, self.loss, self.weight, dict(self.params))


@dataclass(frozen=True)
class Curriculum:
    """Ordered phases, a final term for the rest of training, and the critical period.

    `final_start` defaults to the end of the last phase. With `enforce_critical=True` every
    phase must end by `critical_end`; otherwise `critical_end` is informative (plots shade it,
    `outside_critical()` lists the phases that run past it).
    """

    phases: tuple[Phase, ...]
    final: Term | None
    total_epochs: int
    critical_end: int | None = None
    enforce_critical: bool = False
    final_start: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        problems = self.problems()
        if problems:
            raise CurriculumError("This curriculum cannot run:\n" + "\n".join(f"  - {p}" for p in problems))

    # -- questions -------------------------------------------------------------------------
    @property
    def final_begins(self) -> int:
        """Epoch at which the final term starts."""
        if self.final_start is not None:
            return self.final_start
        return max((p.end for p in self.phases), default=0)

    def active_terms(self, epoch: int) -> list[Term]:
        """The terms (with their weights) active at `epoch`, phases first in order, then the final term."""
        terms = [p.term() for p in self.phases if p.active(epoch)]
        if self.final is not None and self.final_begins <= epoch < self.total_epochs:
            terms.append(self.final)
        return terms

    def phase_starts(self) -> list[int]:
        """Epochs at which the set of active terms changes (where a 'phase' optimizer policy resets)."""
        keys = [[t.key for t in self.active_terms(e)] for e in range(self.total_epochs)]
        return [e for e in range(1, self.total_epochs) if keys[e] != keys[e - 1]]

    def outside_critical(self) -> list[Phase]:
        """Phases that end after the critical period (empty when no critical period is set)."""
        if self.critical_end is None:
            return []
        return [p for p in self.phases if p.end > self.critical_end]

    def layers(self, role: str) -> list[str]:
        """Distinct layer paths of 'teacher' or 'student' used by any term, in order of use."""
        return list(dict.fromkeys(getattr(t, role) for t in self.terms()))

    def _describe(self, i: int, p: Phase) -> str:
        return f"phase {i + 1} ({p.teacher} -> {p.student}, {p.loss})"

    def problems(self) -> list[str]:
        """Everything wrong with this curriculum, each with what to change (empty when it is valid)."""
        out: list[str] = []
        if not isinstance(self.total_epochs, int) or self.total_epochs <= 0:
            out.append(f"total_epochs is {self.total_epochs!r}: it must be a positive integer.")
            return out
        terms: list[tuple[str, Term]] = [(self._describe(i, p), p) for i, p in enumerate(self.phases)]
        if self.final is not None:
            terms.append((f"final term ({self.final.teacher} -> {self.final.student}, {self.final.loss})", self.final))
        for name, t in terms:
            if not isinstance(t.weight, (int, float)) or isinstance(t.weight, bool) or t.weight != t.weight:
                out.append(f"{name}: weight {t.weight!r} is not a number; use a number >= 0.")
                continue
            if not isinstance(t.params, Mapping):
                out.append(f"{name}: params {t.params!r} must be an object of loss parameters.")
            if t.loss not in LOSSES:
                out.append(f"{name}: unknown loss {t.loss!r}; use one of {', '.join(LOSSES)}.")
            if t.weight < 0:
                out.append(f"{name}: weight {t.weight} is negative; use a weight >= 0 (0 switches the term off).")
        for i, p in enumerate(self.phases):
            name = self._describe(i, p)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (p.start, p.epochs)):
                out.append(f"{name}: start {p.start!r} and length {p.epochs!r} must be whole numbers of epochs.")
                continue
            if p.epochs <= 0:
                out.append(f"{name}: length {p.epochs} epochs; give it at least 1 epoch or remove the phase.")
            if p.start < 0:
                out.append(f"{name}: starts at epoch {p.start}; epochs count from 0.")
            if p.end > self.total_epochs:
                out.append(f"{name}: ends at epoch {p.end} but training has {self.total_epochs} epochs; "
                           f"shorten it, start it earlier or raise total_epochs.")
            if self.enforce_critical and self.critical_end is not None and p.end > self.critical_end:
                out.append(f"{name}: ends at epoch {p.end}, after the critical period ends (epoch "
                           f"{self.critical_end}); shorten it, start it earlier, or set enforce_critical=False.")
        if self.critical_end is not None and not 0 < self.critical_end <= self.total_epochs:
            out.append(f"critical_end is {self.critical_end}; it must lie in 1..total_epochs ({self.total_epochs}).")
        if self.final is not None and self.final_begins >= self.total_epochs:
            out.append(f"the final term starts at epoch {self.final_begins} and never runs in {self.total_epochs} "
                       "epochs; raise total_epochs or shorten the phases.")
        if self.final_start is not None and self.final_start < 0:
            out.append(f"final_start is {self.final_start}; epochs count from 0.")
        if out:
            return out
        for epoch in range(self.total_epochs):
            keys = [t.key for t in self.active_terms(epoch)]
            if not keys:
                out.append(f"epoch {epoch} has no active term, so the student would not train; close the gap "
                           "by moving a phase or the final term, or lower total_epochs.")
                break
            if len(set(keys)) < len(keys):
                out.append(f"epoch {epoch}: two active terms share the name {sorted(keys)}; combine them "
                           "into one phase with the summed weight.")
                break
        return out

    def check_models(self, teacher: nn.Module, student: nn.Module, x: torch.Tensor | None = None) -> None:
        """Raise CurriculumError if a layer path is unknown; with an example batch `x` (>= 2 samples),
        also check that every term's loss accepts the two models' features at those layers."""
        out: list[str] = []
        for role, model in (("teacher", teacher), ("student", student)):
            for path in self.layers(role):
                if path == OUTPUT:
                    continue
                try:
                    get_module(model, path)
                except KeyError as exc:
                    out.append(f"{role} layer: {exc.args[0]}")
        if out:
            raise CurriculumError("The curriculum does not fit these models:\n" + "\n".join(f"  - {p}" for p in out))
        if x is not None:
            self.build_losses(features(student, x, self.layers("student")), features(teacher, x, self.layers("teacher")))

    def terms(self) -> list[Term]:
        """Every term of the curriculum (the phases' terms, then the final term)."""
        return [p.term() for p in self.phases] + ([self.final] if self.final is not None else [])

    def build_losses(self, student_feats: Mapping[str, torch.Tensor],
                     teacher_feats: Mapping[str, torch.Tensor]) -> dict[str, DistillLoss]:
        """One loss module per distinct (layers, loss, params), sized for and tried on the example features;
        raises CurriculumError listing every term whose loss rejects them."""
        losses: dict[str, DistillLoss] = {}
        out: list[str] = []
        for term in self.terms():
            spec = term_spec(term)
            if spec in losses:
                continue
            s, t = student_feats[term.student], teacher_feats[term.teacher]
            try:
                losses[spec] = make_loss(term.loss, s, t, **term.params)
                losses[spec](s, t)
            except (ValueError, TypeError) as exc:
                out.append(f"{term.teacher} -> {term.student}: {exc}")
        if out:
            raise CurriculumError("The curriculum does not fit these models:\n" + "\n".join(f"  - {p}" for p in out))
        return losses

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def sequential(cls, pairs: Sequence[Pair], lengths: Sequence[int], final: Term | None, total_epochs: int,
                   loss: str = "mse", weight: float = 1.0, start: int = 0, **kwargs: Any) -> "Curriculum":
        """Phases one after another from `start`, in the order of `pairs`, with the given lengths."""
        if len(pairs) != len(lengths):
            raise CurriculumError(f"{len(pairs)} layer pairs but {len(lengths)} lengths; give one length per pair.")
        phases, epoch = [], start
        for (t, s), n in zip(pairs, lengths):
            phases.append(Phase(t, s, loss, weight, start=epoch, epochs=int(n)))
            epoch += int(n)
        return cls(tuple(phases), final, total_epochs, **kwargs)

    @classmethod
    def paper(cls, pairs: Sequence[Pair], final: Term | None, total_epochs: int, a: int = 2,
              **kwargs: Any) -> "Curriculum":
        """The paper's rule: layer k (k = 1, 2, ...; shallow first) alone for a + k epochs, one after another."""
        return cls.sequential(pairs, [a + k for k in range(1, len(pairs) + 1)], final, total_epochs, **kwargs)

    @classmethod
    def from_difficulty(cls, pairs: Sequence[Pair], difficulty: Sequence[float], budget: int, final: Term | None,
                        total_epochs: int, min_epochs: int = 1, **kwargs: Any) -> "Curriculum":
        """Split `budget` epochs over the layers in proportion to their measured difficulty (each gets at least
        `min_epochs`), shallow to deep, one at a time. See `allocate_epochs`."""
        return cls.sequential(pairs, allocate_epochs(difficulty, budget, min_epochs), final, total_epochs, **kwargs)

    @classmethod
    def all_at_once(cls, pairs: Sequence[Pair], epochs: int, final: Term | None, total_epochs: int,
                    loss: str = "mse", weight: float = 1.0, **kwargs: Any) -> "Curriculum":
        """The no-curriculum control: every layer pair distilled together for the first `epochs` epochs."""
        phases = tuple(Phase(t, s, loss, weight, start=0, epochs=epochs) for t, s in pairs)
        return cls(phases, final, total_epochs, **kwargs)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"phases": [asdict(p) for p in self.phases],
                "final": asdict(self.final) if self.final is not None else None,
                "total_epochs": self.total_epochs, "critical_end": self.critical_end,
                "enforce_critical": self.enforce_critical, "final_start": self.final_start}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Curriculum":
        """Rebuild a curriculum from `to_dict`'s output; CurriculumError says what is malformed."""
        if not isinstance(data, Mapping):
            raise CurriculumError(f"A curriculum must be an object with 'phases' and 'total_epochs', not a "
                                  f"{type(data).__name__}.")
        known = {"phases", "final", "total_epochs", "critical_end", "enforce_critical", "final_start"}
        unknown = set(data) - known
        if unknown or "phases" not in data or "total_epochs" not in data:
            raise CurriculumError(f"Not a curriculum: unknown keys {sorted(unknown)}, needs 'phases' and "
                                  f"'total_epochs' (keys allowed: {sorted(known)}).")
        kwargs = {k: data[k] for k in known - {"phases", "final"} if k in data}
        phases = data["phases"]
        if not isinstance(phases, (list, tuple)) or not all(isinstance(p, Mapping) for p in phases):
            raise CurriculumError(f"'phases' must be a list of objects (teacher, student, loss, weight, start, "
                                  f"epochs), not {phases!r}.")
        final = data.get("final")
        if final is not None and not isinstance(final, Mapping):
            raise CurriculumError(f"'final' must be an object (teacher, student, loss, weight) or null, not {final!r}.")
        try:
            return cls(tuple(Phase(**p) for p in phases), Term(**final) if final is not None else None, **kwargs)
        except TypeError as exc:
            raise CurriculumError(f"A phase or the final term has wrong or missing fields ({exc}); phases take "
                                  "teacher, student, loss, weight, params, start, epochs.") from exc

    def to_json(self, path: Path | str | None = None) -> str:
        """The curriculum as JSON text; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Curriculum":
        """Read a curriculum from JSON text or from a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith(("{", "[", "\"")):
            try:
                text = Path(text_or_path).read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise CurriculumError(f"{text_or_path} is not a UTF-8 text file ({exc.reason} at byte {exc.start}): "
                                      "a curriculum file is JSON text, as written by Curriculum.to_json.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CurriculumError(f"The curriculum is not valid JSON: {exc}.") from exc
        return cls.from_dict(data)


def allocate_epochs(difficulty: Sequence[float], budget: int, min_epochs: int = 1) -> list[int]:
    """Integer epochs per layer summing to `budget`, proportional to `difficulty` beyond a floor of `min_epochs`.

    >>> allocate_epochs([3, 4, 5], 12)        # the paper's a + k lengths are proportional to 3, 4, 5
    [3, 4, 5]
    """
    scores = [float(d) for d in difficulty]
    if not scores:
        raise CurriculumError("No difficulty scores: give one score per layer pair.")
    if any(d < 0 or d != d for d in scores):
        raise CurriculumError(f"Difficulty scores must be >= 0, got {scores}.")
    if min_epochs < 1 or budget < min_epochs * len(scores):
        raise CurriculumError(f"A budget of {budget} epochs cannot give {len(scores)} layers at least "
                              f"{min_epochs} epoch(s) each (min_epochs >= 1); raise the budget to "
                              f"{max(min_epochs, 1) * len(scores)} or more.")
    spare = budget - min_epochs * len(scores)
    total = sum(scores)
    shares = [spare * d / total for d in scores] if total > 0 else [spare / len(scores)] * len(scores)
    extra = [int(s) for s in shares]
    # largest remainders get the leftover epochs (ties: the deeper layer, which is usually harder)
    order = sorted(range(len(scores)), key=lambda i: (shares[i] - extra[i], i), reverse=True)
    for i in order[: spare - sum(extra)]:
        extra[i] += 1
    return [min_epochs + e for e in extra]


def stage_pairs(teacher: nn.Module, student: nn.Module) -> list[Pair]:
    """Teacher stage k -> student stage k, shallow to deep (models expose `stage_paths`)."""
    for role, model in (("teacher", teacher), ("student", student)):
        if not hasattr(model, "stage_paths"):
            raise TypeError(f"The {role} ({type(model).__name__}) has no `stage_paths`; list the layer pairs by hand.")
    t, s = list(teacher.stage_paths), list(student.stage_paths)
    if len(t) != len(s):
        raise ValueError(f"The teacher has {len(t)} stages and the student {len(s)}; list the layer pairs by hand.")
    return list(zip(t, s))


def embedding_term(teacher: nn.Module, student: nn.Module, loss: str = "pkt", weight: float = 1.0) -> Term:
    """The usual final term: `loss` (PKT by default) between the two models' embeddings."""
    return Term(teacher.embedding_path, student.embedding_path, loss, weight)


def term_spec(term: Term) -> str:
    """Terms that share layers, loss and params share one loss module (weights may differ)."""
    return json.dumps([term.teacher, term.student, term.loss, term.params], sort_keys=True)
