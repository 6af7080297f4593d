"""The critical-period experiments of notebook 04, under Achille et al.'s protocol, sized for a CPU.

    python -m indistill_lab.experiments.critical_periods --seeds 3

For each seed: a clean run; a blur deficit during the first N epochs followed by the SAME clean training
for every N (`clean_epochs`); a deficit window of fixed length at later onsets, every run of equal length;
the Fisher trace per layer measured during every run (densely in the first epoch, then after each epoch);
and clean runs under the other protocols (no weight decay, Adam) for the Fisher comparison. One CSV row per
(run, measurement), a run's rows appended when it finishes, so a rerun skips the finished runs. Then
results/critical-periods.md and .png. `Results` reads the CSV for notebook 04.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import HOME
from ..critical_periods import PROTOCOLS, CriticalPeriod, critical_period, deficit_run
from ..data import Split, load_split
from ..errors import cli, positive, seeds_from
from ..report import markdown_table
from ..results import check_writable, results_dir, write_report
from ..viz.critical_periods import Curves, results_png
from .tables import append_result, mean_std, read_results

CSV = HOME / "results" / "critical-periods.csv"
LAYERS = ("stage1", "stage2", "stage3", "fc1", "classifier")
KEY = ["config", "protocol", "deficit_start", "deficit_epochs", "total_epochs", "seed"]
COLUMNS = [*KEY, "step", "images_seen", "epoch", "lr", "blurred", "val_acc", *[f"fisher_{k}" for k in LAYERS],
           "fisher_total", "run_seconds"]


@dataclass(frozen=True)
class Setup:
    """Everything a run depends on besides its schedule and seed (its digest names the rows)."""

    model: str = "student"
    train_size: int = 10_000
    test_size: int = 2_000
    epoch_size: int = 5_000
    probe: int = 256
    factor: int = 4

    def digest(self) -> str:
        key = {**asdict(self), "protocols": {k: asdict(v) for k, v in PROTOCOLS.items()}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    def data(self) -> tuple[Split, Split, torch.Tensor]:
        """Training images, test images for the clean accuracy, probe images for the Fisher trace (other test
        images; their labels are not used), the same for every seed."""
        train = load_split("fashion-mnist", "train", quick=False).subset(self.train_size, seed=0)
        test = load_split("fashion-mnist", "test", quick=False)
        return train, test.subset(self.test_size, seed=0), test.subset(self.probe, seed=1).x


@dataclass(frozen=True)
class Condition:
    """One run's schedule: blurred during [deficit_start, deficit_start + deficit_epochs) of total_epochs."""

    protocol: str
    deficit_start: int
    deficit_epochs: int
    total_epochs: int


@dataclass(frozen=True)
class Grid:
    """The conditions of one seed (defaults: the committed results). Per deficit protocol: a clean run of
    `window + clean_epochs` epochs (its accuracy after `clean_epochs` is the N = 0 point: the lr depends only
    on the epoch and the run on its seed, so a shorter clean run is a prefix of it), N blurred epochs then
    `clean_epochs` clean ones for each N in `deficits`, and a `window`-epoch deficit at each of `onsets` in a
    run of `window + clean_epochs` epochs (onset 0 is the N = window run). Other protocols: the clean run."""

    clean_epochs: int = 20
    deficits: tuple[int, ...] = (8, 16)
    window: int = 8
    onsets: tuple[int, ...] = (8, 16)
    deficit_protocols: tuple[str, ...] = ("sgd-wd", "adam")
    fisher_protocols: tuple[str, ...] = ("sgd",)

    @property
    def longest(self) -> int:
        """Epochs of the clean runs and of the window runs."""
        return self.window + self.clean_epochs

    @property
    def protocols(self) -> list[str]:
        return list(dict.fromkeys([*self.deficit_protocols, *self.fisher_protocols]))

    def conditions(self) -> list[Condition]:
        out: list[Condition] = []
        for p in self.deficit_protocols:
            out.append(Condition(p, 0, 0, self.longest))
            out += [Condition(p, 0, n, n + self.clean_epochs) for n in self.deficits if n > 0]
            out += [Condition(p, o, self.window, self.longest) for o in self.onsets if o > 0]
        out += [Condition(p, 0, 0, self.longest) for p in self.fisher_protocols if p not in self.deficit_protocols]
        return list(dict.fromkeys(out))


def run_grid(setup: Setup, grid: Grid, seeds: Sequence[int], path: Path = CSV, log: Any = print,
             update: bool = False) -> None:
    """Train every (condition, seed) whose rows are not in `path` yet, appending its rows when it ends (a
    committed `path` only with `update`)."""
    torch.set_num_threads(1)
    done = {tuple(r[k] for k in KEY) for r in read_results(path)}
    if any((setup.digest(), c.protocol, c.deficit_start, c.deficit_epochs, c.total_epochs, s) not in done
           for s in seeds for c in grid.conditions()):
        check_writable(path, update)
    train, test, probe = setup.data()
    for seed in seeds:
        for c in grid.conditions():
            key = (setup.digest(), c.protocol, c.deficit_start, c.deficit_epochs, c.total_epochs, seed)
            if key in done:
                continue
            start = time.perf_counter()
            rows = deficit_run(train, test, probe, c.total_epochs, c.deficit_epochs, c.deficit_start, c.protocol,
                               setup.epoch_size, setup.model, setup.factor, seed)
            seconds = round(time.perf_counter() - start, 1)
            for row in rows:
                append_result(path, {**dict(zip(KEY, key)), **row, "run_seconds": seconds}, COLUMNS, update)
            log(f"{c} seed {seed}: final clean accuracy {rows[-1]['val_acc']:.4f} ({seconds:.0f} s)")


def fresh_deficit_run(n: int, seed: int = 3, setup: Setup = Setup(), grid: Grid = Grid()) -> dict[str, Any]:
    """One new run (not stored) of N = `n` blurred epochs then the grid's clean training, under its first
    deficit protocol, in the form `viz.diagnostics.DeficitExplorer` shows: {"deficit_epochs", "final_acc",
    "val_acc" (after each epoch)}."""
    train, test, probe = setup.data()
    rows = deficit_run(train, test, probe, n + grid.clean_epochs, n, 0, grid.deficit_protocols[0],
                       setup.epoch_size, setup.model, setup.factor, seed)
    accs = [r["val_acc"] for r in rows if r["val_acc"] is not None][1:]
    return {"deficit_epochs": n, "final_acc": accs[-1], "val_acc": accs}


@dataclass
class Results:
    """The committed rows of one setup and grid, read the ways notebook 04 and the summary need them."""

    setup: Setup = field(default_factory=Setup)
    grid: Grid = field(default_factory=Grid)
    path: Path = CSV

    def __post_init__(self) -> None:
        rows = [r for r in read_results(self.path) if r["config"] == self.setup.digest()]
        if not rows:
            raise FileNotFoundError(f"{self.path} has no rows of config {self.setup.digest()}; run "
                                    "`python -m indistill_lab.experiments.critical_periods --seeds 3` first.")
        self.runs: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            self.runs.setdefault(tuple(r[k] for k in KEY[1:]), []).append(r)
        for run in self.runs.values():
            run.sort(key=lambda r: r["step"])

    @property
    def seeds(self) -> list[int]:
        return sorted({k[4] for k in self.runs})

    def run(self, protocol: str, start: int, epochs: int, total: int, seed: int) -> list[dict[str, Any]]:
        """One run's rows (KeyError naming the run when it is missing)."""
        key = (protocol, start, epochs, total, seed)
        if key not in self.runs:
            raise KeyError(f"No run {key} (protocol, deficit start, deficit epochs, total epochs, seed) in the rows.")
        return self.runs[key]

    def accuracy(self, protocol: str, start: int, epochs: int, total: int,
                 after: int | None = None) -> dict[int, float]:
        """Clean test accuracy (%) per seed after `after` epochs (default: all) of one condition."""
        at = total if after is None else after
        return {s: 100 * float(next(r["val_acc"] for r in self.run(protocol, start, epochs, total, s)
                                    if r["epoch"] == at))
                for s in self.seeds if (protocol, start, epochs, total, s) in self.runs}

    def val_curve(self, protocol: str, start: int, epochs: int, total: int, upto: int | None = None) -> list[float]:
        """Mean over seeds of the clean test accuracy after each epoch 1..`upto` (default: all)."""
        per_seed = [[float(r["val_acc"]) for r in self.run(protocol, start, epochs, total, s)
                     if r["val_acc"] != "" and r["epoch"] >= 1][:upto] for s in self.seeds]
        return [sum(v) / len(v) for v in zip(*per_seed)]

    def first_n_changes(self, protocol: str = "sgd-wd") -> dict[int, dict[int, float]]:
        """N -> {seed: final accuracy after N blurred + clean_epochs clean epochs, minus the same seed's
        accuracy after clean_epochs clean epochs} in points (N = 0 gives zeros)."""
        g = self.grid
        ref = self.accuracy(protocol, 0, 0, g.longest, g.clean_epochs)
        out = {0: {s: 0.0 for s in ref}}
        for n in [n for n in g.deficits if n > 0]:
            acc = self.accuracy(protocol, 0, n, n + g.clean_epochs)
            out[n] = {s: acc[s] - ref[s] for s in acc}
        return out

    def window_changes(self, protocol: str = "sgd-wd") -> dict[int, dict[int, float]]:
        """Onset -> {seed: final accuracy with the window there, minus the same seed's clean run} (points)."""
        g = self.grid
        ref = self.accuracy(protocol, 0, 0, g.longest)
        return {o: {s: a - ref[s] for s, a in self.accuracy(protocol, o, g.window, g.longest).items()}
                for o in sorted({0, *g.onsets})}

    def fisher(self, layer: str = "total") -> dict[str, Curves]:
        """Protocol -> (images seen, {seed: Fisher trace of `layer`}) over its clean runs."""
        out = {}
        for p in self.grid.protocols:
            runs = {s: self.run(p, 0, 0, self.grid.longest, s) for s in self.seeds}
            images = [float(r["images_seen"]) for r in runs[self.seeds[0]]]
            out[p] = (images, {s: [float(r[f"fisher_{layer}"]) for r in run] for s, run in runs.items()})
        return out

    def periods(self, layer: str = "total") -> dict[str, CriticalPeriod]:
        """Protocol -> `critical_period` of the seed-mean Fisher trace of `layer`."""
        out = {}
        for p, (images, curves) in self.fisher(layer).items():
            out[p] = critical_period(images, [sum(v) / len(v) for v in zip(*curves.values())])
        return out

    def deficit_sweep(self, protocol: str = "sgd-wd") -> dict[str, Any]:
        """The seed means of the first-N runs in the form `viz.diagnostics.DeficitExplorer` shows, with the
        sample std over seeds of the final accuracy (`final_std`, a fraction like `final_acc`)."""
        g = self.grid
        conditions = [(0, 0, g.longest, g.clean_epochs)] + [(0, n, n + g.clean_epochs, None) for n in g.deficits if n > 0]
        runs = []
        for start, n, total, upto in conditions:
            finals = list(self.accuracy(protocol, start, n, total, upto).values())
            curve = self.val_curve(protocol, start, n, total, upto)
            runs.append({"deficit_epochs": n, "val_acc": curve, "final_acc": curve[-1],
                         "final_std": mean_std(finals)[1] / 100, "seeds": len(finals)})
        return {"runs": runs}


def _mean_std(values: dict[int, float]) -> str:
    mean, std = mean_std(list(values.values()))
    return f"{mean:+.2f} ± {std:.2f}"


def summary_markdown(results: Results, command: str) -> str:
    """results/critical-periods.md."""
    s, g, e = results.setup, results.grid, results.setup.epoch_size
    lines = ["# Critical learning periods on Fashion-MNIST (notebook 04)", "",
             f"Generated by `{command}` (config `{s.digest()}`): {s.model} from scratch, {s.train_size:,} training "
             f"images (epochs of {e:,} images), clean test accuracy on {s.test_size:,} test images, Fisher trace on "
             f"{s.probe} other test images (labels sampled from the model) after steps 2, 4, 8, 16, 24 and every "
             f"epoch; blur = downsample {s.factor}x, upsample back. Seeds {results.seeds} (initialisation and batch "
             "order); changes are paired by seed, mean ± sample std. Protocols (lr decays per epoch): "
             + "; ".join(f"`{k}` = {v.optimizer}, lr {v.lr:g} x {v.decay:g}^epoch, weight decay {v.weight_decay:g}"
                         for k, v in PROTOCOLS.items()) + ".", ""]
    for p in g.deficit_protocols:
        ref = results.accuracy(p, 0, 0, g.longest, g.clean_epochs)
        table = [{"blurred at the start": f"{n * e:,} images ({n} epochs)",
                  "final clean accuracy %": _mean_std({k: ref[k] + v for k, v in ch.items()}).lstrip("+"),
                  "change vs no deficit, points": _mean_std(ch) if n else ""}
                 for n, ch in results.first_n_changes(p).items()]
        lines += [f"## `{p}`: blurred for the first N epochs, then the same {g.clean_epochs} clean epochs "
                  f"({g.clean_epochs * e:,} images) for every N", "", markdown_table(table), ""]
        ref = results.accuracy(p, 0, 0, g.longest)
        table = [{"window starts at": f"{o * e:,} images (epoch {o})",
                  "final clean accuracy %": _mean_std({k: ref[k] + v for k, v in ch.items()}).lstrip("+"),
                  "change vs no deficit, points": _mean_std(ch)} for o, ch in results.window_changes(p).items()]
        lines += [f"## `{p}`: a {g.window}-epoch ({g.window * e:,}-image) blurred window at different onsets, "
                  f"every run {g.longest} epochs ({g.longest * e:,} images); no deficit: "
                  f"{_mean_std(ref).lstrip('+')} %", "", markdown_table(table), ""]
    table = []
    for layer in [*LAYERS, "total"]:
        for p, (images, curves) in results.fisher(layer).items():
            mean = [sum(v) / len(v) for v in zip(*curves.values())]
            period = critical_period(images, mean)
            per_seed = [critical_period(images, c).end for c in curves.values()]
            table.append({"layer": layer, "protocol": p,
                          "tr F before / max / end": f"{mean[0]:.3g} / {max(mean):.3g} / {mean[-1]:.3g}",
                          "end of the period (images)": "none" if period.end is None else f"{period.end:,.0f}",
                          "per seed": ", ".join("none" if x is None else f"{x:,.0f}" for x in per_seed),
                          "reading of the mean trace": period.reason})
    lines += [f"## Fisher trace over the clean runs ({g.longest * e:,} images) and the measured end of the "
              "critical period", "",
              "`critical_periods.critical_period` (min_drop 0.3): the end is the time of the trace's first clear "
              "peak, a maximum it later falls below 70% of before rising past it; none when there is no such "
              "peak within the run.", "", markdown_table(table), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the missing runs of the grid, then write the markdown summary and the PNG beside the CSV (a
    committed CSV and its report change only with --update)."""
    d = Grid()
    p = argparse.ArgumentParser(prog="python -m indistill_lab.experiments.critical_periods", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", default=[3], help="a count (3: seeds 0 1 2), several seeds (0 3 7) or ranges (2-4)")
    p.add_argument("--train-size", type=int, default=Setup.train_size)
    p.add_argument("--test-size", type=int, default=Setup.test_size)
    p.add_argument("--epoch-size", type=int, default=Setup.epoch_size, help="images per epoch")
    p.add_argument("--clean-epochs", type=int, default=d.clean_epochs, help="clean epochs after a first-N deficit")
    p.add_argument("--deficits", type=int, nargs="+", default=list(d.deficits), help="N, blurred epochs first")
    p.add_argument("--window", type=int, default=d.window, help="length of the deficit window at later onsets")
    p.add_argument("--onsets", type=int, nargs="*", default=list(d.onsets), help="epochs at which the window starts")
    p.add_argument("--deficit-protocols", nargs="+", default=list(d.deficit_protocols), choices=list(PROTOCOLS))
    p.add_argument("--fisher-protocols", nargs="*", default=list(d.fisher_protocols), choices=list(PROTOCOLS),
                   help="protocols that get a clean run only (Fisher comparison)")
    p.add_argument("--csv", type=Path, help="the table (default: critical-periods.csv in results/, results/quick/ in "
                   "quick mode, or $INDISTILL_OUT)")
    p.add_argument("--update", action="store_true", help="allow adding to a committed (git-tracked) table")
    args = p.parse_args(argv)
    seeds = seeds_from(args.seeds)
    for flag in ("train_size", "test_size", "epoch_size", "window"):
        positive("--" + flag.replace("_", "-"), getattr(args, flag))
    positive("--clean-epochs", args.clean_epochs, 0)
    args.csv = args.csv or results_dir() / CSV.name
    setup = Setup(train_size=args.train_size, test_size=args.test_size, epoch_size=args.epoch_size)
    grid = Grid(args.clean_epochs, tuple(args.deficits), args.window, tuple(args.onsets),
                tuple(args.deficit_protocols), tuple(args.fisher_protocols))
    run_grid(setup, grid, seeds, args.csv, update=args.update)
    results = Results(setup, grid, args.csv)
    command = " ".join(["python -m indistill_lab.experiments.critical_periods",
                        *(sys.argv[1:] if argv is None else argv)])
    if not write_report(args.csv.with_suffix(".md"), summary_markdown(results, command), args.update):
        return
    results_png(args.csv.with_suffix(".png"), results.fisher("total"),
                {p: results.first_n_changes(p) for p in grid.deficit_protocols},
                {p: results.window_changes(p) for p in grid.deficit_protocols}, setup.epoch_size,
                title=f"{setup.model}, {setup.train_size:,} Fashion-MNIST images, seeds {results.seeds}")


if __name__ == "__main__":
    cli(main)
