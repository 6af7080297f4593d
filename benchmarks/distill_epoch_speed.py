"""How much does a distillation epoch cost compared with a plain student epoch, with and without the
feature cache? In one run, on the same Fashion-MNIST examples, batch size and seeded batches:

- `ce`: the student trained with cross-entropy (the reference epoch),
- `mse x3`: InDistill's intermediate term on all three stages of the pruned auxiliary (the heaviest
  intermediate epoch: all-at-once), targets from the pruned auxiliary,
- `pkt`: the final term, PKT from the auxiliary's embedding,
- `kd`: Hinton KD from the teacher's logits (the largest source model),

each without the cache (the source runs on every batch) and with it (`FeatureCache`, tables built
once before timing; their build time is reported separately, it is paid once per training run).
Each epoch is timed in CPU seconds of this process (one thread), which other jobs on a shared machine
do not inflate, interleaved over repeats, minimum reported; wall seconds (the Trainer's epoch clock) are
shown beside. Target: distillation / CE <= 1.3 with the cache.
Writes results/distill_speed.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_epoch_speed.py --examples 12000 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from indistill_lab.config import REPO_ROOT, seed_everything
from indistill_lab.curriculum import Curriculum, Phase, Term
from indistill_lab.objective import CurriculumObjective
from indistill_lab.data import load_split
from indistill_lab.feature_cache import FeatureCache, IndexedLoader
from indistill_lab.sources import Sources
from indistill_lab.models import build_model
from indistill_lab.pruning import prune_to_widths
from indistill_lab.train import Trainer, cross_entropy

TARGET_RATIO = 1.3
STAGES = ("stage1", "stage2", "stage3")


def curricula() -> dict[str, Curriculum]:
    """One-epoch curricula of the distillation terms timed."""
    mse = tuple(Phase(f"pruned.{s}", s, "mse", start=0, epochs=1) for s in STAGES)
    return {"mse x3": Curriculum(mse, None, 1),
            "pkt": Curriculum((), Term("aux.act_fc1", "act_fc1", "pkt"), 1),
            "kd": Curriculum((), Term("teacher.classifier", "classifier", "kd"), 1)}


def epoch_seconds(objective_name: str, sources: Sources, loader: IndexedLoader,
                  cache: FeatureCache | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one training epoch of a fresh student. CPU time of this process is
    the robust figure on a shared machine (other jobs inflate wall time, not our CPU time)."""
    seed_everything(0)
    student = build_model("student")
    if objective_name == "ce":
        objective = cross_entropy
    else:
        objective = CurriculumObjective(curricula()[objective_name], sources, student, example=loader.data.x[:4],
                                        teacher_features=cache if cache is not None else sources.features)
    trainer = Trainer(student, objective, device="cpu", progress=False)
    cpu = time.process_time()
    trainer.fit(loader, 1)
    return time.process_time() - cpu, trainer.history.epochs[0]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=12_000, help="training examples per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "distill_speed.md"))
    args = parser.parse_args()

    train = load_split("fashion-mnist", "train", quick=False).subset(args.examples)
    seed_everything(0)
    teacher, aux = build_model("teacher").eval(), build_model("auxiliary").eval()
    pruned = prune_to_widths(aux, build_model("student").widths)[0].eval()
    sources = Sources(teacher=teacher, aux=aux, pruned=pruned)
    loader = IndexedLoader(train, args.batch_size, seed=0)
    cache = FeatureCache(sources.features, loader)
    build: dict[str, float] = {}
    for name, c in curricula().items():
        start = time.perf_counter()
        cache.prefetch(c.layers("teacher"))
        build[name] = time.perf_counter() - start

    runs = ["ce"] + [f"{n} {mode}" for n in curricula() for mode in ("no cache", "cache")]
    times: dict[str, list[tuple[float, float]]] = {r: [] for r in runs}
    for rep in range(args.repeats):
        for run in runs:
            name = run.removesuffix(" no cache").removesuffix(" cache")
            cached = run.endswith(" cache") and not run.endswith(" no cache")
            times[run].append(epoch_seconds(name, sources, loader, cache if cached else None))
            print(f"repeat {rep + 1}: {run}: cpu {times[run][-1][0]:.2f} s, wall {times[run][-1][1]:.2f} s", flush=True)
    best = {r: min(c for c, _ in v) for r, v in times.items()}
    wall = {r: min(w for _, w in v) for r, v in times.items()}
    ce = best["ce"]
    lines = ["# Distillation epoch speed: with and without the feature cache", "",
             f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} .venv/bin/python "
             f"benchmarks/distill_epoch_speed.py --examples {args.examples} --batch-size {args.batch_size} "
             f"--repeats {args.repeats}`", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); shared "
             f"with other jobs, so the figures are CPU seconds of this process (`time.process_time`, one thread), "
             f"the minimum over {args.repeats} interleaved repeats; wall seconds beside them. Load average "
             f"at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.",
             f"Data: {args.examples} Fashion-MNIST training images, batch {args.batch_size}, the same seeded "
             "batches for every epoch timed; student 8/16/32, pruned auxiliary 8/16/32, auxiliary 16/32/64, "
             "teacher 2x(24/48/96) (weights do not matter for speed: random init).", "",
             "| epoch | CPU seconds | / CE epoch | wall seconds | wall / CE wall |", "|---|---|---|---|---|"]
    lines += [f"| {r} | {best[r]:.2f} | {best[r] / ce:.2f} | {wall[r]:.2f} | {wall[r] / wall['ce']:.2f} |"
              for r in runs]
    lines += ["", "Cache build (once per training run, one forward pass of the source over the examples): " +
              ", ".join(f"{n} {s:.1f} s" for n, s in build.items()) + f"; tables {cache.nbytes / 2**20:.0f} MiB.", ""]
    worst = max(best[f"{n} cache"] / ce for n in curricula())
    lines.append(f"Worst CPU-time ratio with the cache: **{worst:.2f}** (target <= {TARGET_RATIO}: "
                 f"{'met' if worst <= TARGET_RATIO else 'NOT met'}).")
    open(args.output, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
