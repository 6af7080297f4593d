"""The critical-period experiments of notebook 04, under Achille et al.'s protocol, sized for a CPU.

    python -m indistill_lab.experiments.critical_periods --seeds 3

For each seed: a clean run; a blur deficit during the first N epochs followed by the SAME clean training
for every N (`clean_epochs`); a deficit window of fixed length at later onsets, every run of equal length;
the Fisher trace per layer measured after every epoch of every run; and clean runs under the other
protocols (no weight decay, Adam) for the Fisher comparison. One CSV row per (run, epoch), appended when
a run finishes, so a rerun skips the finished runs. Then results/critical-periods.md and .png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import REPO_ROOT
from ..critical_periods import PROTOCOLS, critical_period, deficit_run
from ..data import load_split
from ..report import markdown_table
from .tables import append_result, mean_std, read_results

CSV = REPO_ROOT / "results" / "critical-periods.csv"
LAYERS = ("stage1", "stage2", "stage3", "fc1", "classifier")
KEY = ["config", "protocol", "deficit_start", "deficit_epochs", "total_epochs", "seed"]
COLUMNS = [*KEY, "step", "images_seen", "epoch", "lr", "blurred", "val_acc", *[f"fisher_{k}" for k in LAYERS],
           "fisher_total", "run_seconds"]


@dataclass(frozen=True)
class Setup:
    """Everything the grid depends on besides the conditions and seeds (its digest names the rows)."""

    model: str = "student"
    train_size: int = 10_000
    test_size: int = 2_000
    epoch_size: int = 5_000
    probe: int = 256
    factor: int = 4

    def digest(self) -> str:
        key = {**asdict(self), "protocols": {k: asdict(v) for k, v in PROTOCOLS.items()}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Condition:
    """One run's schedule: blurred during [deficit_start, deficit_start + deficit_epochs) of total_epochs."""

    protocol: str
    deficit_start: int
    deficit_epochs: int
    total_epochs: int


def grid(clean_epochs: int, deficits: Sequence[int], window: int, onsets: Sequence[int],
         deficit_protocols: Sequence[str], fisher_protocols: Sequence[str]) -> list[Condition]:
    """The runs of one seed. Per deficit protocol: a clean run of `window + clean_epochs` epochs (its
    accuracy after `clean_epochs` is the N = 0 point, as the lr depends only on the epoch), N blurred epochs
    then `clean_epochs` clean ones for each N, and a `window`-epoch deficit at each onset in a run of
    `window + clean_epochs` epochs (onset 0 is the N = window run). Per other protocol: the clean run only."""
    longest = window + clean_epochs
    out: list[Condition] = []
    for p in deficit_protocols:
        out.append(Condition(p, 0, 0, longest))
        out += [Condition(p, 0, n, n + clean_epochs) for n in deficits if n > 0]
        out += [Condition(p, o, window, longest) for o in onsets if o > 0]
    out += [Condition(p, 0, 0, longest) for p in fisher_protocols if p not in deficit_protocols]
    return list(dict.fromkeys(out))


def run_grid(setup: Setup, conditions: Sequence[Condition], seeds: Sequence[int], path: Path = CSV,
             log: Any = print) -> None:
    """Train every (condition, seed) whose rows are not in `path` yet, appending its rows when it ends."""
    torch.set_num_threads(1)
    done = {tuple(r[k] for k in KEY) for r in read_results(path)}
    train = load_split("fashion-mnist", "train", quick=False).subset(setup.train_size, seed=0)
    test = load_split("fashion-mnist", "test", quick=False).subset(setup.test_size, seed=0)
    probe = load_split("fashion-mnist", "test", quick=False).subset(setup.probe, seed=1).x
    for seed in seeds:
        for c in conditions:
            key = (setup.digest(), c.protocol, c.deficit_start, c.deficit_epochs, c.total_epochs, seed)
            if key in done:
                continue
            start = time.perf_counter()
            rows = deficit_run(train, test, probe, c.total_epochs, c.deficit_epochs, c.deficit_start, c.protocol,
                               setup.epoch_size, setup.model, setup.factor, seed)
            seconds = round(time.perf_counter() - start, 1)
            for row in rows:
                append_result(path, {**dict(zip(KEY, key)), **row, "run_seconds": seconds}, COLUMNS)
            log(f"{c} seed {seed}: final clean accuracy {rows[-1]['val_acc']:.4f} ({seconds:.0f} s)")


def _runs(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped by run (KEY), in step order."""
    runs: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault(tuple(r[k] for k in KEY), []).append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in runs.items()}


def accuracy_at(rows: Sequence[dict[str, Any]], protocol: str, deficit_start: int, deficit_epochs: int,
                total_epochs: int, epoch: int | None = None) -> dict[int, float]:
    """Clean test accuracy per seed of one condition, after `epoch` (default: the last) epochs."""
    out = {}
    for key, run in _runs(rows).items():
        if key[1:5] == (protocol, deficit_start, deficit_epochs, total_epochs):
            at = total_epochs if epoch is None else epoch
            out[key[5]] = next(float(r["val_acc"]) for r in run if r["epoch"] == at)
    return out


def fisher_curves(rows: Sequence[dict[str, Any]], protocol: str, total_epochs: int,
                  layer: str = "total") -> tuple[list[float], dict[int, list[float]]]:
    """Images seen and, per seed, the Fisher trace of `layer` over a clean run of `protocol`."""
    runs = {k[5]: v for k, v in _runs(rows).items() if k[1:5] == (protocol, 0, 0, total_epochs)}
    if not runs:
        raise KeyError(f"No clean {protocol} run of {total_epochs} epochs in the rows.")
    images = [float(r["images_seen"]) for r in next(iter(runs.values()))]
    return images, {seed: [float(r[f"fisher_{layer}"]) for r in run] for seed, run in runs.items()}


def mean_curve(curves: dict[int, list[float]]) -> list[float]:
    """Pointwise mean over seeds."""
    return [sum(v) / len(v) for v in zip(*curves.values())]


def _fmt(values: dict[int, float]) -> str:
    mean, std = mean_std(list(values.values()))
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def summary_markdown(rows: Sequence[dict[str, Any]], setup: Setup, args: argparse.Namespace) -> str:
    """The tables of results/critical-periods.md, from the CSV's rows of this setup."""
    rows = [r for r in rows if r["config"] == setup.digest()]
    longest = args.window + args.clean_epochs
    e = setup.epoch_size
    lines = ["# Critical learning periods on Fashion-MNIST (notebook 04)", "",
             f"Generated by `python -m indistill_lab.experiments.critical_periods` with "
             f"`{' '.join(args.argv)}` (config `{setup.digest()}`). {setup.model}, "
             f"{setup.train_size:,} training images (epochs of {e:,} images), clean test accuracy on "
             f"{setup.test_size:,} test images, Fisher trace on {setup.probe} other test images (labels sampled from "
             f"the model), blur = downsample {setup.factor}x and upsample back. Mean ± sample std over seeds "
             f"{args.seeds_list}. Protocols: " + "; ".join(f"`{k}` = {v}" for k, v in PROTOCOLS.items()) + ".", ""]
    for p in args.deficit_protocols:
        ref = accuracy_at(rows, p, 0, 0, longest, args.clean_epochs)
        table = [{"blurred first (images)": "0 (no deficit)", "final clean accuracy %": _fmt(ref), "change, points": ""}]
        for n in [n for n in args.deficits if n > 0]:
            acc = accuracy_at(rows, p, 0, n, n + args.clean_epochs)
            if acc:
                diffs = {s: acc[s] - ref[s] for s in acc if s in ref}
                table.append({"blurred first (images)": f"{n * e:,} ({n} epochs)",
                              "final clean accuracy %": _fmt(acc), "change, points": _fmt(diffs)})
        lines += [f"## `{p}`: deficit during the first N epochs, then {args.clean_epochs} clean epochs "
                  f"({args.clean_epochs * e:,} images) for every N", "", markdown_table(table), ""]
        ref_end = accuracy_at(rows, p, 0, 0, longest)
        table = [{"blurred window starts at (images)": "no deficit", "final clean accuracy %": _fmt(ref_end),
                  "change, points": ""}]
        for o in [0, *[o for o in args.onsets if o > 0]]:
            acc = accuracy_at(rows, p, o, args.window, longest)
            if acc:
                diffs = {s: acc[s] - ref_end[s] for s in acc if s in ref_end}
                table.append({"blurred window starts at (images)": f"{o * e:,} (epoch {o})",
                              "final clean accuracy %": _fmt(acc), "change, points": _fmt(diffs)})
        lines += [f"## `{p}`: a {args.window}-epoch ({args.window * e:,}-image) deficit window at different "
                  f"onsets, every run {longest} epochs ({longest * e:,} images)", "", markdown_table(table), ""]
    table = []
    for p in dict.fromkeys([*args.deficit_protocols, *args.fisher_protocols]):
        for layer in [*LAYERS, "total"]:
            try:
                images, curves = fisher_curves(rows, p, longest, layer)
            except KeyError:
                continue
            mean = mean_curve(curves)
            period = critical_period(images, mean)
            per_seed = [critical_period(images, c).end for c in curves.values()]
            table.append({"protocol": p, "layer": layer,
                          "tr F first / max / last": f"{mean[0]:.3g} / {max(mean):.3g} / {mean[-1]:.3g}",
                          "critical-period end (images)": "none" if period.end is None else f"{period.end:,.0f}",
                          "per seed": ", ".join("none" if x is None else f"{x:,.0f}" for x in per_seed),
                          "reading (mean trace)": period.reason})
    lines += ["## Fisher trace over the clean runs (mean over seeds) and the measured end of the critical period",
              "", "`critical_period` (min_drop 0.3): the end is the time of the trace's first clear peak, a maximum "
              "it later falls below 70% of before rising past it; otherwise none (no peak within the run).", "",
              markdown_table(table), ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The CLI; the defaults are the sizes of the committed results."""
    p = argparse.ArgumentParser(prog="python -m indistill_lab.experiments.critical_periods", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 (default 3)")
    p.add_argument("--train-size", type=int, default=Setup.train_size)
    p.add_argument("--test-size", type=int, default=Setup.test_size)
    p.add_argument("--epoch-size", type=int, default=Setup.epoch_size, help="images per epoch")
    p.add_argument("--clean-epochs", type=int, default=20, help="clean epochs after a first-N deficit")
    p.add_argument("--deficits", type=int, nargs="+", default=[8, 16], help="N, blurred epochs at the start")
    p.add_argument("--window", type=int, default=8, help="length of the deficit window at later onsets")
    p.add_argument("--onsets", type=int, nargs="*", default=[8, 16], help="epochs at which the window starts")
    p.add_argument("--deficit-protocols", nargs="+", default=["sgd-wd"], choices=list(PROTOCOLS))
    p.add_argument("--fisher-protocols", nargs="*", default=["sgd", "adam"], choices=list(PROTOCOLS),
                   help="protocols that get a clean run only (Fisher comparison)")
    p.add_argument("--csv", type=Path, default=CSV)
    args = p.parse_args(argv)
    args.argv = ["--seeds", str(args.seeds)] if argv is None else list(argv)
    args.seeds_list = list(range(args.seeds))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the missing runs of the grid, then write the markdown summary and the PNG beside the CSV."""
    import sys

    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv) or ["(defaults)"]
    setup = Setup(train_size=args.train_size, test_size=args.test_size, epoch_size=args.epoch_size)
    conditions = grid(args.clean_epochs, args.deficits, args.window, args.onsets, args.deficit_protocols,
                      args.fisher_protocols)
    run_grid(setup, conditions, args.seeds_list, args.csv)
    rows = read_results(args.csv)
    args.csv.with_suffix(".md").write_text(summary_markdown(rows, setup, args))


if __name__ == "__main__":
    main()
