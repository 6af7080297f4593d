"""The self-distillation ablation on Fashion-MNIST: CE alone, + DRG, + DSR, + both (and Hinton KD from the
zoo teacher as the external-teacher reference), for the kit's student and auxiliary architectures, Adam
under the run configuration and the paper's SGD; one CSV row per run, then a markdown table.

    python -m indistill_lab.experiments.self_distillation --seeds 3 --workers 2

Resumable: rows already in `results/self-distillation.csv` for the same configuration are skipped. Each
run is scored like every reproduce row (`evaluation.evaluate_student`: test accuracy, retrieval mAP with
queries = test set, database = train set). Also `self_distillation_views`: the cached arrays notebook 09
draws (attention masks and sorted softmax outputs before and after a short self-distillation run).
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import zoo
from ..cache import cached
from ..config import REPO_ROOT, seed_everything
from ..data import Split
from ..evaluation import evaluate_student
from ..methods import Context, get_method
from ..methods.self_distillation import SelfKD
from ..pipeline import RunConfig, build, load_data
from ..sources import Sources
from .tables import mean_std

COLUMNS = ["arch", "method", "optimizer", "seed", "config", "epochs", "epoch_size", "accuracy", "map_e", "map_c",
           "map_std_e", "map_std_c", "top100_e", "top100_c", "train_seconds", "eval_seconds"]
ABLATION = ("student-ce", "self-drg", "self-dsr", "self-drg-dsr")
METHODS = (*ABLATION, "hinton-kd")
SGD_METHODS = ("student-ce", "self-drg-dsr")
RESULTS = REPO_ROOT / "results" / "self-distillation"
COMMAND = "python -m indistill_lab.experiments.self_distillation --seeds 3 --workers 2"
BUDGET = RunConfig(epochs=8, lr_drop_epoch=6, train_size=20_000)
"""The CPU budget of the committed table: 8 epochs of 12k images (lr 1e-4 for the last 2), a 20k-image train
subset (which is also the retrieval database), the full test set; otherwise the default run configuration."""


def runs(seeds: Sequence[int], archs: Sequence[str], sgd_archs: Sequence[str]) -> list[tuple[str, str, str, int]]:
    """(arch, method, optimizer, seed) in order of priority, so a partial table answers the main question
    first: the ablation per architecture (seed-major), then the paper's SGD, then Hinton KD."""
    todo = [(arch, m, "adam", s) for arch in archs for s in seeds for m in ABLATION]
    todo += [(arch, m, "sgd", s) for arch in sgd_archs for s in seeds for m in SGD_METHODS]
    return todo + [(arch, "hinton-kd", "adam", s) for arch in archs for s in seeds]


_DATA: dict[tuple[int | None, int | None], tuple[Split, Split, Sources]] = {}


def _data(cfg: RunConfig) -> tuple[Split, Split, Sources]:
    """(train, test, zoo teacher) at the configuration's sizes, loaded once per process."""
    key = (cfg.train_size, cfg.test_size)
    if key not in _DATA:
        _DATA[key] = (*load_data(cfg), Sources(teacher=zoo.load("teacher")))
    return _DATA[key]


def run_one(cfg: RunConfig, arch: str, method: str, optimizer: str, seed: int) -> dict[str, Any]:
    """Train and score one run. CE alone under SGD is `SelfKD` with neither term (same loop, no head)."""
    torch.set_num_threads(1)
    cfg = RunConfig(**{**asdict(cfg), "student": arch})
    train, test, sources = _data(cfg)
    if optimizer == "sgd":
        recipe = SelfKD("sgd", drg=method != "student-ce", dsr=method != "student-ce")
    else:
        recipe = get_method(method)
    start = time.perf_counter()
    trained = recipe.train(Context(cfg, train, sources), seed)
    mid = time.perf_counter()
    row = evaluate_student(trained.student, train, test, trained.trains_head)
    return {"arch": arch, "method": method, "optimizer": optimizer, "seed": seed, "config": cfg.digest(),
            "epochs": cfg.epochs, "epoch_size": cfg.epoch_size, **row, "train_seconds": round(mid - start, 1),
            "eval_seconds": round(time.perf_counter() - mid, 1)}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of the results CSV with numbers parsed (empty when absent)."""
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: (v if k in ("arch", "method", "optimizer", "config") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def _append(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (arch, optimizer, method), with the accuracy gain over CE alone."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["optimizer"], r["method"]), []).append(r)
    out = []
    for (arch, opt, method), mine in groups.items():
        entry = {"arch": arch, "optimizer": opt, "method": method, "seeds": len(mine)}
        for key in ("accuracy", "map_e", "map_c", "train_seconds"):
            entry[key] = mean_std([r[key] for r in mine])
        base = {r["seed"]: r for r in groups.get((arch, opt, "student-ce"), [])}
        for key in ("accuracy", "map_e"):
            gains = [r[key] - base[r["seed"]][key] for r in mine if r["seed"] in base]
            entry[f"gain_{key}"] = mean_std(gains) if gains and method != "student-ce" else None
        out.append(entry)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda e: (e["arch"] != "student", e["optimizer"], order.get(e["method"], 99)))


def _pm(pair: tuple[float, float] | None, sign: str = "") -> str:
    return "" if pair is None else f"{pair[0]:{sign}.2f} ± {pair[1]:.2f}"


def markdown(rows: Sequence[dict[str, Any]], cfg: RunConfig) -> str:
    """The table: mean ± sample std over seeds; 'gain' = accuracy minus CE alone, paired by seed."""
    lines = ["# Self-distillation (DRG, DSR) on Fashion-MNIST", "",
             (f"Generated by `{COMMAND}` (config `{cfg.digest()}` for the student). Mean ± sample std over seeds; "
              "accuracy on the test set from the trained head; mAP 11-point, queries = test, database = the "
              f"{cfg.train_size or 'full'}-image train set, penultimate features (e = Euclidean, c = cosine). Gains are "
              "paired by seed against CE alone with the same architecture and optimiser. Adam = the run "
              "configuration's protocol; SGD = the paper's (0.1, momentum 0.9, wd 5e-4, lr x0.1 at 30/60/80% of the "
              "epochs). Train seconds were measured on a shared, oversubscribed 2-core machine."), "",
             "| arch | optimiser | method | seeds | accuracy | gain (acc) | mAP (e) | gain (mAP e) | mAP (c) | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary(rows):
        cells = [_pm(e["accuracy"]), _pm(e["gain_accuracy"], "+"), _pm(e["map_e"]), _pm(e["gain_map_e"], "+"),
                 _pm(e["map_c"]), f"{e['train_seconds'][0]:.0f}"]
        lines.append(f"| {e['arch']} | {e['optimizer']} | {e['method']} | {e['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "Configuration: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()), ""]
    return "\n".join(lines)


def self_distillation_table(cfg: RunConfig = BUDGET, seeds: Sequence[int] = (0, 1, 2),
                            archs: Sequence[str] = ("student", "auxiliary"), sgd_archs: Sequence[str] = ("student",),
                            workers: int = 1, path: Path = RESULTS) -> list[dict[str, Any]]:
    """Every run not yet in `<path>.csv` (one process per worker, one thread each), then `<path>.md`."""
    csv_path = Path(path).with_suffix(".csv")
    digest = {a: RunConfig(**{**asdict(cfg), "student": a}).digest() for a in {*archs, *sgd_archs}}
    done = {(r["arch"], r["method"], r["optimizer"], int(r["seed"])) for r in read_rows(csv_path)
            if r["config"] == digest.get(r["arch"])}
    todo = [r for r in runs(seeds, archs, sgd_archs) if r not in done]
    print(f"{len(done)} runs done, {len(todo)} to do on {workers} worker(s)", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(run_one, cfg, *r): r for r in todo}
        for i, future in enumerate(as_completed(futures), 1):
            row = future.result()
            _append(csv_path, row)
            print(f"[{i}/{len(todo)}] {row['arch']} {row['method']} {row['optimizer']} seed {row['seed']}: "
                  f"acc {row['accuracy']}, mAP {row['map_e']}/{row['map_c']} ({row['train_seconds']} s)", flush=True)
    rows = [r for r in read_rows(csv_path) if r["config"] == digest.get(r["arch"])]
    Path(path).with_suffix(".md").write_text(markdown(rows, cfg))
    return rows


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
    """Command line: `--seeds N --workers W` (at `BUDGET`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    args = parser.parse_args(argv)
    self_distillation_table(seeds=range(args.seeds), workers=args.workers)
    print(Path(RESULTS).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
