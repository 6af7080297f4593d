"""How fast is the retrieval evaluation? Compare, on the same features of the full Fashion-MNIST
(10k test queries x 60k train database, student `fc1` embeddings), run back to back:

1. `retrieval_metrics` (Euclidean and cosine, each timed on its own),
2. the floor: a bare `torch.argsort` of all 10k x 60k distances, chunked the same way
   (only the argsort calls are timed, not the distance computation),
3. a bare `numpy.sort` (values only) of the same distances: the sort `retrieval_metrics`
   actually runs, so its own floor.

Target: Euclidean evaluation time / argsort time <= 1.5. The minimum over repeats is
reported (the machine is shared). Writes results/retrieval_benchmark.md.

    .venv/bin/python benchmarks/retrieval_speed.py                   # random-init student, 3 repeats
    .venv/bin/python benchmarks/retrieval_speed.py --weights zoo     # the zoo's trained student
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from indistill_lab.config import REPO_ROOT, seed_everything
from indistill_lab.data import load_split
from indistill_lab.metrics import embeddings, retrieval_metrics
from indistill_lab.models import build_model

TARGET_RATIO = 1.5


def student_features(weights: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings and labels of the full test (queries) and train (database) splits."""
    if weights == "zoo":
        from indistill_lab import zoo

        model = zoo.load("student")
    else:
        seed_everything(0)
        model = build_model("student")
    test, train = load_split("fashion-mnist", "test", quick=False), load_split("fashion-mnist", "train", quick=False)
    return embeddings(model, test.x, device="cpu"), test.y, embeddings(model, train.x, device="cpu"), train.y


def sort_seconds(queries: torch.Tensor, db: torch.Tensor, chunk_size: int) -> dict[str, float]:
    """Seconds spent in torch.argsort and in numpy.sort of every query's Euclidean distances,
    `chunk_size` queries at a time (distance computation not timed)."""
    db_sq_norms = (db * db).sum(1)
    total = {"argsort": 0.0, "np_sort": 0.0}
    for i in range(0, len(queries), chunk_size):
        dist = torch.addmm(db_sq_norms, queries[i:i + chunk_size], db.T, alpha=-2.0)
        start = time.perf_counter()
        torch.argsort(dist, dim=1)
        middle = time.perf_counter()
        np.sort(dist.numpy(), axis=1)
        total["argsort"] += middle - start
        total["np_sort"] += time.perf_counter() - middle
    return total


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", choices=("random", "zoo"), default="random")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    queries, query_y, db, db_y = student_features(args.weights)
    best = {"euclidean": float("inf"), "cosine": float("inf"), "argsort": float("inf"), "np_sort": float("inf")}
    results = {}
    for repeat in range(args.repeats):
        for distance in ("euclidean", "cosine"):
            seconds, results[distance] = timed(retrieval_metrics, queries, query_y, db, db_y, distance,
                                               chunk_size=args.chunk_size)
            best[distance] = min(best[distance], seconds)
        for name, seconds in sort_seconds(queries, db, args.chunk_size).items():
            best[name] = min(best[name], seconds)
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v:.1f} s" for k, v in best.items()),
              flush=True)
    ratio = best["euclidean"] / best["argsort"]
    own_ratio = best["euclidean"] / best["np_sort"]
    command = "benchmarks/retrieval_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    lines = [
        "# Retrieval evaluation speed",
        "",
        f"Command: `.venv/bin/python {command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; shared with other jobs, so each figure is the minimum "
        f"over {args.repeats} back-to-back repeats. Load average (1/5/15 min) at the end of the run: "
        + ", ".join(f"{load:.2f}" for load in os.getloadavg()) + ".",
        f"Features: {args.weights}-weight student `fc1` embeddings ({queries.shape[1]}-D) of Fashion-MNIST, "
        f"{len(queries)} test queries x {len(db)} train database items, chunks of {args.chunk_size} queries.",
        "",
        "| computation | seconds |",
        "|---|---|",
        f"| `retrieval_metrics(..., 'euclidean')` (whole evaluation) | {best['euclidean']:.1f} |",
        f"| `retrieval_metrics(..., 'cosine')` (whole evaluation) | {best['cosine']:.1f} |",
        f"| bare `torch.argsort` of all Euclidean distances (floor) | {best['argsort']:.1f} |",
        f"| bare `numpy.sort` (values) of all Euclidean distances | {best['np_sort']:.1f} |",
        "",
        f"Ratio Euclidean evaluation / argsort: **{ratio:.2f}** (target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}).",
        f"Ratio Euclidean evaluation / numpy.sort (the value sort it runs inside): {own_ratio:.2f}.",
        "",
        "Results of the last repeat (fractions): "
        + "; ".join(f"{d}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()) for d, r in results.items()),
        "",
    ]
    out = REPO_ROOT / "results" / "retrieval_benchmark.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
