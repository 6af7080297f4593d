"""What a method is, and the registry that lists them.

A method trains one student for one seed from a `Context` (the run configuration, the data and
the knowledge sources). Most methods only say *what* to distil: they return a `Curriculum` and
the shared `Trainer` runs it with the configuration's optimizer-state policy. A method that
changes the loop itself (several models at once, state across batches) overrides `train`.

    @register
    class MyMethod(Method):
        name = "my-method"
        description = "what it does, in one line"
        def curriculum(self, student, ctx): return Curriculum((), Term("aux.act_fc1", "act_fc1", "pkt"), ctx.cfg.epochs)

Adding a method is adding one file to `indistill_lab/methods/`: every module there is imported
when the package is, so its `@register` runs and the CLI, `reproduce` and the notebooks see it.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn

from ..adapter import ModelSpec, spec_of
from ..config import seed_everything
from ..curriculum import Curriculum
from ..objective import CurriculumObjective
from ..data import Split
from ..feature_cache import FeatureCache, IndexedLoader
from ..pipeline import RunConfig, build, make_loader, targets
from ..sources import Sources
from ..taps import OUTPUT
from ..train import Callback, History, Trainer, cross_entropy


@dataclass
class Context:
    """What a method trains from: configuration, training data, knowledge sources and (optionally) a
    loader and a feature cache shared across methods of one reproduce.

    `student` builds a fresh student (random init) for models the configuration cannot name (any
    `nn.Module` with a description, `adapter.with_spec`); by default the configuration's student preset.
    """

    cfg: RunConfig
    train: Split
    sources: Sources | None = None
    loader: IndexedLoader | None = None
    cache: FeatureCache | None = None
    checkpoint: Path | None = None
    """Where the Trainer keeps the run's last finished epoch, so a killed run resumes there (None: nowhere)."""
    student: Callable[[], nn.Module] | None = None

    def new_student(self) -> nn.Module:
        """A fresh student: `student()` when given, else the configuration's preset."""
        return self.student() if self.student is not None else build(self.cfg, "student")

    def source_spec(self, source: str) -> ModelSpec:
        """The description of the knowledge source `source` ('teacher' or 'aux'): of the model in `sources`,
        else of the configuration's preset for it (so a curriculum can be shown without sources)."""
        if self.sources is not None and source in self.sources._modules:
            return spec_of(self.sources._modules[source])
        presets = {"teacher": "teacher", "aux": "auxiliary"}
        if source not in presets:
            raise ValueError(f"No source {source!r} in this context: build it with sources that include it.")
        return spec_of(build(self.cfg, presets[source]))

    def loader_for(self, seed: int) -> IndexedLoader:
        """The shared loader when one was given, else the configuration's loader for `seed`."""
        return self.loader if self.loader is not None else make_loader(self.cfg, self.train, seed)

    def require_sources(self, method: str) -> Sources:
        if self.sources is None:
            raise ValueError(f"{method} learns from a teacher: build the context with sources, e.g. "
                             "Context(cfg, train, prepare(cfg).sources).")
        return self.sources


@dataclass
class Trained:
    """A method's result: the student to evaluate (backbone only), its history, its schedule, and
    method-specific objects in `extras` (a cascade's export report, self-distillation heads)."""

    student: nn.Module
    history: History
    trains_head: bool
    curriculum: Curriculum | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def phases(self) -> list[list[Any]]:
        """[student layer, start epoch, epochs] per curriculum phase (the results CSV's 'phases')."""
        return [] if self.curriculum is None else [[p.student, p.start, p.epochs] for p in self.curriculum.phases]


def config_optimizer(cfg: RunConfig) -> dict[str, Any]:
    """The Trainer options of a run configuration: Adam at `cfg.lr`, its lr schedule, its optimizer-state policy."""
    return {"lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "optimizer_state": cfg.optimizer_state}


class Method:
    """A training recipe for a student. Subclasses set `name` and `description` and override
    `curriculum` (distillation through the shared Trainer) or `train` (their own loop)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    own_student: ClassVar[bool] = False
    """Set True on a method whose own `train` builds its student with `ctx.new_student()`; a method that
    overrides `train` without it refuses a context with a student of the user's (it would train the preset)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("train")
        if own is None or cls.__dict__.get("own_student", False):
            return

        @functools.wraps(own)
        def train(self: "Method", ctx: Context, *args: Any, **kw: Any) -> Trained:
            if ctx.student is not None:
                raise ValueError(f"{self.name} trains the configuration's preset student in its own loop, so it "
                                 "cannot train a student of your own (Context.student) yet; use a curriculum method.")
            return own(self, ctx, *args, **kw)

        cls.train = train  # type: ignore[method-assign]

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum | None:
        """The distillation schedule, or None for cross-entropy alone."""
        return None

    def trains_head(self, curriculum: Curriculum | None, student: nn.Module | None = None) -> bool:
        """Whether the classifier (the student's, by its description) is trained (otherwise accuracy comes
        from a linear probe)."""
        heads = {"classifier", OUTPUT} | ({spec_of(student).classifier} if student is not None else set())
        return curriculum is None or any(t.student in heads for t in curriculum.terms())

    def source_layers(self, ctx: Context) -> list[str]:
        """Source layers this method reads (so a reproduce can cache every method's targets up front)."""
        c = self.curriculum(ctx.new_student(), ctx)
        return c.layers("teacher") if c is not None else []

    def train(self, ctx: Context, seed: int = 0, callbacks: Iterable[Callback] = (),
              progress: bool = False, epochs: int | None = None,
              optimizer: Mapping[str, Any] | None = None) -> Trained:
        """A fresh student (random init from `seed`) trained by the shared Trainer with this method's
        curriculum, the configuration's optimiser, lr schedule and optimizer-state policy (`config_optimizer`),
        or the Trainer options `optimizer` instead (e.g. `paper_sgd(epochs)`, so every row of a comparison has
        one optimiser). `epochs` stops early (the first epochs of the same schedule), e.g. to look at a phase
        switch."""
        seed_everything(seed)
        student = ctx.new_student()
        loader = ctx.loader_for(seed)
        curriculum = self.curriculum(student, ctx)
        if curriculum is None:
            objective: Any = cross_entropy
        else:
            sources = ctx.require_sources(self.name)
            objective = CurriculumObjective(curriculum, sources, student, example=ctx.train.x[:4],
                                            teacher_features=targets(ctx.cfg, sources, loader, ctx.cache, epochs))
        trainer = Trainer(student, objective, seed=seed, callbacks=callbacks, progress=progress,
                          checkpoint=ctx.checkpoint, **(config_optimizer(ctx.cfg) if optimizer is None else optimizer))
        trainer.resume()
        trainer.fit(loader, ctx.cfg.epochs if epochs is None else epochs)
        if trainer.history.stopped and not trainer.history.requested:
            raise RuntimeError(f"{self.name}: training stopped ({trainer.history.stopped}).")
        return Trained(student.cpu().eval(), trainer.history, self.trains_head(curriculum, student), curriculum)

    def identity(self) -> str:
        """10 hex digits that change when this method's recipe changes: the source of its classes (up to
        `Method`), their settings (class attributes) and the instance's parameters. A results table keys its rows by it, so an edited method (another
        temperature, another loss) is rerun, not silently reused. Code it shares with other methods
        (losses, the Trainer) is not included: rerun with --force after changing that."""
        classes = [c for c in type(self).__mro__ if issubclass(c, Method) and c is not Method]
        settings = {k: v for c in reversed(classes) for k, v in vars(c).items()
                    if not k.startswith("_") and not callable(v) and not isinstance(v, (classmethod, staticmethod,
                                                                                        property))}
        text = "".join(inspect.getsource(c) for c in classes) + json.dumps([settings, vars(self)], sort_keys=True,
                                                                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def __repr__(self) -> str:
        return f"<method {self.name}: {self.description}>"


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under `cls.name`."""
    if not cls.name or not cls.description:
        raise ValueError(f"{cls.__name__} needs a `name` and a one-line `description` to be registered.")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"Two methods are named {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}.")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every registered method, in registration order (baselines first)."""
    return list(_REGISTRY)


def describe() -> dict[str, str]:
    """Name -> one-line description of every registered method."""
    return {name: cls.description for name, cls in _REGISTRY.items()}


def get_method(name: str) -> Method:
    """The method registered under `name`; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown method {name!r}. Known: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]()


def check_names(names: Iterable[str]) -> list[str]:
    """`names` as a list, after checking that each is registered (one error lists every unknown one)."""
    names = list(names)
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise KeyError(f"Unknown method(s) {', '.join(unknown)}. Known: {', '.join(_REGISTRY)}.")
    return names


def probe_batch(ctx: Context) -> torch.Tensor:
    """A batch of real training inputs for measurements made before training (e.g. layer difficulty)."""
    return ctx.train.x[:512]
