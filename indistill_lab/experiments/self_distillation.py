"""The self-distillation ablation on Fashion-MNIST (issue 23, docs/self_distillation.md): CE alone, + DRG,
+ DSR, + both, and Hinton KD from the zoo teacher as the external-teacher reference, in two regimes:

- `overfit` (the authors' regime, scaled to 2 CPU cores): the auxiliary ConvNet on a class-balanced
  2,000-image subset, random crop + flip, the paper's SGD (0.1, momentum 0.9, wd 5e-4, lr x0.1 at
  60/120/160) for 200 full passes. Cross-entropy alone over-fits here (train accuracy ~100%, test far below),
  so a regulariser has something to do. Every arm, Hinton KD included, uses that one optimiser.
- `budget` (the first, committed table): 8 short epochs (12k images each, Adam) on a 20k subset, no
  augmentation, the kit's student and auxiliary, where the student under-fits; plus the paper's SGD rows.

    python -m indistill_lab.experiments.self_distillation --regime overfit --seeds 3 --workers 2 --update
    python -m indistill_lab.experiments.self_distillation report            # results/self-distillation.md

Both regimes' rows live in `results/self-distillation.csv`, told apart by their configuration digest
(`config`) and `regime`; the markdown has one section per regime with paired differences by seed. The
driver follows the results rules (`indistill_lab.results`): resumable (finished rows are skipped), one
flushed line per run, a committed table changed only with `--update`, `--out DIR` to write elsewhere,
quick mode (INDISTILL_QUICK=1) runs a tiny version into results/quick/. Each run is scored like every
reproduce row (`evaluation.evaluate_student`: test accuracy from the trained head, retrieval mAP with
queries = test set, database = the train subset) plus train accuracy (un-augmented train subset) and the
DRG head's own test accuracy. Also `self_distillation_views`: the cached arrays notebook 09 draws.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import zoo
from ..cache import cached
from ..config import quick_mode, seed_everything
from ..data import Loader, Split
from ..errors import UsageError, cli, positive, seeds_from
from ..evaluation import evaluate_student
from ..methods import Context, Trained, get_method
from ..methods.self_distillation import SelfKD, paper_sgd
from ..metrics import accuracy
from ..modes import eval_mode
from ..pipeline import RunConfig, build, eval_train_split, load_data
from ..results import ColumnType, ResultsTable
from ..sources import Sources
from .tables import mean_std

COLUMNS: dict[str, ColumnType] = {
    "arch": str, "method": str, "optimizer": str, "seed": int, "config": str, "epochs": int, "epoch_size": int,
    "accuracy": float, "map_e": float, "map_c": float, "map_std_e": float, "map_std_c": float, "top100_e": float,
    "top100_c": float, "train_seconds": float, "eval_seconds": float, "regime": str, "train_accuracy": float,
    "head_accuracy": float}
"""The committed file's first 16 columns, then the ones the over-fitting regime added (empty in older rows)."""
KEY = ("config", "arch", "method", "optimizer", "seed")
ABLATION = ("student-ce", "self-drg", "self-dsr", "self-drg-dsr")
METHODS = (*ABLATION, "hinton-kd")
NAME = "self-distillation"


@dataclass(frozen=True)
class Regime:
    """One protocol of the table: a run configuration (its `student` is set per row from `arch`) and the
    (arch, method, optimizer) groups it runs, in order of priority (each group seed by seed, so a table cut
    short is paired)."""

    name: str
    cfg: RunConfig
    groups: tuple[tuple[tuple[str, str, str], ...], ...]
    summary: str

    def config(self, arch: str, quick: bool | None = None) -> RunConfig:
        """The run configuration of `arch`; in quick mode (`quick`, default: the current mode) a tiny one,
        7 passes over 256 images and 500 test images."""
        cfg = replace(self.cfg, student=arch)
        if quick_mode() if quick is None else quick:
            return replace(cfg, epochs=7, epoch_size=None, train_size=256, test_size=500)
        return cfg

    def digests(self, quick: bool | None = None) -> dict[str, str]:
        """arch -> configuration digest, the `config` column of this regime's rows (quick: as in `config`)."""
        return {arch: self.config(arch, quick).digest(quick) for group in self.groups for arch, _, _ in group}

    def runs(self, seeds: Sequence[int]) -> list[tuple[str, str, str, str, int]]:
        """The table keys (config, arch, method, optimizer, seed) of this regime for `seeds`."""
        digests = self.digests()
        return [(digests[arch], arch, method, opt, s) for group in self.groups for s in seeds
                for arch, method, opt in group]

    def rows(self, rows: Sequence[dict[str, Any]], quick: bool | None = None) -> list[dict[str, Any]]:
        """The rows of `rows` made under this regime (by configuration digest; `quick=False` picks the full
        runs of the committed table from a notebook running in quick mode)."""
        digests = self.digests(quick)
        return [r for r in rows if digests.get(r["arch"]) == r["config"]]


BUDGET = RunConfig(epochs=8, lr_drop_epoch=6, train_size=20_000)
"""The CPU budget of the first table: 8 epochs of 12k images (lr 1e-4 for the last 2), a 20k-image train
subset (which is also the retrieval database), the full test set; otherwise the default run configuration."""
OVERFIT = RunConfig(student="auxiliary", epochs=200, epoch_size=None, train_size=2_000, augment=True, cache=False)
"""The over-fitting regime: 200 full passes over a class-balanced 2,000-image subset, crop + flip, full test
set (the optimiser is the paper's SGD for every arm, chosen by the rows' `optimizer`)."""
REGIMES = {
    "overfit": Regime("overfit", OVERFIT, (tuple(("auxiliary", m, "sgd") for m in METHODS),),
                      "auxiliary ConvNet, 2,000-image class-balanced subset, crop + flip, 200 epochs, the paper's "
                      "SGD (0.1, momentum 0.9, wd 5e-4, lr x0.1 at epochs 60/120/160) for every arm"),
    "budget": Regime("budget", BUDGET, (tuple(("student", m, "adam") for m in ABLATION),
                                        tuple(("auxiliary", m, "adam") for m in ABLATION),
                                        (("student", "student-ce", "sgd"), ("student", "self-drg-dsr", "sgd")),
                                        tuple((a, "hinton-kd", "adam") for a in ("student", "auxiliary"))),
                     "8 epochs of 12,000 images from a 20,000-image subset, no augmentation; Adam = the run "
                     "configuration's protocol, SGD = the paper's (lr x0.1 at 30/60/80% of the epochs)"),
}


def table(update: bool = False, folder: Path | str | None = None) -> ResultsTable:
    """The one results file of every regime: `<results>/self-distillation.csv`."""
    return ResultsTable(NAME, config={}, columns=COLUMNS, key=KEY, folder=folder, update=update, stem=NAME)


_DATA: dict[tuple[Any, ...], tuple[Split, Split, Sources]] = {}


def _data(cfg: RunConfig) -> tuple[Split, Split, Sources]:
    """(train, test, zoo teacher) at the configuration's sizes, loaded once per process."""
    key = (cfg.train_size, cfg.test_size, quick_mode())
    if key not in _DATA:
        _DATA[key] = (*load_data(cfg), Sources(teacher=zoo.load("teacher")))
    return _DATA[key]


def head_accuracy(trained: Trained, test: Split) -> float | None:
    """Test accuracy (%) of the DRG head (the deepest one when there are several), or None without a head."""
    objective = trained.extras.get("objective")
    if objective is None or not len(objective.heads):
        return None
    correct = 0
    with torch.no_grad(), eval_mode(trained.student), eval_mode(objective):
        for x, y in Loader(test, 1000, shuffle=False):
            _, heads = objective.head_logits(trained.student, x)
            correct += int((list(heads.values())[-1].argmax(1) == y).sum())
    return round(100 * correct / len(test), 2)


def run_one(regime: str, arch: str, method: str, optimizer: str, seed: int) -> dict[str, Any]:
    """Train and score one run. The ablation arms are `SelfKD` (CE alone: neither term, same loop, no head);
    Hinton KD is the registered method, under the paper's SGD when `optimizer` is 'sgd'."""
    torch.set_num_threads(1)
    cfg = REGIMES[regime].config(arch)
    train, test, sources = _data(cfg)
    ctx = Context(cfg, train, sources)
    start = time.perf_counter()
    if method == "hinton-kd":
        trained = get_method(method).train(ctx, seed, optimizer=paper_sgd(cfg.epochs) if optimizer == "sgd" else None)
    elif optimizer == "sgd":
        trained = SelfKD("sgd", drg=method in ("self-drg", "self-drg-dsr"),
                         dsr=method in ("self-dsr", "self-drg-dsr")).train(ctx, seed)
    else:
        trained = get_method(method).train(ctx, seed)
    mid = time.perf_counter()
    scores = evaluate_student(trained.student, eval_train_split(cfg, train), test, trained.trains_head)
    row = {k: v for k, v in scores.items() if k in COLUMNS}  # all from the trained head (trains_head)
    return {"arch": arch, "method": method, "optimizer": optimizer, "seed": seed, "config": cfg.digest(),
            "epochs": cfg.epochs, "epoch_size": cfg.epoch_size, **row, "train_seconds": round(mid - start, 1),
            "eval_seconds": round(time.perf_counter() - mid, 1), "regime": regime,
            "train_accuracy": round(100 * accuracy(trained.student, Loader(train, 1000, shuffle=False), "cpu"), 2),
            "head_accuracy": head_accuracy(trained, test)}


def run(regime: Regime, seeds: Sequence[int], workers: int, results: ResultsTable) -> None:
    """Make the regime's missing rows on `workers` processes (one thread each), each added as it ends."""
    todo = results.todo(regime.runs(seeds))
    print(f"{results.path}: {regime.name}, {len(todo)} run(s) to do on {workers} worker(s)", flush=True)
    if todo:
        results.check_writable()  # a finished committed table is only reported

    def log(row: dict[str, Any]) -> None:
        results.add(row)
        print(f"{row['arch']} {row['method']} {row['optimizer']} seed {row['seed']}: test {row['accuracy']}%, "
              f"train {row['train_accuracy']}%, mAP {row['map_e']}/{row['map_c']} ({row['train_seconds']} s)",
              flush=True)
    if workers == 1:
        for key in todo:
            log(run_one(regime.name, *key[1:]))
        return
    with ProcessPoolExecutor(workers) as pool:
        for job in as_completed([pool.submit(run_one, regime.name, *key[1:]) for key in todo]):
            log(job.result())


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (arch, optimizer, method) of one regime's rows, with the gains over CE
    alone (same arch and optimiser) paired by seed; `train_accuracy` None where rows lack it."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["optimizer"], r["method"]), []).append(r)
    out = []
    for (arch, opt, method), mine in groups.items():
        entry: dict[str, Any] = {"arch": arch, "optimizer": opt, "method": method, "seeds": len(mine)}
        for key in ("accuracy", "map_e", "map_c", "train_seconds", "train_accuracy", "head_accuracy"):
            values = [r[key] for r in mine if r.get(key) is not None]
            entry[key] = mean_std(values) if values else None
        base = {r["seed"]: r for r in groups.get((arch, opt, "student-ce"), [])}
        for key in ("accuracy", "map_e", "map_c"):
            pairs = [(int(r["seed"]), r[key] - base[r["seed"]][key]) for r in mine if r["seed"] in base]
            entry[f"paired_{key}"] = pairs if method != "student-ce" else []
            entry[f"gain_{key}"] = mean_std([d for _, d in pairs]) if pairs and method != "student-ce" else None
        out.append(entry)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda e: (e["arch"] != "student", e["optimizer"], order.get(e["method"], 99)))


def _pm(pair: tuple[float, float] | None, sign: str = "") -> str:
    return "" if pair is None else f"{pair[0]:{sign}.2f} ± {pair[1]:.2f}"


SHOWN = ("epochs", "epoch_size", "batch_size", "train_size", "test_size", "augment", "kd_temperature", "lr",
         "lr_drop_epoch", "lr_low")
"""The configuration fields a regime's section names (the rest are the defaults of every table)."""


def regime_markdown(regime: Regime, rows: Sequence[dict[str, Any]], quick: bool | None = None) -> str:
    """One regime's section: mean ± sample std over seeds, the train-test gap, and each method's accuracy
    and mAP gains over CE alone, per seed and on average."""
    lines = [f"## Regime `{regime.name}`: {regime.summary}", "",
             f"Configuration digests {regime.digests(quick)}: " + ", ".join(
                 f"{k}={getattr(regime.config('', quick), k)}" for k in SHOWN) + " (lr fields: Adam rows only).", "",
             "| arch | optimiser | method | seeds | test accuracy | train accuracy | DRG head | gain (acc) | mAP (e) "
             "| gain (mAP e) | mAP (c) | gain (mAP c) | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    entries = summary(rows)
    for e in entries:
        cells = [_pm(e["accuracy"]), _pm(e["train_accuracy"]), _pm(e["head_accuracy"]), _pm(e["gain_accuracy"], "+"),
                 _pm(e["map_e"]), _pm(e["gain_map_e"], "+"), _pm(e["map_c"]), _pm(e["gain_map_c"], "+"),
                 f"{e['train_seconds'][0]:.0f}"]
        lines.append(f"| {e['arch']} | {e['optimizer']} | {e['method']} | {e['seeds']} | " + " | ".join(cells) + " |")
    paired = [e for e in entries if e["paired_accuracy"]]
    if paired:
        lines += ["", "Paired differences against CE alone, by seed (test accuracy points; mAP (e) points):", ""]
        for e in paired:
            per_seed = ", ".join(f"s{s}: {a:+.2f} / {m:+.2f}" for (s, a), (_, m) in zip(e["paired_accuracy"],
                                                                                      e["paired_map_e"]))
            lines.append(f"- {e['arch']}, {e['optimizer']}, {e['method']}: {per_seed}")
    return "\n".join(lines) + "\n"


def markdown(rows: Sequence[dict[str, Any]], command: str, quick: bool | None = None) -> str:
    """The report of every regime with rows (accuracy from the trained head; mAP 11-point, queries = test,
    database = the regime's train subset, penultimate features, e = Euclidean, c = cosine)."""
    lines = ["# Self-distillation (DRG, DSR) on Fashion-MNIST", "",
             f"Generated by `{command}` from `self-distillation.csv`. Mean ± sample std over seeds; gains are "
             "paired by seed against CE alone with the same architecture and optimiser. Accuracy on the full test "
             "set from the trained head; mAP 11-point with queries = test set, database = the regime's train "
             "subset (e = Euclidean, c = cosine). Train seconds were measured on a shared 2-core machine.", ""]
    for regime in REGIMES.values():
        mine = regime.rows(rows, quick)
        if mine:
            lines.append(regime_markdown(regime, mine, quick))
    return "\n".join(lines)


def self_distillation_views(images: int = 6, epochs: int = 3, seed: int = 0, refresh: bool = False) -> dict[str, Any]:
    """Cached (results/precomputed): a student trained `epochs` epochs of 12k images with DRG heads on
    stage1 and stage2 and DSR; for `images` test images: the images, both attention masks (channel mean),
    and the logits of a random-init and of the trained student (sorted softmax is drawn from them)."""
    params = {"images": images, "epochs": epochs, "seed": seed, "stages": ["stage1", "stage2"], "v": 1}

    def compute() -> dict[str, Any]:
        torch.set_num_threads(1)
        cfg = RunConfig()
        train, test = load_data(cfg)
        x = torch.cat([test.x[test.y == c][:1] for c in range(images)])
        seed_everything(seed)
        before = build(cfg, "student").eval()
        with torch.no_grad():
            logits_before = before(x)
        trained = SelfKD(stages=params["stages"]).train(Context(cfg, train), seed, epochs=epochs)
        objective = trained.extras["objective"]
        with torch.no_grad():
            logits_after = trained.student(x)
        masks = objective.attention_masks(trained.student, x)
        return {"images": test.denormalise(x)[:, 0].tolist(), "classes": list(test.info.class_names[:images]),
                "masks": {s: m.tolist() for s, m in masks.items()},
                "logits_before": logits_before.tolist(), "logits_after": logits_after.tolist()}

    return cached("self-distillation-views", params, compute, refresh=refresh)


def main(argv: Sequence[str] | None = None) -> None:
    """`run` (default) or `report`; every flag is checked before any work."""
    parser = argparse.ArgumentParser(prog="python -m indistill_lab.experiments.self_distillation",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["run", "report"], default="run")
    parser.add_argument("--regime", choices=list(REGIMES), default="overfit")
    parser.add_argument("--seeds", nargs="+", default=["3"], help="a count (3: seeds 0 1 2), seeds, or ranges (2-2)")
    parser.add_argument("--workers", type=int, default=1, help="processes (each single-threaded)")
    parser.add_argument("--update", action="store_true", help="allow adding to the committed table")
    parser.add_argument("--out", type=Path, default=None, help="write the table under DIR instead of results/")
    args = parser.parse_args(argv)
    seeds = seeds_from(args.seeds)
    positive("--workers", args.workers)
    results = table(args.update, args.out)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("run", "report")]
    if args.command == "run":
        run(REGIMES[args.regime], seeds, args.workers, results)
    rows = results.rows()
    if not rows:
        raise UsageError(f"{results.path} has no rows yet: run `python -m indistill_lab.experiments.self_distillation "
                         "run` first.")
    command = " ".join(["python -m indistill_lab.experiments.self_distillation run", *given])
    if results.write_report(".md", markdown(rows, command)):  # False: unchanged, or committed without --update
        print(f"wrote {results.path.with_suffix('.md')}", flush=True)
    else:
        counts = {name: len(regime.rows(rows)) for name, regime in REGIMES.items()}
        print(f"{results.path}: rows per regime {counts}; report {results.path.with_suffix('.md')} left as it is "
              "(unchanged, or committed: --update rewrites it)", flush=True)


if __name__ == "__main__":
    cli(main)
