"""The claim InDistill rests on, tested directly: does its layer-by-layer warm-up help more at the start
of training than when the same warm-up starts later?

    python -m indistill_lab.experiments.warmup_onset --seeds 3

`indistill-paper`'s curriculum (MSE from the pruned auxiliary, stage k alone for a + k epochs, then PKT)
is started after `onset` epochs of the final-layer loss (PKT), for a few onsets; everything else is
equal: the same total images seen, the same student initialisation per seed, the reference's
optimizer-state policy ('epoch'). PKT alone is the control. One row per (variant, seed) in
results/warmup-onset.csv (a rerun skips finished rows), then results/warmup-onset.md and .png.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..config import HOME, quick_mode
from ..curriculum import Curriculum, Phase
from ..errors import UsageError, cli, positive, seeds_from
from ..methods import Context, get_method
from ..methods.indistill import InDistillPaper
from ..pipeline import Prepared, RunConfig, auxiliary_pkt, load_data, load_teacher, prune_auxiliary
from ..report import markdown_table
from ..results import check_writable, write_report
from ..sources import Sources
from ..viz.critical_periods import warmup_onset_png
from .runs import run_method, shared_cache
from .tables import append_result, mean_std, read_results

CSV = HOME / "results" / "warmup-onset.csv"


def delayed(curriculum: Curriculum, onset: int) -> Curriculum:
    """`curriculum`'s phases started `onset` epochs later, its final term run before them (as a phase over
    [0, onset)) and after them: the same terms and total length, only the warm-up moved."""
    if onset < 0:
        raise ValueError(f"onset must be >= 0 epochs, got {onset}.")
    if curriculum.final is None or curriculum.final_start is not None:
        raise ValueError("delayed() needs a curriculum whose final term follows its phases (final set, "
                         "final_start None), like Curriculum.paper's.")
    last = max((p.end for p in curriculum.phases), default=0) + onset
    if last >= curriculum.total_epochs:
        raise ValueError(f"Started at epoch {onset}, the phases end at epoch {last}, leaving no epoch of the final "
                         f"term in {curriculum.total_epochs}; lower the onset or raise the total.")
    f = curriculum.final
    before = (Phase(f.teacher, f.student, f.loss, f.weight, dict(f.params), start=0, epochs=onset),) if onset else ()
    moved = tuple(replace(p, start=p.start + onset) for p in curriculum.phases)
    return Curriculum(before + moved, f, curriculum.total_epochs)


class DelayedWarmup(InDistillPaper):
    """`indistill-paper` with its layer phases started after `onset` epochs of its final term (PKT)."""

    def __init__(self, onset: int) -> None:
        self.onset = onset
        self.name = f"indistill-paper-onset-{onset}"  # type: ignore[misc]  # per instance: one per onset

    def curriculum(self, student: nn.Module, ctx: Context) -> Curriculum:
        return delayed(super().curriculum(student, ctx), self.onset)


def config(epochs: int = 16, epoch_size: int = 5_000, train_size: int = 10_000, test_size: int = 2_000,
           a: int = 0) -> RunConfig:
    """The small configuration of the committed results: lr 1e-3 (Adam), 1e-4 for the last 2 epochs,
    optimizer state cleared every epoch."""
    return RunConfig(epochs=epochs, epoch_size=epoch_size, train_size=train_size, test_size=test_size, a=a,
                     lr_drop_epoch=epochs - 2, optimizer_state="epoch")


def prepare_small(cfg: RunConfig) -> Prepared:
    """The stages `indistill-paper` needs at this size: the zoo's PKT auxiliary (made with the default
    configuration's recipe, so nothing is trained here) pruned to the student's widths by `cfg`'s criterion."""
    train, test = load_data(cfg)
    base = RunConfig()
    teacher = load_teacher(base)
    aux = auxiliary_pkt(teacher, base, train)
    pruned, report = prune_auxiliary(aux, cfg, train)
    return Prepared(train, test, teacher, aux, pruned, report, Sources(aux=aux, pruned=pruned))


def with_recovery(cfg: RunConfig, onset: int) -> RunConfig:
    """`cfg` lengthened by `onset` epochs (lr drop moved with it), so a warm-up started at `onset` is followed by
    as many PKT epochs as one started at 0: the control for "a later warm-up leaves less PKT after it"."""
    return replace(cfg, epochs=cfg.epochs + onset, lr_drop_epoch=cfg.lr_drop_epoch + onset)


def run(cfg: RunConfig, onsets: Sequence[int], seeds: Sequence[int], path: Path = CSV, log: Any = print,
        update: bool = False) -> None:
    """Train every (configuration, variant, seed) not yet in `path`: PKT alone and the warm-up at each onset
    (every run `cfg.epochs` long), then each later onset again `with_recovery` (a committed `path` is
    extended only with `update`)."""
    if quick_mode():
        raise RuntimeError("The warm-up-onset experiment uses its own data sizes; run it without INDISTILL_QUICK.")
    torch.set_num_threads(1)
    jobs: list[tuple[RunConfig, Any]] = [(cfg, "pkt"), *[(cfg, DelayedWarmup(o)) for o in onsets]]
    jobs += [(with_recovery(cfg, o), DelayedWarmup(o)) for o in onsets if o > 0]
    done = {(r["config"], r["method"], r["seed"]) for r in read_results(path)}
    todo = [(c, v, s) for s in seeds for c, v in jobs
            if (c.digest(quick=False), v if isinstance(v, str) else v.name, s) not in done]
    if not todo:
        return
    check_writable(path, update)
    prep = prepare_small(cfg)  # the configurations differ only in length: one set of stages and targets
    cache = shared_cache(prep, cfg, ["indistill-paper", "pkt"])
    for run_cfg, variant, seed in todo:
        row, _ = run_method(variant, prep, run_cfg, seed, cache)
        append_result(path, row, update=update)
        log(f"{row['method']} ({run_cfg.epochs} epochs) seed {seed}: mAP(e) {row['map_e']:.2f}, "
            f"mAP(c) {row['map_c']:.2f} ({row['wall_seconds']:.0f} s)")


def per_onset(rows: Sequence[dict[str, Any]], cfg: RunConfig, key: str = "map_e") -> tuple[dict[int, dict[int, float]],
                                                                                          dict[int, float]]:
    """From the rows of `cfg`: onset -> {seed: `key`} for the delayed warm-ups, and {seed: `key`} for PKT alone."""
    onsets: dict[int, dict[int, float]] = {}
    control: dict[int, float] = {}
    prefix = "indistill-paper-onset-"
    for r in rows:
        if r["config"] != cfg.digest(quick=False):
            continue
        if r["method"] == "pkt":
            control[r["seed"]] = float(r[key])
        elif str(r["method"]).startswith(prefix):
            onsets.setdefault(int(r["method"][len(prefix):]), {})[r["seed"]] = float(r[key])
    return onsets, control


def recovery(rows: Sequence[dict[str, Any]], cfg: RunConfig, onsets: Sequence[int],
             key: str = "map_e") -> dict[int, dict[int, float]]:
    """Onset -> {seed: `key`} with as much PKT after the warm-up as onset 0 has (onset 0 from `cfg`'s rows, later
    onsets from their `with_recovery` runs)."""
    out = {0: per_onset(rows, cfg, key)[0].get(0, {})}
    for o in [o for o in onsets if o > 0]:
        found = per_onset(rows, with_recovery(cfg, o), key)[0].get(o)
        if found:
            out[o] = found
    return out


def _table(runs_by_name: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Mean ± std per variant and its change against onset 0, paired by seed."""
    start = runs_by_name.get("indistill-paper-onset-0", {})
    table = []
    for name, runs in runs_by_name.items():
        row: dict[str, Any] = {"variant": name, "seeds": len(runs), "images": next(iter(runs.values()))["epochs"]
                               * next(iter(runs.values()))["epoch_size"]}
        for key, label in (("map_e", "mAP (e)"), ("map_c", "mAP (c)"), ("accuracy", "probe acc.")):
            mean, std = mean_std([float(r[key]) for r in runs.values()])
            row[label] = f"{mean:.2f} ± {std:.2f}"
        diffs = [float(runs[s]["map_e"]) - float(start[s]["map_e"]) for s in runs if s in start]
        mean, std = mean_std(diffs) if diffs else (0.0, 0.0)
        row["mAP (e) − onset 0, paired"] = f"{mean:+.2f} ± {std:.2f}" if name != "indistill-paper-onset-0" else ""
        row["phases [layer, start, epochs]"] = next(iter(runs.values()))["phases"]
        table.append(row)
    return markdown_table(table)


def summary_markdown(rows: Sequence[dict[str, Any]], cfg: RunConfig, onsets: Sequence[int],
                     argv: Sequence[str]) -> str:
    """results/warmup-onset.md: mAP per variant (mean ± std over seeds) and its paired change against onset 0,
    at equal total images and at equal PKT after the warm-up."""
    def runs_of(config: RunConfig, names: Sequence[str] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for r in rows:
            if r["config"] == config.digest(quick=False) and (names is None or r["method"] in names):
                out.setdefault(r["method"], {})[r["seed"]] = r
        return out

    same_total = runs_of(cfg)
    same_recovery = {k: v for k, v in same_total.items() if k == "indistill-paper-onset-0"}
    for o in [o for o in onsets if o > 0]:
        same_recovery.update(runs_of(with_recovery(cfg, o), [f"indistill-paper-onset-{o}"]))
    e = cfg.epoch_size
    return "\n".join([
        "# When InDistill's warm-up starts (notebook 04)", "",
        f"Generated by `python -m indistill_lab.experiments.warmup_onset {' '.join(argv)}` "
        f"(config `{cfg.digest(quick=False)}`). "
        f"Student from scratch, {cfg.train_size:,} Fashion-MNIST training images (retrieval database), "
        f"{cfg.test_size:,} test queries, epochs of {e:,} images, Adam lr {cfg.lr:g}, {cfg.lr_low:g} for the last "
        f"{cfg.epochs - cfg.lr_drop_epoch} epochs, optimizer state cleared every epoch. Warm-up = `indistill-paper`'s "
        f"layer phases (a = {cfg.a}: stage k for a + k epochs, MSE to the L1-pruned PKT auxiliary of the zoo), "
        "started after `onset` epochs of PKT; PKT afterwards. `pkt` = PKT alone. mAP 11-point, %; accuracy from a "
        "linear probe on the frozen embedding. Mean ± sample std over seeds; the paired change subtracts onset 0's "
        "run of the same seed.", "",
        f"## Same total images ({cfg.epochs} epochs, {cfg.epochs * e:,} images): a later warm-up leaves less PKT "
        "after it", "", _table(same_total), "",
        f"## Same PKT after the warm-up ({cfg.epochs - cfg.intermediate_epochs} epochs): a later warm-up makes the "
        "run longer by its onset", "", _table(same_recovery), ""])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the missing rows, then write the markdown summary beside the CSV."""
    p = argparse.ArgumentParser(prog="python -m indistill_lab.experiments.warmup_onset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", default=[3], help="a count (3: seeds 0 1 2), several seeds (0 3 7) or ranges (2-4)")
    p.add_argument("--onsets", type=int, nargs="+", default=[0, 3, 6], help="epochs of PKT before the warm-up")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--epoch-size", type=int, default=5_000, help="images per epoch")
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--test-size", type=int, default=2_000)
    p.add_argument("--a", type=int, default=0, help="layer k is distilled for a + k epochs")
    p.add_argument("--csv", type=Path, default=CSV, help="the table (default: results/warmup-onset.csv)")
    p.add_argument("--update", action="store_true", help="allow adding to a committed (git-tracked) table")
    args = p.parse_args(argv)
    seeds = seeds_from(args.seeds)
    for flag in ("epochs", "epoch_size", "train_size", "test_size"):
        positive("--" + flag.replace("_", "-"), getattr(args, flag))
    positive("--a", args.a, 0)
    if min(args.onsets) < 0:
        raise UsageError(f"--onsets must be >= 0 (epochs of PKT before the warm-up), got {args.onsets}.")
    if quick_mode():
        raise UsageError("The warm-up-onset experiment uses its own data sizes; run it without INDISTILL_QUICK.")
    cfg = config(args.epochs, args.epoch_size, args.train_size, args.test_size, args.a)
    get_method("pkt")  # the control must exist before anything trains
    run(cfg, args.onsets, seeds, args.csv, update=args.update)
    given = list(sys.argv[1:] if argv is None else argv)
    rows = read_results(args.csv)
    if not write_report(args.csv.with_suffix(".md"), summary_markdown(rows, cfg, args.onsets, given), args.update):
        return
    onsets, control = per_onset(rows, cfg)
    warmup_onset_png(args.csv.with_suffix(".png"), onsets, control, cfg.epoch_size, recovery(rows, cfg, args.onsets),
                     title=f"student, {cfg.train_size:,} Fashion-MNIST images, {cfg.epochs} x {cfg.epoch_size:,} "
                           f"images per run, a = {cfg.a}")


if __name__ == "__main__":
    cli(main)
