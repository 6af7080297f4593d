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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from . import zoo
from .config import REPO_ROOT, quick_mode, seed_everything
from .criteria import make_criterion
from .curriculum import Curriculum, Term
from .objective import CurriculumObjective
from .data import Loader, Split, crop_flip, load_split
from .feature_cache import FeatureCache, IndexedLoader
from .models import build_model
from .pruning import prune_to_widths
from .sources import KeptChannels, ReferenceTargets, Sources
from .train import OPTIMIZER_STATE_POLICIES, Callback, Trainer

CACHE_DIR = REPO_ROOT / "results" / "cache"
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
    finetune_epochs: int = 1
    teacher_epochs: int = 80
    train_size: int | None = None
    test_size: int | None = None
    cache: bool = True
    use_zoo: bool = True

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
        if self.augment and self.cache:
            raise ValueError("augment=True changes the teacher's targets every epoch, so they cannot be cached; "
                             "set cache=False with augment=True.")

    @property
    def intermediate_epochs(self) -> int:
        """Epochs of the paper's layer-by-layer phase: sum of a + k for the 3 stages."""
        return sum(self.a + k for k in (1, 2, 3))

    @property
    def lr_schedule(self) -> dict[int, float]:
        return {self.lr_drop_epoch: self.lr_low} if self.lr_drop_epoch < self.epochs else {}

    def digest(self, quick: bool | None = None) -> str:
        """A short hash of the configuration (seed excluded): rows with the same digest are comparable. It
        includes quick mode (`quick`, default: the current mode), which shrinks the data."""
        key = {**asdict(self), "quick": quick_mode() if quick is None else quick}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    @classmethod
    def paper(cls, dataset: str = "fashion-mnist", **changes: Any) -> "RunConfig":
        """The paper's 70-epoch protocol: a = 2 (3, 4, 5 epochs), 60 epochs at 1e-3 then 10 at 1e-4, full passes."""
        return cls(dataset=dataset, epochs=70, epoch_size=None, a=2, lr_drop_epoch=60, aux_epochs=70, **changes)

    @classmethod
    def cifar10_paper(cls, **changes: Any) -> "RunConfig":
        """The paper's CIFAR-10 setup (for a GPU): PreActResNet18 teacher trained 80 epochs with CE, the
        paper's exact auxiliary/student (padding 0 on 32x32x3), crop+flip, no cache (targets change)."""
        base = dict(dataset="cifar10", teacher="preact-resnet18", model_overrides={"padding": 0},
                    augment=True, cache=False, use_zoo=False)
        return cls.paper(**{**base, **changes})




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
    return Curriculum((), Term(f"teacher.{teacher.embedding_path}", auxiliary.embedding_path, "pkt"), epochs)


def train_auxiliary_pkt(teacher: nn.Module, cfg: RunConfig, train: Split, seed: int = 0,
                        callbacks: Iterable[Callback] = (), progress: bool = False) -> nn.Module:
    """The auxiliary after PKT from the teacher's embedding (docs/methods.md, section 1, step 2). Starts from the zoo's
    cross-entropy auxiliary when there is one (the paper's order), else from random init."""
    seed_everything(seed)
    aux = zoo.load("auxiliary") if _zoo_has(cfg, "auxiliary") else build(cfg, "auxiliary")
    sources = Sources(teacher=teacher)
    loader = make_loader(cfg, train, seed)
    objective = CurriculumObjective(auxiliary_pkt_curriculum(teacher, aux, cfg.aux_epochs), sources, aux,
                                    example=train.x[:2], teacher_features=targets(cfg, sources, loader))
    Trainer(aux, objective, lr=cfg.lr, seed=seed, callbacks=callbacks, progress=progress).fit(loader, cfg.aux_epochs)
    return aux.cpu().eval()


def auxiliary_pkt(teacher: nn.Module, cfg: RunConfig, train: Split, progress: bool = False) -> nn.Module:
    """The PKT auxiliary: the zoo's ('auxiliary-pkt') when it was made with this recipe, else one from
    `CACHE_DIR` trained earlier with the same recipe, else trained now and saved there (never in the zoo)."""
    recipe = {"aux_epochs": cfg.aux_epochs, "epoch_size": cfg.epoch_size, "lr": cfg.lr,
              "train_size": cfg.train_size, "dataset": cfg.dataset}
    entry = zoo.read_manifest()["models"].get("auxiliary-pkt")
    if cfg.use_zoo and entry is not None and entry.get("recipe") == recipe:
        return zoo.load("auxiliary-pkt")
    key = hashlib.sha256(json.dumps({**recipe, "quick": quick_mode(), "zoo": cfg.use_zoo},
                                    sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE_DIR / f"auxiliary-pkt-{key}.pt"
    if path.is_file():
        return zoo.load_file(path, kind="cache")
    aux = train_auxiliary_pkt(teacher, cfg, train, progress=progress)
    zoo.save_model(aux, path)
    return aux


def prune_auxiliary(aux: nn.Module, cfg: RunConfig, train: Split | None = None) -> tuple[nn.Module, Any]:
    """The auxiliary pruned to the student's stage widths with the configured criterion (L1 by default):
    a coherent smaller network. Its first stage's kept channels are unchanged; deeper stages only see the
    kept inputs, so their features differ from the unpruned ones (see `KeptChannels`)."""
    student = build(cfg, "student")
    criterion = make_criterion(cfg.prune_criterion, train if train is not None else load_data(cfg)[0])
    # A trainable copy: the Taylor criterion needs gradients, and the result is fine-tuned or distilled from.
    trainable = copy.deepcopy(aux).requires_grad_(True)
    pruned, report = prune_to_widths(trainable, student.widths, criterion, inplace=True)
    if pruned.widths != student.widths:
        raise RuntimeError(f"Pruning left widths {pruned.widths}, not the student's {student.widths}.")
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


def targets(cfg: RunConfig, sources: Sources, loader: IndexedLoader,
             cache: FeatureCache | None = None) -> Callable[..., Mapping[str, torch.Tensor]]:
    """Where the curriculum's targets come from: a feature cache (reused if given) or direct computation."""
    if not cfg.cache:
        return sources.features
    if cache is not None and cache.loader is loader:
        return cache
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
            finetune: bool = True) -> Prepared:
    """Run the pipeline's shared stages once: teacher -> PKT auxiliary -> pruned auxiliary (and its variants).

    `finetune=False` skips the pruned auxiliary's PKT fine-tune (the 'tuned' source, ~30 s at the paper's
    protocol), for runs whose methods do not read it (`runs.needs_finetune`)."""
    train, test = load_data(cfg)
    t0 = time.perf_counter()
    teacher = load_teacher(cfg, train, progress)
    log(f"teacher ready ({time.perf_counter() - t0:.0f} s)")
    aux = auxiliary_pkt(teacher, cfg, train, progress=progress)
    log(f"auxiliary (PKT) ready ({time.perf_counter() - t0:.0f} s)")
    pruned, report = prune_auxiliary(aux, cfg, train)
    log(f"auxiliary pruned: {report.summary()}")
    variants: dict[str, nn.Module] = {"kept": KeptChannels.from_report(aux, report)}
    if aux.convs_per_stage == 1:
        variants["reference"] = ReferenceTargets.from_report(aux, report)
    if finetune:
        variants["tuned"] = finetune_pruned(pruned, teacher, cfg, train)
        log(f"pruned auxiliary fine-tuned with PKT for {cfg.finetune_epochs} epoch(s) "
            f"({time.perf_counter() - t0:.0f} s)")
    sources = Sources(teacher=teacher, aux=aux, pruned=pruned, **variants)
    return Prepared(train, test, teacher, aux, pruned, report, sources)

