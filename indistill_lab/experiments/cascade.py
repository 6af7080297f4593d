"""The cascade experiment (issue 11, docs/cascade.md): student pruning level x number of teaching assistants x
seed, against two baselines with the same number of kept filters: the pretrained network pruned once by
relative L1 (the cascade's initial mask) then fine-tuned with CE, or then distilled from the unpruned network.

    python -m indistill_lab.experiments.cascade --seeds 0 1 2     # results/cascade.csv, .md, .png

The report covers every full-budget run in the cache, whichever command made it (the committed table: seeds
0, 1, 2 for every level and number of assistants).

Each run is cached as JSON in results/precomputed/cascade/ (so the grid resumes, seeds can run in parallel
processes, and notebook 08 reads it instantly); the report is rebuilt from the cache.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import zoo
from ..cache import CACHE_DIR, cache_path, cached
from ..cascade import Cascade, CascadeLoss, cascade_levels
from ..config import REPO_ROOT, quick_mode, seed_everything
from ..data import Split, load_split
from ..evaluation import evaluate_student
from ..feature_cache import IndexedLoader
from ..methods.cascade import CascadeSchedule, StudentObjective, train_cascade
from ..train import Trainer, cross_entropy
from .tables import mean_std

RUN_DIR = CACHE_DIR / "cascade"
KINDS = ("cascade", "l1-finetune", "l1-kd")


@dataclass(frozen=True)
class Budget:
    """A CPU-sized protocol: `joint_epochs` + `student_epochs` loader epochs of `epoch_size` images (the
    baselines get the same total), evaluation on class-balanced subsets of `eval_train` / `eval_test`."""

    joint_epochs: int = 3
    student_epochs: int = 2
    epoch_size: int = 6000
    eval_train: int = 10_000
    eval_test: int = 2000
    lr: float = 1e-3

    @classmethod
    def default(cls) -> Budget:
        """The committed budget, or a tiny one in quick mode."""
        return cls(1, 1, 256, 1000, 500) if quick_mode() else cls()


def _data(budget: Budget) -> tuple[Split, Split, Split]:
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    return train, train.subset(budget.eval_train), test.subset(budget.eval_test)


def run(kind: str, level: float, assistants: int, seed: int, budget: Budget) -> dict[str, Any]:
    """One run, trained and evaluated: a JSON-ready row (masks of a cascade run as '0101' strings)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}: use one of {', '.join(KINDS)}.")
    seed_everything(seed)
    network = zoo.load("auxiliary")
    train, db, queries = _data(budget)
    loader = IndexedLoader(train, 128, shuffle=True, seed=seed, epoch_size=budget.epoch_size)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if kind == "cascade":
        schedule = CascadeSchedule(budget.joint_epochs, budget.student_epochs, lr=budget.lr, low_epochs=0,
                                   record_every=5)
        result = train_cascade(network, cascade_levels(level, assistants), loader, schedule,
                               (train.x[-2000:], train.y[-2000:]), seed)
        student, report = result.student, result.report
        extra = {"swaps": result.swaps, "layers": result.cascade.layers, "sizes": result.cascade.sizes,
                 "snapshots": [{**s, "masks": ["".join(map(str, m)) for m in s["masks"]]} for s in result.snapshots],
                 "history": result.history.epochs}
    else:
        student, report = Cascade(network, [level, 0.0]).export(0)
        student.train().requires_grad_(True)
        objective = (cross_entropy if kind == "l1-finetune"
                     else StudentObjective([network], CascadeLoss(network, []), {}))
        Trainer(student, objective, lr=budget.lr, seed=seed, progress=False).fit(
            loader, budget.joint_epochs + budget.student_epochs)
    seconds = time.perf_counter() - start
    scores = evaluate_student(student.eval(), db, queries)
    return {"kind": kind, "level": level, "assistants": assistants if kind == "cascade" else None, "seed": seed,
            **{k: scores[k] for k in ("accuracy", "map_e", "map_c")}, "params": report.params_after,
            "flops": report.flops_after, "params_full": report.params_before, "flops_full": report.flops_before,
            "widths": list(report.widths_after.values()), "train_seconds": round(seconds, 1), **extra}


def _key(kind: str, level: float, assistants: int, seed: int, budget: Budget, quick: bool) -> dict[str, Any]:
    return {"kind": kind, "level": level, "assistants": assistants if kind == "cascade" else None,
            "seed": seed, "budget": asdict(budget), "quick": quick}


def cached_run(kind: str, level: float, assistants: int, seed: int, budget: Budget,
               refresh: bool = False) -> dict[str, Any]:
    """`run`, stored in results/precomputed/cascade/ (keyed by every argument and quick mode)."""
    params = _key(kind, level, assistants, seed, budget, quick_mode())
    return cached("cascade-run", params, lambda: run(kind, level, assistants, seed, budget), refresh, RUN_DIR)


def _todo(levels: Sequence[float], assistants: Sequence[int], seeds: Sequence[int]) -> list[tuple]:
    return [(k, lv, a, s) for s in seeds for lv in levels
            for k, a in [("l1-finetune", 0), ("l1-kd", 0)] + [("cascade", a) for a in assistants]]


def load_grid(levels: Sequence[float] = (0.3, 0.6, 0.8), assistants: Sequence[int] = (0, 1, 2),
              seeds: Sequence[int] = (0, 1, 2)) -> list[dict[str, Any]]:
    """The committed full-budget runs (never computes, in quick mode too; runs not yet made are left out)."""
    paths = [cache_path("cascade-run", _key(*args, Budget(), False), RUN_DIR) for args in _todo(levels, assistants, seeds)]
    return [json.loads(p.read_text())["result"] for p in paths if p.is_file()]


def grid(levels: Sequence[float] = (0.3, 0.6, 0.8), assistants: Sequence[int] = (0, 1, 2),
         seeds: Sequence[int] = (0,), budget: Budget | None = None,
         log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every (level, assistants) cascade and both baselines per level, for each seed (cached runs)."""
    budget = budget or Budget.default()
    todo = _todo(levels, assistants, seeds)
    rows = []
    for i, args in enumerate(todo, 1):
        row = cached_run(*args, budget)
        rows.append(row)
        log(f"[{i}/{len(todo)}] {label(row)} seed {row['seed']}: acc {row['accuracy']}, mAP e {row['map_e']}, "
            f"{row['params']:,} params ({row['train_seconds']} s)")
    return rows


def label(row: dict[str, Any]) -> str:
    """'cascade, 1 TA', 'l1-kd', ... for tables and legends."""
    if row["kind"] != "cascade":
        return row["kind"]
    return f"cascade, {row['assistants']} TA" + ("s" if row["assistants"] != 1 else "")


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (level, label): accuracy, mAP, params, FLOPs."""
    out = []
    for key in dict.fromkeys((r["level"], label(r)) for r in rows):
        mine = [r for r in rows if (r["level"], label(r)) == key]
        out.append({"level": key[0], "label": key[1], "seeds": len(mine),
                    **{m: mean_std([float(r[m]) for r in mine]) for m in ("accuracy", "map_e", "map_c", "params",
                                                                         "flops")}})
    return out


def write_report(rows: Sequence[dict[str, Any]], budget: Budget, command: str,
                 folder: Path = REPO_ROOT / "results", name: str = "cascade") -> None:
    """results/<name>.csv (one row per run), .md (mean ± std table with the command) and .png."""
    from ..viz.cascade import results_png

    cols = ["kind", "level", "assistants", "seed", "accuracy", "map_e", "map_c", "params", "flops", "widths",
            "train_seconds"]
    with (folder / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    full = rows[0]
    intro = (f"Generated by `{command}`. Pretrained network: the zoo's CE auxiliary (16/32/64 convs, "
             f"{full['params_full']:,} params, {full['flops_full']:,} MACs); pruned fraction k of the masked filters "
             "(stage 2 and 3 convs; stage 1 is never masked). Baselines keep the same filters as the cascade's "
             "initial mask (global relative L1). mean ± std over seeds; accuracy and 11-point mAP in %, "
             f"queries = {budget.eval_test} test images, database = {budget.eval_train} train images.")
    lines = ["# Cascaded teaching assistants on Fashion-MNIST", "", intro, "",
             "| k | method | seeds | accuracy | mAP (e) | mAP (c) | params | MACs |", "|---|---|---|---|---|---|---|---|"]
    for s in summarise(rows):
        cells = [f"{s[m][0]:.2f} ± {s[m][1]:.2f}" for m in ("accuracy", "map_e", "map_c")]
        lines.append(f"| {s['level']} | {s['label']} | {s['seeds']} | " + " | ".join(cells)
                     + f" | {s['params'][0]:,.0f} | {s['flops'][0]:,.0f} |")
    lines += ["", "Budget: " + ", ".join(f"{k}={v}" for k, v in asdict(budget).items()), ""]
    (folder / f"{name}.md").write_text("\n".join(lines))
    results_png(summarise(rows), folder / f"{name}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m indistill_lab.experiments.cascade", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.6, 0.8])
    parser.add_argument("--assistants", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget = Budget.default()
    rows = grid(args.levels, args.assistants, args.seeds, budget)
    if not quick_mode():  # the report covers every committed run, whichever command made it
        rows = load_grid(seeds=range(10))
    write_report(rows, budget, "python -m indistill_lab.experiments.cascade [--seeds ...] [--levels ...]")


if __name__ == "__main__":
    main()
