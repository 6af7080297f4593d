"""The shared stages of the InDistill pipeline and its run configuration (docs/methods.md, section 1).

    cfg      = RunConfig()                                       # everything a run depends on
    prep     = prepare(cfg)                                      # data, teacher, PKT auxiliary, pruned auxiliary
    prep.sources                                                 # one module: 'pruned.stage1', 'aux.act_fc1', ...

Each stage is a function so a notebook can show it: `load_teacher` (zoo checkpoint, or trained
with CE), `auxiliary_pkt` (PKT from the teacher's embedding, no CE), `prune_auxiliary` (a coherent
network at the student's widths). Methods (`indistill_lab.methods`) train students from `prep`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from . import zoo
from .adapter import spec_of
from .alignment import LayerMap, validate
from .config import HOME, quick_mode, seed_everything
from .criteria import make_criterion
from .curriculum import Curriculum, Term, paper_epochs, stage_pairs
from .objective import CurriculumObjective
from .data import QUICK_SIZES, TRAIN_SIZES, Loader, Split, crop_flip, dataset_info, load_split
from .feature_cache import FeatureCache, IndexedLoader
from .models import build_model
from .pruning import prune_to_widths
from .results import results_dir
from .sources import KeptChannels, ReferenceTargets, Sources
from .train import OPTIMIZER_STATE_POLICIES, Callback, Trainer

CACHE_DIR = HOME / "results" / "cache"
"""Where non-default auxiliaries are kept (git-ignored): a variant never writes into data/zoo."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on. `digest()` names the configuration in result files.

    Epoch counts are in loader epochs of `epoch_size` examples (None = a full pass). The lr is
    `lr` until `lr_drop_epoch`, then `lr_low` (the paper: 60 epochs at 1e-3, 10 at 1e-4).
    `optimizer_state` is what happens to Adam's state at curriculum boundaries, for every method of
    a comparison alike: "epoch" (cleared each epoch, the reference code's protocol), "phase"
    (cleared when the active loss terms change) or "run" (kept; the kit's first, misleading table).
    `finetune_epochs` is the PKT fine-tune of the coherent pruned auxiliary ('indistill-finetuned').
    """

    dataset: str = "fashion-mnist"
    teacher: str = "teacher"
    auxiliary: str = "auxiliary"
    student: str = "student"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 15
    epoch_size: int | None = 12_000
    a: int = 0
    lr: float = 1e-3
    lr_low: float = 1e-4
    lr_drop_epoch: int = 13
    batch_size: int = 128
    augment: bool = False
    optimizer_state: str = "epoch"
    kd_temperature: float = 4.0
    prune_criterion: str = "L1"
    aux_epochs: int = 3
    aux_epoch_size: int | None = 12_000
    """Examples per epoch of the PKT auxiliary's training, apart from the students' `epoch_size`, so a short
    student run reuses the auxiliary a long one trained."""
    finetune_epochs: int = 1
    teacher_epochs: int = 80
    train_size: int | None = None
    test_size: int | None = None
    cache: bool = True
    use_zoo: bool = True
    full_eval: bool | None = None
    """Score on the full protocol (queries = the test set, database and linear probe = the whole training set)?
    None (the default) decides by the run's length: full for a run that sees at least one pass over the training
    set, `eval_size` otherwise (`evaluation_size`); True opts a short run into the full protocol, False a long one
    out of it. A subset evaluation changes the digest, so its rows never share a table with full-protocol rows."""
    eval_size: int = 10_000
    """Database and probe examples of the small-run evaluation (a class-balanced `Split.subset` of the training
    set; the queries stay the test set at `test_size`)."""

    def __post_init__(self) -> None:
        if self.optimizer_state not in OPTIMIZER_STATE_POLICIES:
            raise ValueError(f"optimizer_state must be one of {', '.join(OPTIMIZER_STATE_POLICIES)}, "
                             f"got {self.optimizer_state!r}.")
        if self.lr <= 0 or self.lr_low <= 0:
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, lr_low={self.lr_low}.")
        if self.lr_drop_epoch < 0:
            raise ValueError(f"lr_drop_epoch must be >= 0 (the epoch from which lr_low is used), "
                             f"got {self.lr_drop_epoch}.")
        if self.a < 0:
            raise ValueError(f"a must be >= 0 (layer k is distilled for a + k epochs), got {self.a}.")
        if self.epochs <= self.intermediate_epochs:
            raise ValueError(f"epochs={self.epochs} leaves no epoch for the final term after the "
                             f"{self.intermediate_epochs} intermediate epochs of a={self.a}; raise epochs or lower a.")
        if isinstance(self.eval_size, bool) or not isinstance(self.eval_size, int) or self.eval_size < 1:
            raise ValueError(f"eval_size must be a positive number of training examples, got {self.eval_size!r}.")
        if self.augment and self.cache:
            raise ValueError("augment=True changes the teacher's targets every epoch, so they cannot be cached; "
                             "set cache=False with augment=True.")

    @property
    def intermediate_epochs(self) -> int:
        """Epochs of the paper's layer-by-layer phase for the presets' 3 stages: sum of a + k (`paper_epochs`)."""
        return paper_epochs(3, self.a)

    @property
    def lr_schedule(self) -> dict[int, float]:
        return {self.lr_drop_epoch: self.lr_low} if self.lr_drop_epoch < self.epochs else {}

    def is_short(self, train_size: int) -> bool:
        """Whether one run sees fewer examples than a training set of `train_size` holds (`short_run`)."""
        return short_run(self.epochs, self.epoch_size, train_size)

    def evaluation_size(self, train_size: int) -> int | None:
        """The database/probe size this run is scored with on a training set of `train_size`: None for the full
        protocol (the whole set), else `eval_size` (see `full_eval`)."""
        full = not self.is_short(train_size) if self.full_eval is None else self.full_eval
        return None if full or self.eval_size >= train_size else self.eval_size

    def digest(self, quick: bool | None = None) -> str:
        """A short hash of the configuration (seed excluded): rows with the same digest are comparable. It
        includes quick mode (`quick`, default: the current mode), which shrinks the data, and the evaluation
        subset when the run is not scored on the full protocol (`evaluation_size` of the preset's training set)."""
        quick = quick_mode() if quick is None else quick
        key = {**asdict(self), "quick": quick}
        if self.aux_epoch_size in (self.epoch_size, 12_000):  # as before the field existed: digests unchanged
            del key["aux_epoch_size"]
        del key["full_eval"], key["eval_size"]  # the full protocol, as before these fields: digests unchanged
        subset = self.evaluation_size(nominal_train_size(self, quick))
        if subset is not None:
            key["eval_size"] = subset
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    @classmethod
    def paper(cls, dataset: str = "fashion-mnist", **changes: Any) -> "RunConfig":
        """The paper's 70-epoch protocol: a = 2 (3, 4, 5 epochs), 60 epochs at 1e-3 then 10 at 1e-4, full passes."""
        return cls(**{"dataset": dataset, "epochs": 70, "epoch_size": None, "a": 2, "lr_drop_epoch": 60,
                      "aux_epochs": 70, "aux_epoch_size": None, **changes})

    @classmethod
    def cifar10_paper(cls, **changes: Any) -> "RunConfig":
        """The paper's CIFAR-10 setup (for a GPU): PreActResNet18 teacher trained 80 epochs with CE, the
        paper's exact auxiliary/student (padding 0 on 32x32x3), crop+flip, no cache (targets change)."""
        base = dict(dataset="cifar10", teacher="preact-resnet18", model_overrides={"padding": 0},
                    augment=True, cache=False, use_zoo=False)
        return cls.paper(**{**base, **changes})




def short_run(epochs: int, epoch_size: int | None, train_size: int) -> bool:
    """True when `epochs` loader epochs of `epoch_size` examples (None = a full pass) see fewer examples than
    the training set's `train_size`: such a run neither caches the whole set's targets (`targets`,
    `runs.shared_cache`) nor is scored on the full protocol by default (`RunConfig.evaluation_size`)."""
    return epochs * min(epoch_size or train_size, train_size) < train_size


def nominal_train_size(cfg: RunConfig, quick: bool | None = None) -> int:
    """The training set size `load_data(cfg)` gives, without loading it (the preset's size, quick mode's,
    `train_size`)."""
    quick = quick_mode() if quick is None else quick
    full = QUICK_SIZES["train"] if quick else TRAIN_SIZES[dataset_info(cfg.dataset).name]
    return min(full, cfg.train_size) if cfg.train_size is not None else full


def eval_train_split(cfg: RunConfig, train: Split) -> Split:
    """The training examples a run is scored against (retrieval database, linear probe): the whole `train` on
    the full protocol, else its class-balanced subset of `cfg.evaluation_size(len(train))`."""
    size = cfg.evaluation_size(len(train))
    return train if size is None else train.subset(size)


def load_data(cfg: RunConfig) -> tuple[Split, Split]:
    """(train, test) splits at the configured sizes (full splits unless sizes are set or quick mode)."""
    train, test = load_split(cfg.dataset, "train"), load_split(cfg.dataset, "test")
    if cfg.train_size is not None:
        train = train.subset(cfg.train_size)
    if cfg.test_size is not None:
        test = test.subset(cfg.test_size)
    return train, test


def make_loader(cfg: RunConfig, train: Split, seed: int) -> IndexedLoader:
    """The training loader every method uses: same batches for the same seed."""
    return IndexedLoader(train, cfg.batch_size, shuffle=True, seed=seed,
                         transform=crop_flip() if cfg.augment else None, epoch_size=cfg.epoch_size)


def build(cfg: RunConfig, role: str) -> nn.Module:
    """A fresh (random init) teacher, auxiliary or student for the configured dataset."""
    name = getattr(cfg, role)
    overrides = {} if name == "preact-resnet18" else dict(cfg.model_overrides)
    return build_model(name, cfg.dataset, **overrides)


def _zoo_has(cfg: RunConfig, name: str) -> bool:
    entry = zoo.read_manifest()["models"].get(name)
    return cfg.use_zoo and entry is not None and entry.get("dataset", cfg.dataset) == cfg.dataset


def load_teacher(cfg: RunConfig, train: Split | None = None, progress: bool = False) -> nn.Module:
    """The zoo's teacher when the config allows it; otherwise a teacher trained with CE (lr schedule as
    the paper: 1e-3, then 1e-4 for the last 30 of `teacher_epochs`)."""
    if _zoo_has(cfg, "teacher"):
        return zoo.load("teacher")
    if cfg.use_zoo and cfg.teacher in zoo.RECIPES:
        raise FileNotFoundError(f"The zoo has no {cfg.teacher!r} for {cfg.dataset}: restore data/zoo with git or "
                                f"run `python -m indistill_lab zoo build --only {cfg.teacher}` (or set use_zoo=False "
                                f"to train one here for {cfg.teacher_epochs} epochs).")
    seed_everything(0)
    model = build(cfg, "teacher")
    train = train if train is not None else load_data(cfg)[0]
    loader = Loader(train, cfg.batch_size, seed=0, transform=crop_flip() if cfg.augment else None)
    drop = max(cfg.teacher_epochs - 30, 1)
    Trainer(model, lr=cfg.lr, lr_schedule={drop: cfg.lr_low}, progress=progress).fit(loader, cfg.teacher_epochs)
    return model.cpu().eval()


def auxiliary_pkt_curriculum(teacher: nn.Module, auxiliary: nn.Module, epochs: int) -> Curriculum:
    """PKT only, teacher embedding -> auxiliary embedding, for every epoch (no cross-entropy)."""
    return Curriculum((), Term(f"teacher.{spec_of(teacher).embedding}", spec_of(auxiliary).embedding, "pkt"), epochs)


def train_auxiliary_pkt(teacher: nn.Module, cfg: RunConfig, train: Split, seed: int = 0,
                        callbacks: Iterable[Callback] = (), progress: bool = False,
                        start: nn.Module | None = None) -> nn.Module:
    """The auxiliary after PKT from the teacher's embedding (docs/methods.md, section 1, step 2). Starts from a copy
    of `start` when given (a model of your own), else from the zoo's cross-entropy auxiliary when there is one (the
    paper's order), else from random init."""
    seed_everything(seed)
    if start is not None:
        aux = copy.deepcopy(start).requires_grad_(True)
    else:
        aux = zoo.load("auxiliary") if _zoo_has(cfg, "auxiliary") else build(cfg, "auxiliary")
    sources = Sources(teacher=teacher)
    loader = make_loader(replace(cfg, epoch_size=cfg.aux_epoch_size), train, seed)
    objective = CurriculumObjective(auxiliary_pkt_curriculum(teacher, aux, cfg.aux_epochs), sources, aux,
                                    example=train.x[:2], teacher_features=targets(cfg, sources, loader,
                                                                                   epochs=cfg.aux_epochs))
    Trainer(aux, objective, lr=cfg.lr, seed=seed, callbacks=callbacks, progress=progress).fit(loader, cfg.aux_epochs)
    return aux.cpu().eval()


def aux_cache_dirs() -> list[Path]:
    """Where trained auxiliaries are cached: `cache/` in the results folder (results/quick/cache in quick
    mode, $INDISTILL_OUT/cache when set), then the repository's results/cache (the committed ones)."""
    return list(dict.fromkeys([results_dir() / "cache", CACHE_DIR]))


def auxiliary_pkt(teacher: nn.Module, cfg: RunConfig, train: Split, progress: bool = False,
                  cache_dir: Path | None = None) -> nn.Module:
    """The PKT auxiliary: the zoo's ('auxiliary-pkt') when it was made with this recipe, else one from
    cache trained earlier with the same recipe (`aux_cache_dirs`), else trained now and saved in the first of
    those folders, `cache_dir` first when given (never in the zoo)."""
    recipe = {"aux_epochs": cfg.aux_epochs, "epoch_size": cfg.aux_epoch_size, "lr": cfg.lr,
              "train_size": cfg.train_size, "dataset": cfg.dataset}
    entry = zoo.read_manifest()["models"].get("auxiliary-pkt")
    if cfg.use_zoo and entry is not None and entry.get("recipe") == recipe:
        return zoo.load("auxiliary-pkt")
    key = hashlib.sha256(json.dumps({**recipe, "quick": quick_mode(), "zoo": cfg.use_zoo},
                                    sort_keys=True).encode()).hexdigest()[:10]
    folders = list(dict.fromkeys([*([Path(cache_dir)] if cache_dir is not None else []), *aux_cache_dirs()]))
    for path in (folder / f"auxiliary-pkt-{key}.pt" for folder in folders):
        if path.is_file():
            return zoo.load_file(path, kind="cache")
    path = folders[0] / f"auxiliary-pkt-{key}.pt"
    aux = train_auxiliary_pkt(teacher, cfg, train, progress=progress)
    zoo.save_model(aux, path)
    return aux


def prune_auxiliary(aux: nn.Module, cfg: RunConfig, train: Split | None = None,
                    student: nn.Module | None = None) -> tuple[nn.Module, Any]:
    """The auxiliary pruned to the student's widths (`student`, default the configuration's preset) with the
    configured criterion (L1 by default): a coherent smaller network whose stages have the student's shapes.
    Its first stage's kept channels are unchanged; deeper stages only see the kept inputs, so their features
    differ from the unpruned ones (see `KeptChannels`)."""
    student = student if student is not None else build(cfg, "student")
    criterion = make_criterion(cfg.prune_criterion, train if train is not None else load_data(cfg)[0])
    # A trainable copy: the Taylor criterion needs gradients, and the result is fine-tuned or distilled from.
    trainable = copy.deepcopy(aux).requires_grad_(True)
    pruned, report = prune_to_widths(trainable, student, criterion, inplace=True)
    # every stage must now have the student's shape (else no stage can be distilled directly)
    validate(pruned, student, LayerMap.from_pairs(stage_pairs(pruned, student)), spec_of(student).input_shape)
    return pruned.eval(), report


def finetune_pruned(pruned: nn.Module, teacher: nn.Module, cfg: RunConfig, train: Split, seed: int = 0) -> nn.Module:
    """What a careful user tries next: the coherent pruned auxiliary after `cfg.finetune_epochs` epochs of
    PKT from the teacher's embedding (no CE), so its deeper stages recover before they serve as targets."""
    seed_everything(seed)
    tuned = copy.deepcopy(pruned).requires_grad_(True)
    sources = Sources(teacher=teacher)
    loader = make_loader(cfg, train, seed)
    # Targets computed per batch: a fine-tune sees few examples, so caching the whole set would cost more.
    objective = CurriculumObjective(auxiliary_pkt_curriculum(teacher, tuned, cfg.finetune_epochs), sources, tuned,
                                    example=train.x[:2], teacher_features=sources.features)
    Trainer(tuned, objective, lr=cfg.lr, seed=seed, progress=False).fit(loader, cfg.finetune_epochs)
    return tuned.cpu().eval()


def targets(cfg: RunConfig, sources: Sources, loader: IndexedLoader, cache: FeatureCache | None = None,
            epochs: int | None = None) -> Callable[..., Mapping[str, torch.Tensor]]:
    """Where the curriculum's targets come from: a feature cache (reused if given), a new one over the whole
    training set, or direct computation, batch by batch, when the configuration disables the cache or when the
    `epochs` (default `cfg.epochs`) of `loader` see fewer examples than the set holds (`short_run`)."""
    if not cfg.cache:
        return sources.features
    if cache is not None and cache.loader is loader:
        return cache
    if short_run(cfg.epochs if epochs is None else epochs, loader.epoch_size, len(loader.data)):
        return sources.features
    return FeatureCache(sources.features, loader)



@dataclass
class Prepared:
    """The shared stages of a reproduce: data, teacher, PKT auxiliary, pruned auxiliary and its report."""

    train: Split
    test: Split
    teacher: nn.Module
    aux: nn.Module
    pruned: nn.Module
    prune_report: Any
    sources: Sources
    """Layers named 'teacher.*', 'aux.*', 'pruned.*', 'kept.*', 'reference.*' and (unless `prepare` skipped
    the fine-tune) 'tuned.*'."""


def prepare(cfg: RunConfig, progress: bool = False, log: Callable[[str], None] = print,
            finetune: bool = True, cache_dir: Path | None = None) -> Prepared:
    """Run the pipeline's shared stages once: teacher -> PKT auxiliary -> pruned auxiliary (and its variants).

    `finetune=False` skips the pruned auxiliary's PKT fine-tune (the 'tuned' source, ~30 s at the paper's
    protocol), for runs whose methods do not read it (`runs.needs_finetune`). A trained auxiliary is cached in
    `cache_dir` (e.g. a table's `--out` folder) or the default cache folders."""
    train, test = load_data(cfg)
    t0 = time.perf_counter()
    teacher = load_teacher(cfg, train, progress)
    log(f"teacher ready ({time.perf_counter() - t0:.0f} s)")
    aux = auxiliary_pkt(teacher, cfg, train, progress=progress, cache_dir=cache_dir)
    log(f"auxiliary (PKT) ready ({time.perf_counter() - t0:.0f} s)")
    return _prune_and_collect(cfg, train, test, teacher, aux, build(cfg, "student"), log, finetune, t0)


def prepare_models(cfg: RunConfig, train: Split, test: Split, teacher: nn.Module, auxiliary: nn.Module,
                   student: nn.Module, progress: bool = False, log: Callable[[str], None] = print,
                   finetune: bool = True) -> Prepared:
    """The shared stages for models of your own (each described: `adapter.spec_of`): `teacher` as given (trained),
    a copy of `auxiliary` trained with PKT from the teacher's embedding for `cfg.aux_epochs`, then pruned to the
    widths of `student` (a model of the student's architecture) and its variants. Nothing is cached. Train the
    methods with `Context(cfg, prep.train, prep.sources, student=<function returning a fresh student>)`."""
    t0 = time.perf_counter()
    aux = train_auxiliary_pkt(teacher, cfg, train, progress=progress, start=auxiliary)
    log(f"auxiliary (PKT) ready ({time.perf_counter() - t0:.0f} s)")
    return _prune_and_collect(cfg, train, test, teacher.eval(), aux, student, log, finetune, t0)


def _prune_and_collect(cfg: RunConfig, train: Split, test: Split, teacher: nn.Module, aux: nn.Module,
                       student: nn.Module, log: Callable[[str], None], finetune: bool, t0: float) -> Prepared:
    """The PKT auxiliary pruned to `student`'s widths, its target variants and the sources of them all."""
    pruned, report = prune_auxiliary(aux, cfg, train, student)
    log(f"auxiliary pruned: {report.summary()}")
    variants: dict[str, nn.Module] = {"kept": KeptChannels.from_report(aux, report)}
    if getattr(aux, "convs_per_stage", None) == 1:  # the reference code's targets: the paper's ConvNets only
        variants["reference"] = ReferenceTargets.from_report(aux, report)
    if finetune:
        variants["tuned"] = finetune_pruned(pruned, teacher, cfg, train)
        log(f"pruned auxiliary fine-tuned with PKT for {cfg.finetune_epochs} epoch(s) "
            f"({time.perf_counter() - t0:.0f} s)")
    sources = Sources(teacher=teacher, aux=aux, pruned=pruned, **variants)
    return Prepared(train, test, teacher, aux, pruned, report, sources)

