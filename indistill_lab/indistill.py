"""InDistill end to end, and the baselines it is compared with, in one harness.

The pipeline (METHODS.md section 1), each step a function so a notebook can show it:

    teacher  = load_teacher(cfg)                                # zoo checkpoint, or trained with CE
    aux      = train_auxiliary_pkt(teacher, cfg, train)         # PKT on the embedding, no CE
    pruned, report = prune_auxiliary(aux, cfg)                  # coherent network, student's widths
    sources  = Sources(teacher=teacher, aux=aux, pruned=pruned) # one module: paths 'pruned.stage1', ...
    curriculum = method_curriculum("indistill-paper", sources, student, cfg, probe)
    student, history = train_student("indistill-paper", sources, cfg, train)
    evaluate_student(student, train, test, trained_head=...)    # accuracy, mAP (e, c), top-100

Every method trains the same student architecture from random init with the same optimiser,
epochs and batches; only the objective differs (`METHODS`). Knowledge sources: the intermediate
layers come from the pruned auxiliary (InDistill) or the unpruned one through 1x1 connectors
(FitNets); the final representation from the PKT-trained auxiliary's embedding; Hinton KD uses
the teacher's logits (the PKT auxiliary's classifier was never trained on its new features).
Methods that never train the student's classifier get a linear probe on frozen train embeddings
for the accuracy column (`accuracy_from` says which).

`reproduce(cfg, seeds)` runs every method for every seed, appends one CSV row per run as it
finishes (a rerun skips rows already there), then writes the markdown table and the plot.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import zoo
from .config import REPO_ROOT, quick_mode, seed_everything
from .curriculum import Curriculum, CurriculumObjective, Term, features, layer_difficulty, stage_pairs
from .data import Loader, Split, crop_flip, load_split
from .feature_cache import FeatureCache, IndexedLoader
from .metrics import embeddings, retrieval_metrics
from .models import build_model
from .pruning import make_criterion, prune_to_widths
from .taps import Taps
from .train import Callback, Trainer, cross_entropy

METHODS: dict[str, str] = {
    "student-ce": "student trained with cross-entropy only",
    "hinton-kd": "Hinton KD (T=4) from the teacher's logits, all epochs",
    "pkt": "PKT on the final (embedding) layer only, from the PKT auxiliary, all epochs",
    "fitnets": "FitNets hints through 1x1 connectors from the unpruned PKT auxiliary, paper schedule, then PKT",
    "indistill-all-at-once": "direct MSE on all pruned-auxiliary layers together, then PKT (no curriculum)",
    "indistill-paper": "InDistill: direct MSE layer by layer for a+k epochs, shallow to deep, then PKT",
    "indistill-difficulty": "InDistill with epochs per layer from measured difficulty (same budget), then PKT",
    "indistill-kept-channels": "InDistill (paper curriculum) with targets = the unpruned PKT auxiliary's features at the "
                               "kept channels (the reference code's effective targets), then PKT",
}
RESULT_COLUMNS = ["method", "seed", "config", "epochs", "epoch_size", "a", "final_loss", "accuracy",
                  "accuracy_from", "map_e", "map_c", "map_std_e", "map_std_c", "top100_e", "top100_c",
                  "train_seconds", "eval_seconds", "wall_seconds", "phases"]


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on. `digest()` names the configuration in result files.

    Epoch counts are in loader epochs of `epoch_size` examples (None = a full pass). The lr is
    `lr` until `lr_drop_epoch`, then `lr_low` (the paper: 60 epochs at 1e-3, 10 at 1e-4).
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
    final_loss: str = "pkt"
    kd_temperature: float = 4.0
    prune_criterion: str = "L1"
    aux_epochs: int = 3
    teacher_epochs: int = 80
    train_size: int | None = None
    test_size: int | None = None
    cache: bool = True
    use_zoo: bool = True

    def __post_init__(self) -> None:
        if self.final_loss not in ("pkt", "kd"):
            raise ValueError(f"final_loss must be 'pkt' or 'kd', got {self.final_loss!r}.")
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

    def digest(self) -> str:
        """A short hash of the configuration (seed excluded): rows with the same digest are comparable."""
        key = {**asdict(self), "quick": quick_mode()}  # quick mode shrinks the data: never the same results
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    @classmethod
    def fashion_mnist_cpu(cls, **changes: Any) -> "RunConfig":
        """The CPU budget used for the committed table: 15 epochs of 12,000 examples (3 full passes),
        a = 0 (layers for 1, 2, 3 epochs, then 9 epochs of PKT), lr 1e-4 for the last 2 epochs."""
        return cls(**changes)

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


# ------------------------------------------------------------------------------------------
# Knowledge sources as one module
# ------------------------------------------------------------------------------------------
class Sources(nn.Module):
    """The frozen models a student learns from, as children of one module, so a curriculum names a
    layer of any of them: 'pruned.stage1', 'aux.act_fc1', 'teacher.classifier'.

    `features(x, paths)` runs only the models the paths name (each in eval mode, no grad): the
    `TeacherFeatures` callable a `CurriculumObjective` or a `FeatureCache` takes.
    """

    def __init__(self, **models: nn.Module) -> None:
        super().__init__()
        if not models:
            raise ValueError("Sources needs at least one model, e.g. Sources(pruned=pruned_auxiliary).")
        for name, model in models.items():
            self.add_module(name, model.eval().requires_grad_(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("Sources is not a network; ask for layers with sources.features(x, paths).")

    def features(self, x: torch.Tensor, paths: Sequence[str]) -> dict[str, torch.Tensor]:
        by_model: dict[str, list[str]] = {}
        for path in paths:
            name, _, sub = path.partition(".")
            if name not in self._modules or not sub:
                raise KeyError(f"Source layer {path!r} must be '<model>.<layer>' with <model> one of "
                               f"{', '.join(self._modules)}.")
            by_model.setdefault(name, []).append(sub)
        out: dict[str, torch.Tensor] = {}
        for name, subs in by_model.items():
            for sub, value in features(self._modules[name], x, subs).items():
                out[f"{name}.{sub}"] = value
        return out


class _Select(nn.Module):
    """Keeps the given channels of its input (a named module, so `Taps` can record its output)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("channels", torch.as_tensor(list(channels), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.channels)


class KeptChannels(nn.Module):
    """The unpruned model's stage outputs restricted to the channels pruning kept, under the stage names.

    A coherent pruned network computes its deeper stages from the kept channels only, so its stage-2/3
    features are those of a damaged network (before any fine-tune). The reference code pruned each conv in
    isolation, so its targets were these: the original network's features at the kept channels.
    `KeptChannels(aux, {"stage1": [...], ...})` exposes them as layers 'stage1', ... of a module.
    """

    def __init__(self, model: nn.Module, kept: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        self.model = model
        for path, channels in kept.items():
            self.add_module(path, _Select(channels))

    @classmethod
    def from_report(cls, model: nn.Module, report: Any) -> "KeptChannels":
        """Kept channels of each stage's last conv, read off a `PruneReport`."""
        last = f"conv{model.convs_per_stage}"
        return cls(model, {p: report.kept[f"{p}.{last}"] for p in model.stage_paths})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = [p for p, _ in self.named_children() if p != "model"]
        with Taps(self.model, stages) as taps:
            out = self.model(x)
        for path in stages:
            getattr(self, path)(taps[path])
        return out


# ------------------------------------------------------------------------------------------
# Pipeline stages
# ------------------------------------------------------------------------------------------
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
    """The auxiliary after PKT from the teacher's embedding (METHODS.md step 2). Starts from the zoo's
    cross-entropy auxiliary when there is one (the paper's order), else from random init."""
    seed_everything(seed)
    aux = zoo.load("auxiliary") if _zoo_has(cfg, "auxiliary") else build(cfg, "auxiliary")
    sources = Sources(teacher=teacher)
    loader = make_loader(cfg, train, seed)
    objective = CurriculumObjective(auxiliary_pkt_curriculum(teacher, aux, cfg.aux_epochs), sources, aux,
                                    example=train.x[:2], teacher_features=_targets(cfg, sources, loader))
    Trainer(aux, objective, lr=cfg.lr, seed=seed, callbacks=callbacks, progress=progress).fit(loader, cfg.aux_epochs)
    return aux.cpu().eval()


def auxiliary_pkt(teacher: nn.Module, cfg: RunConfig, train: Split, save: bool = True,
                  progress: bool = False) -> nn.Module:
    """The PKT auxiliary from the zoo ('auxiliary-pkt') when one was made with the same recipe;
    otherwise trained now and (with `save`) recorded in the zoo."""
    recipe = {"aux_epochs": cfg.aux_epochs, "epoch_size": cfg.epoch_size, "lr": cfg.lr,
              "train_size": cfg.train_size, "dataset": cfg.dataset}
    entry = zoo.read_manifest()["models"].get("auxiliary-pkt")
    if cfg.use_zoo and entry is not None and entry.get("recipe") == recipe:
        return zoo.load("auxiliary-pkt")
    start = time.perf_counter()
    aux = train_auxiliary_pkt(teacher, cfg, train, progress=progress)
    if save and cfg.use_zoo:
        rel = f"{cfg.dataset}/auxiliary-pkt.pt"
        sha = zoo.save_model(aux, zoo.ZOO_DIR / rel)
        zoo.record(zoo.ZOO_DIR, "auxiliary-pkt", {
            "file": rel, "sha256": sha, "dataset": cfg.dataset, "recipe": recipe, "seed": 0,
            "command": "python -m indistill_lab reproduce (stage: teacher -> auxiliary with PKT)",
            "epochs": cfg.aux_epochs, "optimizer": "adam", "batch_size": cfg.batch_size,
            "train_seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__})
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


# ------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------
def final_term(cfg: RunConfig, student: nn.Module) -> Term:
    """The final-layer term: PKT from the PKT auxiliary's embedding, or Hinton KD from the teacher's logits."""
    if cfg.final_loss == "kd":
        return Term("teacher.classifier", "classifier", "kd", params={"temperature": cfg.kd_temperature})
    return Term("aux.act_fc1", student.embedding_path, "pkt")


def method_curriculum(method: str, sources: Sources, student: nn.Module, cfg: RunConfig,
                      probe: torch.Tensor | None = None) -> Curriculum | None:
    """The curriculum a method trains the student with (None for plain cross-entropy).

    `probe` (a batch of real inputs) is needed by 'indistill-difficulty', which measures each layer's
    difficulty as the untrained student's relative MSE to the pruned auxiliary
    (`curriculum.layer_difficulty`) and splits the paper's intermediate budget accordingly.
    """
    if method not in METHODS:
        raise KeyError(f"Unknown method {method!r}. Known: {', '.join(METHODS)}.")
    E, L = cfg.epochs, cfg.intermediate_epochs
    paths = student.stage_paths
    pruned = [(f"pruned.{p}", p) for p in paths]
    critical = {"critical_end": L}
    if method == "student-ce":
        return None
    if method == "hinton-kd":
        return Curriculum((), final_term(replace(cfg, final_loss="kd"), student), E)
    if method == "pkt":
        return Curriculum((), final_term(replace(cfg, final_loss="pkt"), student), E)
    final = final_term(cfg, student)
    if method == "fitnets":
        return Curriculum.paper([(f"aux.{p}", p) for p in paths], final, E, a=cfg.a, loss="fitnets", **critical)
    if method == "indistill-all-at-once":
        return Curriculum.all_at_once(pruned, L, final, E, **critical)
    if method == "indistill-paper":
        return Curriculum.paper(pruned, final, E, a=cfg.a, **critical)
    if method == "indistill-kept-channels":
        return Curriculum.paper([(f"kept.{p}", p) for p in paths], final, E, a=cfg.a, **critical)
    if probe is None:
        raise ValueError("indistill-difficulty measures layer difficulty on real inputs: pass `probe`, a batch "
                         "of training images (e.g. train.x[:512]).")
    difficulty = layer_difficulty(sources.pruned, student, stage_pairs(sources.pruned, student), probe)
    return Curriculum.from_difficulty(pruned, difficulty, L, final, E, **critical)


def _targets(cfg: RunConfig, sources: Sources, loader: IndexedLoader,
             cache: FeatureCache | None = None) -> Callable[..., Mapping[str, torch.Tensor]]:
    """Where the curriculum's targets come from: a feature cache (reused if given) or direct computation."""
    if not cfg.cache:
        return sources.features
    if cache is not None and cache.loader is loader:
        return cache
    return FeatureCache(sources.features, loader)


def train_student(method: str, sources: Sources | None, cfg: RunConfig, train: Split, seed: int = 0,
                  callbacks: Iterable[Callback] = (), cache: FeatureCache | None = None,
                  loader: IndexedLoader | None = None, progress: bool = False) -> tuple[nn.Module, Trainer, Curriculum | None]:
    """Train a fresh student (random init from `seed`) with `method`; returns (student, trainer, curriculum).

    Pass a `cache` built on the same `loader` to reuse teacher targets across methods.
    """
    seed_everything(seed)
    student = build(cfg, "student")
    loader = loader if loader is not None else make_loader(cfg, train, seed)
    curriculum = None if method == "student-ce" else method_curriculum(method, sources, student, cfg, train.x[:512])
    if curriculum is None:
        objective: Any = cross_entropy
    else:
        targets = _targets(cfg, sources, loader, cache)
        objective = CurriculumObjective(curriculum, sources, student, example=train.x[:4], teacher_features=targets)
    trainer = Trainer(student, objective, lr=cfg.lr, lr_schedule=cfg.lr_schedule, seed=seed,
                      callbacks=callbacks, progress=progress)
    trainer.fit(loader, cfg.epochs)
    if trainer.history.stopped:
        raise RuntimeError(f"{method}: training stopped ({trainer.history.stopped}).")
    return student.cpu().eval(), trainer, curriculum


def trains_head(method: str, curriculum: Curriculum | None) -> bool:
    """Whether the method trains the student's classifier (otherwise accuracy comes from a linear probe)."""
    return curriculum is None or any(t.student in ("classifier", "output") for t in curriculum.terms())


def fit_probe(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, epochs: int = 30, seed: int = 0) -> nn.Linear:
    """Re-fit a linear classifier on frozen embeddings (Adam, full data, mini-batches of 1024)."""
    g = torch.Generator().manual_seed(seed)
    head.reset_parameters()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(feats), generator=g).split(1024):
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def evaluate_student(model: nn.Module, train: Split, test: Split, trained_head: bool = True) -> dict[str, Any]:
    """Accuracy and retrieval (queries = test, database = train), in percent.

    With `trained_head=False` the model's classifier is first re-fitted as a linear probe on the frozen
    train embeddings (so the saved student is a working classifier); `accuracy_from` says which.
    """
    model = model.cpu().eval()
    db, queries = embeddings(model, train.x, device="cpu"), embeddings(model, test.x, device="cpu")
    if not trained_head:
        with torch.enable_grad():
            fit_probe(model.classifier, db, train.y)
    with torch.no_grad():
        acc = float((model.classifier(queries).argmax(1) == test.y).float().mean())
    out: dict[str, Any] = {"accuracy": round(100 * acc, 2), "accuracy_from": "head" if trained_head else "probe"}
    for distance in ("euclidean", "cosine"):
        m = retrieval_metrics(queries, test.y, db, train.y, distance, top_k=min(100, len(train)))
        d = distance[0]
        out.update({f"map_{d}": round(100 * m["map_11pt"], 2), f"map_std_{d}": round(100 * m["map"], 2),
                    f"top100_{d}": round(100 * m[f"precision_at_{min(100, len(train))}"], 2)})
    return out


# ------------------------------------------------------------------------------------------
# Reproduce
# ------------------------------------------------------------------------------------------
def read_results(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a results CSV, numbers parsed (empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.append({k: _parse(v) for k, v in row.items()})
    return rows


def _parse(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def append_result(path: Path | str, row: Mapping[str, Any]) -> None:
    """Append one run's row (header written with the first row), flushed so a killed run loses nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})


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


def prepare(cfg: RunConfig, save_aux: bool = True, progress: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Run the pipeline's shared stages once: teacher -> PKT auxiliary -> pruned auxiliary."""
    train, test = load_data(cfg)
    t0 = time.perf_counter()
    teacher = load_teacher(cfg, train, progress)
    log(f"teacher ready ({time.perf_counter() - t0:.0f} s)")
    aux = auxiliary_pkt(teacher, cfg, train, save=save_aux, progress=progress)
    log(f"auxiliary (PKT) ready ({time.perf_counter() - t0:.0f} s)")
    pruned, report = prune_auxiliary(aux, cfg, train)
    log(f"auxiliary pruned: {report.summary()}")
    sources = Sources(teacher=teacher, aux=aux, pruned=pruned, kept=KeptChannels.from_report(aux, report))
    return Prepared(train, test, teacher, aux, pruned, report, sources)


def source_layers(prep: Prepared, cfg: RunConfig, methods: Iterable[str]) -> list[str]:
    """Every source layer the given methods read (the feature tables a reproduce needs)."""
    paths: list[str] = []
    for method in methods:
        c = method_curriculum(method, prep.sources, build(cfg, "student"), cfg, prep.train.x[:512])
        paths += c.layers("teacher") if c is not None else []
    return list(dict.fromkeys(paths))


def run_method(method: str, prep: Prepared, cfg: RunConfig, seed: int, cache: FeatureCache | None = None,
               loader: IndexedLoader | None = None, callbacks: Iterable[Callback] = (),
               progress: bool = False) -> tuple[dict[str, Any], nn.Module]:
    """Train and evaluate one (method, seed); returns the result row and the student."""
    start = time.perf_counter()
    student, _, curriculum = train_student(method, prep.sources, cfg, prep.train, seed, callbacks, cache, loader, progress)
    trained = time.perf_counter()
    row = evaluate_student(student, prep.train, prep.test, trains_head(method, curriculum))
    done = time.perf_counter()
    phases = [] if curriculum is None else [[p.student, p.start, p.epochs] for p in curriculum.phases]
    return {"method": method, "seed": seed, "config": cfg.digest(), "epochs": cfg.epochs,
            "epoch_size": cfg.epoch_size or len(prep.train), "a": cfg.a, "final_loss": cfg.final_loss, **row,
            "train_seconds": round(trained - start, 1), "eval_seconds": round(done - trained, 1),
            "wall_seconds": round(done - start, 1), "phases": json.dumps(phases)}, student


def reproduce(cfg: RunConfig, seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] | None = None,
              results_dir: Path | str = REPO_ROOT / "results", name: str | None = None,
              save_students: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every method for every seed (seed-major, so a partial run still compares all methods), one CSV row
    per finished run; rows already present for this config are skipped. Then the table and the plot.

    With `save_students`, seed 0's InDistill (paper curriculum) student is recorded in the zoo as
    'student-indistill' (used by notebook 07's retrieval comparison). Files are named after the dataset
    for the default CPU configuration, `<dataset>-<digest>` for any other, so a variant never overwrites
    the committed table (nor the zoo's student).
    """
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise KeyError(f"Unknown method(s) {unknown}. Known: {', '.join(METHODS)}.")
    results_dir = Path(results_dir)
    default = cfg == RunConfig.fashion_mnist_cpu(dataset=cfg.dataset) and not quick_mode()
    name = name or (cfg.dataset if default else f"{cfg.dataset}-{cfg.digest()}")
    csv_path = results_dir / f"{name}.csv"
    done = {(r["method"], r["seed"]) for r in read_results(csv_path) if r["config"] == cfg.digest()}
    todo = [(s, m) for s in seeds for m in methods if (m, s) not in done]
    log(f"config {cfg.digest()}: {len(done)} runs already in {csv_path}, {len(todo)} to do")
    if todo:
        prep = prepare(cfg, log=log)
        cache = None
        if cfg.cache:  # every method's targets up front, so no run's wall time includes building them
            t0 = time.perf_counter()
            cache = FeatureCache(prep.sources.features, make_loader(cfg, prep.train, 0))
            cache.prefetch(source_layers(prep, cfg, methods))
            log(f"feature cache: {len(cache.tables)} tables, {cache.nbytes / 2**20:.0f} MiB, "
                f"{time.perf_counter() - t0:.0f} s")
        for seed in sorted({s for s, _ in todo}):
            loader = make_loader(cfg, prep.train, seed)
            if cache is not None:
                cache.loader = loader  # tables are per example, so they serve every seed's batch order
            for s, method in todo:
                if s != seed:
                    continue
                row, student = run_method(method, prep, cfg, seed, cache, loader)
                append_result(csv_path, row)
                log(f"{method} seed {seed}: mAP e/c {row['map_e']}/{row['map_c']}, acc {row['accuracy']} "
                    f"({row['accuracy_from']}), train {row['train_seconds']} s, eval {row['eval_seconds']} s")
                if save_students and default and seed == 0 and method == "indistill-paper" and cfg.use_zoo:
                    _save_student(student, cfg, row)
    rows = [r for r in read_results(csv_path) if r["config"] == cfg.digest()]
    write_report(rows, cfg, results_dir / f"{name}.md", results_dir / f"{name}.png")
    return rows


def _save_student(student: nn.Module, cfg: RunConfig, row: Mapping[str, Any]) -> None:
    rel = f"{cfg.dataset}/student-indistill.pt"
    sha = zoo.save_model(student, zoo.ZOO_DIR / rel)
    metrics = {k: row[k] for k in ("accuracy", "map_e", "map_c", "map_std_e", "map_std_c", "top100_e", "top100_c")}
    zoo.record(zoo.ZOO_DIR, "student-indistill", {
        "file": rel, "sha256": sha, "dataset": cfg.dataset, "seed": 0, "config": asdict(cfg),
        "command": "python -m indistill_lab reproduce (method indistill-paper, seed 0)",
        "epochs": cfg.epochs, "train_seconds": row["train_seconds"], "torch": torch.__version__,
        **metrics, "test_accuracy": row["accuracy"]})


# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------
SUMMARY_COLUMNS = [("mAP (e)", "map_e"), ("mAP (c)", "map_c"), ("top-100 (e)", "top100_e"),
                   ("top-100 (c)", "top100_c"), ("accuracy", "accuracy"), ("wall s / run", "wall_seconds")]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method (in `METHODS` order): number of seeds and (mean, std) of each summary column."""
    out = []
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        mine = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "seeds": len(mine),
                                 "accuracy_from": mine[0]["accuracy_from"]}
        for _, key in SUMMARY_COLUMNS:
            entry[key] = mean_std([float(r[key]) for r in mine])
        out.append(entry)
    return out


def markdown_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table: mean +/- std over seeds, best mean per retrieval column in bold."""
    summary = summarise(rows)
    best = {key: max(s[key][0] for s in summary) for _, key in SUMMARY_COLUMNS[:5]}
    lines = ["| method | seeds | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |",
             "|---|---|" + "---|" * len(SUMMARY_COLUMNS)]
    for s in summary:
        cells = []
        for _, key in SUMMARY_COLUMNS:
            mean, std = s[key]
            text = f"{mean:.0f} ± {std:.0f}" if key == "wall_seconds" else f"{mean:.2f} ± {std:.2f}"
            if key == "accuracy" and s["accuracy_from"] == "probe":
                text += "*"
            cells.append(f"**{text}**" if key in best and mean == best[key] else text)
        lines.append(f"| {s['method']} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows: Sequence[Mapping[str, Any]], cfg: RunConfig, md_path: Path, png_path: Path) -> None:
    """Write the markdown table (with the configuration and method descriptions) and the PNG plot."""
    if not rows:
        return
    from .viz.results import results_png

    text = [f"# InDistill and baselines on {cfg.dataset}", "",
            f"Generated by `python -m indistill_lab reproduce --dataset {cfg.dataset}` (config `{cfg.digest()}`), "
            "one row per method, mean ± sample std over seeds. Retrieval: queries = test set, database = "
            "train set, penultimate features; mAP = 11-point interpolated (the InDistill tables' metric). "
            "Accuracy marked * comes from a linear probe fitted on frozen train embeddings (the method never "
            "trains the classifier). Wall time = training + evaluation of one run.", "",
            markdown_summary(rows), "",
            "Configuration: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()), "",
            "Methods:", *[f"- `{m}`: {d}" for m, d in METHODS.items()], ""]
    md_path.write_text("\n".join(text))
    results_png(summarise(rows), png_path, title=f"{cfg.dataset}: retrieval mAP by method (mean ± std over seeds)")
