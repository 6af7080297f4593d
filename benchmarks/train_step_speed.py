"""Throughput per core: how close does a training step come to this CPU's own matmul speed?

In one process on one thread, on the same seeded Fashion-MNIST batches, this times the Trainer's step
(objective, backward, Adam) for

- `student`: the 8/16/32 student with cross-entropy,
- `auxiliary`: the 16/32/64 auxiliary with cross-entropy,
- `distill mse x3`: the student under InDistill's intermediate term on all three stages of the
  pruned auxiliary, targets from the `FeatureCache`,
- `distill pkt`: the student under the final term, PKT from the auxiliary's embedding, cached,

each in the plain layout (`model.channels_last = False`, NCHW) and the fast one (channels-last), and
reports the achieved FLOP/s (forward + backward FLOPs counted by `torch.utils.flop_counter`, divided
by the CPU seconds of a step) as a fraction of a single-thread 1024x1024 float32 matmul timed in the
same rounds, and images/s. Variants are interleaved and repeated; medians are reported. The
student is also timed in fresh processes (glibc's default malloc against `keep_freed_memory()`, what
`Trainer.fit` calls; whether the default page-faults every step depends on the process's history),
alternating the two settings. Each round also embeds `--embed-images` images with the student
in both layouts; at the end, stage 1's share of the student's time and FLOPs says what limits the step.
`--eval` also times the parts of `evaluate_student` (embeddings of the 60k + 10k images, linear probe,
retrieval for both distances) in both layouts.

    .venv/bin/python benchmarks/train_step_speed.py --batches 20 --repeats 5 --eval
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from indistill_lab.config import REPO_ROOT, seed_everything
from indistill_lab.curriculum import Curriculum, Phase, Term
from indistill_lab.data import Split, load_split
from indistill_lab.evaluation import fit_probe
from indistill_lab.feature_cache import FeatureCache, IndexedLoader
from indistill_lab.metrics import embeddings, retrieval_metrics
from indistill_lab.models import build_model, to_channels_last
from indistill_lab.modes import eval_mode
from indistill_lab.objective import CurriculumObjective
from indistill_lab.pruning import prune_to_widths
from indistill_lab.sources import Sources
from indistill_lab.train import Trainer, cross_entropy, keep_freed_memory

TARGET = 0.3
LAYOUTS = ("plain", "channels_last")
MALLOC_MODES = ("default malloc", "keep_freed_memory")
STAGES = ("stage1", "stage2", "stage3")
CURRICULA = {"distill mse x3": Curriculum(tuple(Phase(f"pruned.{s}", s, "mse", start=0, epochs=1) for s in STAGES),
                                          None, 1),
             "distill pkt": Curriculum((), Term("aux.act_fc1", "act_fc1", "pkt"), 1)}


def matmul_flops(n: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of an n x n float32 matmul on this thread (median of `repeats`, CPU time)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.process_time()
        a @ b
        times.append(time.process_time() - start)
    return 2 * n ** 3 / statistics.median(times)


def make_trainer(step: str, layout: str, sources: Sources | None, loader: IndexedLoader,
                 cache: FeatureCache | None) -> Trainer:
    """A fresh seeded model and Trainer for one of the timed steps, in the given layout."""
    seed_everything(0)
    model = build_model("auxiliary" if step == "auxiliary" else "student")
    model.channels_last = layout == "channels_last"
    objective = cross_entropy
    if step in CURRICULA:
        objective = CurriculumObjective(CURRICULA[step], sources, model, example=loader.data.x[:4],
                                        teacher_features=cache)
    return Trainer(model, objective, device="cpu", progress=False)


def step_flops(trainer: Trainer, loader: IndexedLoader) -> int:
    """FLOPs of one forward + backward of the trainer's objective on the loader's first batch."""
    x, y = next(iter(loader))
    with FlopCounterMode(display=False) as counter:
        sum(trainer.objective(trainer.model, x, y, 0).values()).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_seconds(trainer: Trainer, loader: IndexedLoader) -> tuple[float, float]:
    """(CPU, wall) seconds per step over one pass of `loader` (epoch 0 again), through the Trainer's epoch loop."""
    cpu, wall = time.process_time(), time.perf_counter()
    trainer._run_epoch(loader, 1)
    return (time.process_time() - cpu) / len(loader), (time.perf_counter() - wall) / len(loader)


def stage1_share(repeats: int = 20) -> tuple[float, float]:
    """(share of the student's forward + backward CPU time, share of its FLOPs) spent in stage 1
    (8 channels at 28x28: conv from 1 channel, BN, ReLU, max-pool), channels-last, batch of 128."""
    seed_everything(0)
    model = build_model("student")
    x = torch.randn(128, 1, 28, 28)
    first = to_channels_last(x)

    def whole() -> None:
        model(x).sum().backward()

    def stage1() -> None:
        model.stage1(first).sum().backward()

    costs = {}
    for name, fn in (("whole", whole), ("stage1", stage1)):
        with FlopCounterMode(display=False) as counter:
            fn()
        times = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        costs[name] = (statistics.median(times), counter.get_total_flops())
    return costs["stage1"][0] / costs["whole"][0], costs["stage1"][1] / costs["whole"][1]


def embed_seconds(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> float:
    """CPU seconds of `embeddings`' loop (eval mode, no grad, batches of 1024) without its malloc setting."""
    start = time.process_time()
    with torch.no_grad(), eval_mode(model):
        for i in range(0, len(x), batch_size):
            model.embed(x[i:i + batch_size])
    return time.process_time() - start


def time_evaluation(model: torch.nn.Module, train: Split, test: Split) -> dict[str, float]:
    """CPU seconds of each part of `evaluate_student(..., trained_head=False)`: embeddings, probe, retrieval."""
    out: dict[str, float] = {}

    def clock(name: str, fn: Callable[[], object]) -> object:
        start = time.process_time()
        result = fn()
        out[name] = time.process_time() - start
        return result

    db, queries = clock("embeddings (60k + 10k images)", lambda: (embeddings(model, train.x, device="cpu"),
                                                                   embeddings(model, test.x, device="cpu")))
    with torch.enable_grad():
        clock("linear probe (30 epochs)", lambda: fit_probe(torch.nn.Linear(db.shape[1], 10), db, train.y))
    for distance in ("euclidean", "cosine"):
        clock(f"retrieval {distance}", lambda d=distance: retrieval_metrics(queries, test.y, db, train.y, d))
    return out


def fresh_process_student(malloc: str, batches: int, batch_size: int, rounds: int = 3) -> dict[str, list[float]]:
    """In this (fresh) process: the student's step in both layouts, interleaved, with glibc's default malloc
    or `keep_freed_memory`; per layout [CPU ms/step, minor page faults/step] (medians over `rounds`)."""
    torch.set_num_threads(1)
    if malloc == "keep_freed_memory":
        keep_freed_memory()
    examples = load_split("fashion-mnist", "train", quick=False).subset(batches * batch_size)
    loader = IndexedLoader(examples, batch_size, seed=0)
    trainers = {lay: make_trainer("student", lay, None, loader, None) for lay in LAYOUTS}
    runs: dict[str, list[tuple[float, float]]] = {lay: [] for lay in LAYOUTS}
    for _ in range(rounds):
        for lay, trainer in trainers.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            cpu = step_seconds(trainer, loader)[0]
            runs[lay].append((cpu, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(loader)))
    return {lay: [statistics.median(c for c, _ in r) * 1e3, statistics.median(f for _, f in r)]
            for lay, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="training steps per timed pass")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (and fresh processes per malloc)")
    parser.add_argument("--embed-images", type=int, default=8192, help="images embedded per round (student)")
    parser.add_argument("--eval", action="store_true", help="also time the evaluation (about a minute per layout)")
    parser.add_argument("--child", choices=MALLOC_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "train_step_speed.md"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fresh_process_student(args.child, args.batches, args.batch_size)))
        return
    torch.set_num_threads(1)
    load_start = os.getloadavg()

    # Before and after in fresh processes (malloc's behaviour depends on the process's history),
    # alternating the two settings.
    fresh: dict[tuple[str, str], list[list[float]]] = {}
    fresh_peaks = []
    for rep in range(args.repeats):
        for malloc in MALLOC_MODES:
            out = subprocess.run([sys.executable, __file__, "--child", malloc, "--batches", str(args.batches),
                                  "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            for lay, figures in json.loads(out.stdout.strip().splitlines()[-1]).items():
                fresh.setdefault((malloc, lay), []).append(figures)
        fresh_peaks.append(matmul_flops())
        print(f"fresh processes {rep + 1}: " + ", ".join(f"{m}/{lay} {v[-1][0]:.1f} ms {v[-1][1]:.0f} faults"
                                                         for (m, lay), v in fresh.items()), flush=True)

    keep_freed_memory()  # as Trainer.fit does
    train = load_split("fashion-mnist", "train", quick=False)
    examples = train.subset(args.batches * args.batch_size)
    seed_everything(0)
    aux = build_model("auxiliary").eval()
    pruned = prune_to_widths(aux, build_model("student").widths)[0].eval()
    sources = Sources(aux=aux, pruned=pruned)
    loader = IndexedLoader(examples, args.batch_size, seed=0)
    cache = FeatureCache(sources.features, loader)
    for curriculum in CURRICULA.values():
        cache.prefetch(curriculum.layers("teacher"))

    embed_x = train.x[:args.embed_images]
    embedders = {lay: build_model("student") for lay in LAYOUTS}
    for lay, model in embedders.items():
        model.channels_last = lay == "channels_last"
    steps = ["student", "auxiliary", *CURRICULA]
    trainers = {(s, lay): make_trainer(s, lay, sources, loader, cache) for s in steps for lay in LAYOUTS}
    flops = {s: step_flops(trainers[s, "plain"], loader) for s in steps}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    peaks: list[float] = []
    embed_times: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        peaks.append(matmul_flops())
        for key, trainer in trainers.items():
            times.setdefault(key, []).append(step_seconds(trainer, loader))
        for lay, model in embedders.items():
            embed_times.setdefault(lay, []).append(embed_seconds(model, embed_x))
        print(f"round {rep + 1}: matmul {peaks[-1] / 1e9:.1f} GFLOP/s; " + ", ".join(
            f"{s}/{lay} {times[s, lay][-1][0] * 1e3:.1f} ms" for s, lay in trainers), flush=True)

    peak, fresh_peak = statistics.median(peaks), statistics.median(fresh_peaks)
    lines = ["# Training step speed per core: achieved FLOP/s against this CPU's matmul", "",
             (f"Command: `.venv/bin/python benchmarks/train_step_speed.py --batches {args.batches} --batch-size "
              f"{args.batch_size} --repeats {args.repeats}{' --eval' if args.eval else ''}`"), "",
             (f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, torch "
              f"{torch.__version__}, 1 thread. Load average (1/5/15 min) at the start "
              f"{', '.join(f'{x:.2f}' for x in load_start)}, after the step timings "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}."),
             ("Step times are CPU seconds of the process per step (`time.process_time`, which other jobs do not "
              "inflate much; the cache misses they cause still count), medians over the rounds of one pass of "
              f"{args.batches} batches of {args.batch_size} through `Trainer._run_epoch`; wall ms beside. FLOPs: "
              "forward + backward of one step by `torch.utils.flop_counter` (convs, matmuls; not BN, ReLU, "
              "pooling, Adam). Peak: single-thread 1024x1024 float32 matmul, timed between the rounds."), "",
             (f"## Student step in fresh processes ({args.repeats} of each, alternating; matmul peak "
              f"{fresh_peak / 1e9:.1f} GFLOP/s)"), "",
             "| malloc | layout | CPU ms/step | page faults/step | / matmul peak | images/s |", "|---|---|---|---|---|---|"]
    med = {k: [statistics.median(f[i] for f in v) for i in range(2)] for k, v in fresh.items()}
    for (malloc, lay), (ms, faults) in med.items():
        ratio = flops["student"] / (ms / 1e3) / fresh_peak
        lines.append(f"| {malloc} | {lay} | {ms:.1f} | {faults:.0f} | {ratio:.2f} | {args.batch_size / (ms / 1e3):.0f} |")
    before = flops["student"] / (med[MALLOC_MODES[0], "plain"][0] / 1e3) / fresh_peak
    after = flops["student"] / (med[MALLOC_MODES[1], "channels_last"][0] / 1e3) / fresh_peak
    lines += ["", (f"Student step: **{before:.2f}** of the matmul peak before (plain layout, default malloc), "
                   f"**{after:.2f}** after (channels-last, keep_freed_memory); target >= {TARGET}: "
                   f"{'met' if after >= TARGET else 'NOT met'}."), "",
              f"## All steps, one process, kept memory, layouts interleaved (matmul peak {peak / 1e9:.1f} GFLOP/s)", "",
              "| step | layout | MFLOP/step | CPU ms/step | wall ms/step | GFLOP/s | / matmul peak | images/s |",
              "|---|---|---|---|---|---|---|---|"]
    for s in steps:
        for lay in LAYOUTS:
            cpu = statistics.median(c for c, _ in times[s, lay])
            wall = statistics.median(w for _, w in times[s, lay])
            rate = flops[s] / cpu
            lines.append(f"| {s} | {lay} | {flops[s] / 1e6:.0f} | {cpu * 1e3:.1f} | {wall * 1e3:.1f} | "
                         f"{rate / 1e9:.1f} | {rate / peak:.2f} | {args.batch_size / cpu:.0f} |")
    time_share, flop_share = stage1_share()
    lines += ["", (f"Student embeddings of {len(embed_x)} images (eval mode, batches of 1024, the loop of "
                   "`metrics.embeddings`), CPU seconds: " + ", ".join(
                       f"{lay} {statistics.median(embed_times[lay]):.2f}" for lay in LAYOUTS) + "."), "",
              (f"Stage 1 of the student (channels-last, kept memory) takes {100 * time_share:.0f}% of the forward "
               f"+ backward CPU time for {100 * flop_share:.0f}% of its FLOPs.")]

    if args.eval:
        test = load_split("fashion-mnist", "test", quick=False)
        model = build_model("student").eval()
        evals = {}
        for lay in LAYOUTS:
            model.channels_last = lay == "channels_last"
            evals[lay] = time_evaluation(model, train, test)
            print(lay, evals[lay], flush=True)
        lines += ["", "## Evaluation (`evaluate_student` parts, untrained student, CPU seconds, one run each)", "",
                  "| part | " + " | ".join(LAYOUTS) + " |", "|---|" + "---|" * len(LAYOUTS)]
        for part in evals[LAYOUTS[0]]:
            lines.append(f"| {part} | " + " | ".join(f"{evals[lay][part]:.1f}" for lay in LAYOUTS) + " |")
        lines.append("| total | " + " | ".join(f"{sum(evals[lay].values()):.1f}" for lay in LAYOUTS) + " |")
        lines.append(f"\nLoad average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
