"""The cascade table (issues 11 and 22, docs/cascade.md): at one pruning level, the cascade with 0, 1 and 2
teaching assistants, its ablation without KD and hints, and two prune-once baselines, under the paper's
optimiser (SGD Nesterov, wd 4e-4, cosine from 0.008), on the zoo's `cascade-net` (5 maskable convs).

    python -m indistill_lab.experiments.cascade pilot                      # time each arm (writes nothing)
    python -m indistill_lab.experiments.cascade run --seeds 3 --workers 1  # results/cascade-sgd-<digest>.csv
    python -m indistill_lab.experiments.cascade report                     # .md and .png beside the CSV

`run` resumes: the rows already in the CSV are skipped, each finished run is one flushed line, and its mask
snapshots go to `<csv stem>-stories/<arm>-<seed>.json` (for the overlap figure and notebook 08). Quick mode
(INDISTILL_QUICK=1) runs a tiny protocol into results/quick/ (git-ignored). The first version's table
(Adam, the 2-conv auxiliary: results/cascade.{csv,md,png}, results/precomputed/cascade/) stays as the
"before"; `old_runs` reads it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import zoo
from ..cache import CACHE_DIR
from ..cascade import LEGACY, Cascade, CascadeLoss, cascade_levels, kept_overlap, layers_at_floor
from ..config import quick_mode, seed_everything
from ..data import Loader, load_split
from ..errors import UsageError, cli, positive, seeds_from
from ..feature_cache import IndexedLoader
from ..methods.cascade import CascadeSchedule, StudentObjective, phase_lr, train_cascade
from ..metrics import accuracy
from ..results import ResultsTable
from ..train import Trainer, cross_entropy
from .tables import mean_std

OLD_RUNS = CACHE_DIR / "cascade"


@dataclass(frozen=True)
class Protocol:
    """Everything a row depends on besides its arm and seed. Loader epochs of `steps_per_epoch` batches:
    `joint_epochs` with every model and mask learning, then `student_epochs` of the exported student alone;
    the baselines train for the same total. `t_squared`: KD is T^2 * KL (Hinton) rather than the spec's KL."""

    level: float = 0.8
    network: str = "cascade-net"
    steps_per_epoch: int = 100
    joint_epochs: int = 6
    student_epochs: int = 2
    batch_size: int = 128
    lr: float = 0.008
    weight_decay: float = 4e-4
    temperature: float = 15.0
    t_squared: bool = True
    alpha: float = 0.4
    beta: float = 0.001
    record_every: int = 25

    @classmethod
    def default(cls) -> Protocol:
        """The table's protocol, or a tiny one in quick mode."""
        return cls(steps_per_epoch=3, joint_epochs=1, student_epochs=1, record_every=1) if quick_mode() else cls()

    @property
    def joint_steps(self) -> int:
        return self.steps_per_epoch * self.joint_epochs


@dataclass(frozen=True)
class Arm:
    """One row type: a prune-once baseline (`assistants` None; `kd` picks fine-tuning with KD instead of CE)
    or a cascade with `assistants` TAs, optionally without KD and hints or with the first version's masks."""

    name: str
    assistants: int | None = None
    kd: bool = True
    hints: bool = True
    legacy: bool = False


ARMS = {a.name: a for a in [
    Arm("prune-ft", kd=False, hints=False),
    Arm("prune-kd", hints=False),
    Arm("cascade-0ta", 0),
    Arm("cascade-1ta", 1),
    Arm("cascade-2ta", 2),
    Arm("cascade-1ta-no-kd-no-hints", 1, kd=False, hints=False),
    Arm("cascade-1ta-legacy", 1, legacy=True),
]}
DEFAULT_ARMS = [n for n in ARMS if n != "cascade-1ta-legacy"]
COLUMNS = {"arm": str, "seed": int, "accuracy": float, "params": int, "macs": int, "widths": json.loads,
           "layers_at_floor": int, "overlap": float, "teacher_swaps": int, "seconds": float}
# paired differences reported by seed: (arm, reference arm)
PAIRS = [("cascade-1ta", "cascade-0ta"), ("cascade-2ta", "cascade-0ta"), ("cascade-0ta", "prune-kd"),
         ("cascade-1ta", "prune-kd"), ("prune-kd", "prune-ft"), ("cascade-1ta-no-kd-no-hints", "cascade-1ta"),
         ("cascade-1ta-legacy", "cascade-1ta")]


def table(protocol: Protocol, update: bool = False, folder: Path | None = None) -> ResultsTable:
    """The results table of `protocol` (its digest names the file)."""
    return ResultsTable("cascade-sgd", config=asdict(protocol), columns=COLUMNS, key=("arm", "seed"),
                        folder=folder, update=update)


def stories_dir(results: ResultsTable) -> Path:
    """Where a table's per-run mask snapshots go (beside its CSV)."""
    return results.path.with_name(results.path.stem + "-stories")


def _loss(protocol: Protocol, arm: Arm) -> dict[str, Any]:
    """CascadeLoss options of an arm (no KD / no hints: their weights 0)."""
    return {"alpha": protocol.alpha if arm.kd else 0.0, "beta": protocol.beta if arm.hints else 0.0,
            "temperature": protocol.temperature, "t_squared": protocol.t_squared}


def run_arm(arm: str, seed: int, protocol: Protocol) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and score one run: its row and its story (mask snapshots, per-snapshot student-in-TA overlap,
    history). Single-threaded (torch.set_num_threads(1)) so runs time alike on a shared machine."""
    torch.set_num_threads(1)
    spec = ARMS[arm]
    seed_everything(seed)
    network = zoo.load(protocol.network)
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    loader = IndexedLoader(train, protocol.batch_size, shuffle=True, seed=seed,
                           epoch_size=protocol.steps_per_epoch * protocol.batch_size)
    schedule = CascadeSchedule(protocol.joint_epochs, protocol.student_epochs, lr=protocol.lr, optimizer="sgd",
                               weight_decay=protocol.weight_decay, record_every=protocol.record_every, cosine=True)
    start = time.perf_counter()
    story: dict[str, Any] = {"arm": arm, "seed": seed, "protocol": asdict(protocol)}
    if spec.assistants is None:
        cascade = Cascade(network, [protocol.level, 0.0])  # the initial mask: global relative L1
        student, report = cascade.export(0)
        student.train().requires_grad_(True)
        objective = (cross_entropy if not spec.kd else
                     StudentObjective([network], CascadeLoss(network, [], **_loss(protocol, spec)), {}))
        epochs = protocol.joint_epochs + protocol.student_epochs
        lrs, extra = phase_lr(schedule, epochs, len(loader))
        trainer = Trainer(student, objective, optimizer="sgd", lr=protocol.lr, weight_decay=protocol.weight_decay,
                          lr_schedule=lrs, callbacks=extra, seed=seed, progress=False)
        trainer.fit(loader, epochs)
        if trainer.history.stopped:
            raise RuntimeError(f"{arm} seed {seed}: training stopped ({trainer.history.stopped}).")
        overlap, swaps, history = None, 0, trainer.history.epochs
    else:
        result = train_cascade(network, cascade_levels(protocol.level, spec.assistants), loader, schedule,
                               (train.x[-2000:], train.y[-2000:]), seed,
                               mask_options=LEGACY if spec.legacy else None,
                               loss_options=_loss(protocol, spec))
        cascade, student, report = result.cascade, result.student, result.report
        curve = [kept_overlap(torch.tensor(s["masks"][0]), torch.tensor(s["masks"][1])) for s in result.snapshots]
        overlap, swaps, history = curve[-1], len(result.swaps), result.history.epochs
        story.update(layers=cascade.layers, sizes=cascade.sizes, levels=cascade.levels, swaps=result.swaps,
                     snapshots=[{**s, "masks": ["".join(map(str, m)) for m in s["masks"]]} for s in result.snapshots],
                     overlap=curve)
    seconds = time.perf_counter() - start
    mask = cascade.mask(0)
    acc = accuracy(student.eval(), Loader(test, 1000, shuffle=False), "cpu")
    row = {"arm": arm, "seed": seed, "accuracy": round(100 * acc, 2), "params": report.params_after,
           "macs": report.flops_after, "widths": [int(c.sum()) for c in mask.split(cascade.sizes)],
           "layers_at_floor": layers_at_floor(mask, cascade.sizes), "overlap": overlap, "teacher_swaps": swaps,
           "seconds": round(seconds, 1)}
    story.update(row=row, history=history, params_full=report.params_before, macs_full=report.flops_before)
    return row, story


def _run_and_store(arm: str, seed: int, protocol: Protocol, folder: str) -> dict[str, Any]:
    """`run_arm`, its story written to `folder` (worker processes return the row to the parent)."""
    row, story = run_arm(arm, seed, protocol)
    path = Path(folder) / f"{arm}-{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(story) + "\n")
    return row


def run(protocol: Protocol, arms: Sequence[str], seeds: Sequence[int], workers: int, results: ResultsTable) -> None:
    """Make the missing (arm, seed) rows on `workers` processes, each added as it ends: the default arms seed
    by seed first (so a table cut short is paired), then any extra arm (the legacy masks) seed by seed."""
    extra = [a for a in arms if a not in DEFAULT_ARMS]
    todo = results.todo([(a, s) for group in ([a for a in arms if a not in extra], extra) for s in seeds
                         for a in group])
    print(f"{results.path}: {len(todo)} run(s) to do on {workers} worker(s)", flush=True)
    if todo:
        results.check_writable()  # a finished committed table is only reported
    folder = str(stories_dir(results))

    def log(row: dict[str, Any]) -> None:
        results.add(row)
        print(f"{row['arm']} seed {row['seed']}: {row['accuracy']}% , {row['params']:,} params, widths "
              f"{row['widths']}, overlap {row['overlap']}, {row['seconds']} s", flush=True)
    if workers == 1:
        for arm, seed in todo:
            log(_run_and_store(arm, seed, protocol, folder))
        return
    with ProcessPoolExecutor(workers) as pool:
        for job in as_completed([pool.submit(_run_and_store, a, s, protocol, folder) for a, s in todo]):
            log(job.result())


def pilot(protocol: Protocol, arms: Sequence[str], seeds: int, workers: int) -> dict[str, float]:
    """Time one short run (one loader epoch per phase, seed 0) of each arm, single-threaded, and project the
    full protocol: seconds per arm and for the table on `workers` processes. The projection uses the CPU
    time of the process (wall time x its CPU share), so a machine shared with other jobs does not inflate
    it: it is the wall time on a core of one's own. Writes nothing."""
    short = Protocol(**{**asdict(protocol), "joint_epochs": 1, "student_epochs": 1})
    projected = {}
    for arm in arms:
        start, cpu = time.perf_counter(), time.process_time()
        row, story = run_arm(arm, 0, short)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        phases = story["history"]
        train_s = sum(e["seconds"] for e in phases)
        if ARMS[arm].assistants is None:
            full = phases[0]["seconds"] * (protocol.joint_epochs + protocol.student_epochs)
        else:
            full = phases[0]["seconds"] * protocol.joint_epochs + phases[1]["seconds"] * protocol.student_epochs
        projected[arm] = (full + total - train_s) * cpu / total
        print(f"{arm}: short run {total:.1f} s wall, {cpu:.1f} s CPU ({train_s:.1f} s wall training); full "
              f"protocol about {projected[arm]:.0f} s on a core of its own; short run's accuracy {row['accuracy']}%, "
              f"widths {row['widths']}, overlap {row['overlap']}", flush=True)
    whole = seeds * sum(projected.values()) / workers
    print(f"table ({len(arms)} arms x {seeds} seeds on {workers} worker(s)): about {whole / 60:.0f} min", flush=True)
    return projected


def old_runs(level: float = 0.8, assistants: int = 1) -> list[dict[str, Any]]:
    """The first version's committed cascade runs (Adam, zoo auxiliary) at `level` with `assistants` TAs,
    each with its mask snapshots and `overlap` (student-in-TA per snapshot), seed order."""
    runs = [json.loads(p.read_text())["result"] for p in sorted(OLD_RUNS.glob("cascade-run-*.json"))]
    mine = sorted((r for r in runs if r["kind"] == "cascade" and r["level"] == level
                   and r["assistants"] == assistants and r.get("snapshots")), key=lambda r: r["seed"])
    for r in mine:
        r["overlap"] = [kept_overlap(torch.tensor([float(c) for c in s["masks"][0]]),
                                     torch.tensor([float(c) for c in s["masks"][1]])) for s in r["snapshots"]]
    return mine


def paired(rows: Sequence[dict[str, Any]], arm: str, ref: str) -> list[tuple[int, float]]:
    """(seed, accuracy of `arm` - accuracy of `ref`) for the seeds both have."""
    by = {(r["arm"], r["seed"]): r["accuracy"] for r in rows}
    return [(s, round(by[(arm, s)] - by[(ref, s)], 2)) for (a, s) in sorted(by) if a == arm and (ref, s) in by]


def report_markdown(rows: Sequence[dict[str, Any]], protocol: Protocol, command: str, full: dict[str, int]) -> str:
    """Mean ± std per arm, the paired differences by seed, per-layer widths, layers at floor, overlap."""
    p = protocol
    lines = [
        "# Cascaded teaching assistants under the paper's optimiser (Fashion-MNIST)", "",
        f"Generated by `{command}`. Network: the zoo's `{p.network}` (convs 16-16 / 32-32 / 64-64, fc 64; "
        f"{full.get('params', 0):,} params, {full.get('macs', 0):,} MACs), 5 maskable convs (all but the first), "
        f"pruned fraction k = {p.level} of their 208 filters. SGD Nesterov 0.9, wd {p.weight_decay}, cosine from "
        f"{p.lr} per phase, batch {p.batch_size}; joint phase {p.joint_steps} steps, student alone "
        f"{p.steps_per_epoch * p.student_epochs} steps (baselines: {p.steps_per_epoch * (p.joint_epochs + p.student_epochs)} "
        f"steps, one cosine). KD: alpha {p.alpha} x {'T^2 * ' if p.t_squared else ''}KL at T = {p.temperature}; "
        f"hints beta {p.beta} over channels both models keep. Masks: saliency scores, per-layer normalised, "
        "nested (docs/cascade.md); `legacy` = the first version's masks. Accuracy on the full 10,000-image "
        "test set, mean ± std over seeds.", "",
        "| arm | seeds | accuracy (%) | params | MACs | widths (5 masked convs) | layers at floor | student-in-TA overlap |",
        "|---|---|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        acc = mean_std([r["accuracy"] for r in mine])
        widths = "/".join(f"{sum(r['widths'][j] for r in mine) / len(mine):.1f}" for j in range(len(mine[0]["widths"])))
        ov = [r["overlap"] for r in mine if r["overlap"] is not None]
        lines.append(f"| {arm} | {len(mine)} | {acc[0]:.2f} ± {acc[1]:.2f} | {mean_std([r['params'] for r in mine])[0]:,.0f} "
                     f"| {mean_std([r['macs'] for r in mine])[0]:,.0f} | {widths} | "
                     f"{max(r['layers_at_floor'] for r in mine)} | "
                     f"{f'{mean_std(ov)[0]:.2f}' if ov else '—'} |")
    lines += ["", "Paired differences in accuracy (points), by seed:", "",
              "| arm − reference | per seed | mean ± std |", "|---|---|---|"]
    for arm, ref in PAIRS:
        diffs = paired(rows, arm, ref)
        if diffs:
            m = mean_std([d for _, d in diffs])
            lines.append(f"| {arm} − {ref} | " + ", ".join(f"s{s}: {d:+.2f}" for s, d in diffs)
                         + f" | {m[0]:+.2f} ± {m[1]:.2f} |")
    return "\n".join(lines) + "\n"


def report(results: ResultsTable, protocol: Protocol, command: str) -> bool:
    """Write the markdown and PNG beside the CSV; False (nothing written) when it has no rows or the report
    is unchanged or committed (without --update)."""
    from ..viz.cascade import cascade_table_png

    rows = results.rows()
    if not rows:
        return False
    story = next(iter(sorted(stories_dir(results).glob("*.json"))), None)
    full = {}
    if story is not None:
        s = json.loads(story.read_text())
        full = {"params": s["params_full"], "macs": s["macs_full"]}
    if not results.write_report(".md", report_markdown(rows, protocol, command, full)):
        return False
    cascade_table_png(rows, [json.loads(p.read_text()) for p in sorted(stories_dir(results).glob("*.json"))],
                      old_runs(), results.path.with_suffix(".png"))
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """`pilot`, `run` or `report` (see the module docstring); every flag is checked before any work."""
    parser = argparse.ArgumentParser(prog="python -m indistill_lab.experiments.cascade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["pilot", "run", "report"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3], help="a count (3: seeds 0 1 2) or several seeds")
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, help=f"of {', '.join(ARMS)}")
    parser.add_argument("--workers", type=int, default=1, help="processes (each single-threaded)")
    parser.add_argument("--joint-epochs", type=int, default=None, help="override the protocol's joint epochs")
    parser.add_argument("--student-epochs", type=int, default=None, help="override the student-alone epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="override batches per loader epoch")
    parser.add_argument("--no-t-squared", action="store_true", help="KD as the spec's plain KL (no T^2)")
    parser.add_argument("--update", action="store_true", help="allow adding to a committed (git-tracked) table")
    parser.add_argument("--out", type=Path, default=None, help="write the table under DIR instead of results/")
    args = parser.parse_args(argv)
    seeds = seeds_from(args.seeds)
    positive("--workers", args.workers)
    bad = [a for a in args.arms if a not in ARMS]
    if bad:
        raise UsageError(f"--arms: unknown {bad}; use some of {', '.join(ARMS)}.")
    overrides = {k: getattr(args, k) for k in ("joint_epochs", "student_epochs", "steps_per_epoch")
                 if getattr(args, k) is not None}
    for k, v in overrides.items():
        positive("--" + k.replace("_", "-"), v)
    if args.no_t_squared:
        overrides["t_squared"] = False
    protocol = Protocol(**{**asdict(Protocol.default()), **overrides})
    if args.command == "pilot":
        pilot(protocol, args.arms, len(seeds), args.workers)
        return
    results = table(protocol, args.update, args.out)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("run", "report")]
    command = " ".join(["python -m indistill_lab.experiments.cascade run", *given])
    if args.command == "run":
        run(protocol, args.arms, seeds, args.workers, results)
    if report(results, protocol, command):
        print(f"wrote {results.path.with_suffix('.md')} and .png", flush=True)


if __name__ == "__main__":
    cli(main)
