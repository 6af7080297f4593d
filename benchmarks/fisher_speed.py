"""How fast is the vectorised Fisher trace? Compare, on the same 256 examples and after warm-up:

1. one batched training step (forward + backward + Adam step on the 256-example batch),
2. `fisher_trace` (vmap over grad, chunked),
3. `fisher_trace_loop` (one backward pass per example).

Target: the Fisher trace costs at most 3x the batched step. Writes results/fisher_benchmark.md.

    .venv/bin/python benchmarks/fisher_speed.py            # teacher and student, 5 alternating timed pairs
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch
from torch.nn import functional as F

from indistill_lab.config import REPO_ROOT, seed_everything
from indistill_lab.fisher import fisher_trace, fisher_trace_loop, sample_labels
from indistill_lab.models import build_model

TARGET_RATIO = 3.0


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(name: str, n: int, chunk_size: int, repeats: int) -> dict[str, float]:
    """Seconds of the three computations on `n` random Fashion-MNIST-shaped inputs.

    The batched step and the vmap Fisher alternate within each repeat. On a CPU shared with other
    jobs the best (minimum) time of each is the least disturbed measurement, so the headline ratio
    is min(Fisher) / min(step); the median of the per-repeat ratios is reported beside it.
    """
    seed_everything(0)
    model = build_model(name)
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    labels = sample_labels(model, x, torch.Generator().manual_seed(0))
    vmapped = lambda: fisher_trace(model, x, labels, chunk_size=chunk_size)  # noqa: E731
    for _ in range(2):  # warm-up
        train_step()
        vmapped()
    steps, fishers = [], []
    for _ in range(repeats):
        steps.append(seconds(train_step))
        fishers.append(seconds(vmapped))
    fisher_trace_loop(model, x[:16], labels[:16])  # warm-up
    loop = seconds(lambda: fisher_trace_loop(model, x, labels))
    return {"train_step": min(steps), "fisher_vmap": min(fishers), "ratio": min(fishers) / min(steps),
            "median_ratio": statistics.median(f / s for f, s in zip(fishers, steps)), "fisher_loop": loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["student", "teacher"])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "fisher_benchmark.md"))
    args = parser.parse_args()
    rows = []
    for name in args.models:
        r = bench_model(name, args.n, args.chunk_size, args.repeats)
        ratio = r["ratio"]
        rows.append(f"| {name} | {r['train_step'] * 1e3:.0f} | {r['fisher_vmap'] * 1e3:.0f} | "
                    f"{r['fisher_loop'] * 1e3:.0f} | {ratio:.2f}x | {r['median_ratio']:.2f}x | "
                    f"{r['fisher_loop'] / r['fisher_vmap']:.1f}x | "
                    f"{'yes' if ratio <= TARGET_RATIO else 'no'} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "# Fisher trace speed",
        "",
        f"Same {args.n} examples per model. The batched step and the vmap Fisher alternate, {args.repeats} timed "
        f"pairs after 2 warm-up pairs; times are the minimum over the pairs (the least disturbed by other jobs), "
        f"the median of the per-pair ratios is given too. The per-example loop: "
        "one run after a 16-example warm-up. Fisher via `torch.func` vmap "
        f"over grad with chunk_size={args.chunk_size}, model in eval mode. Target: Fisher <= {TARGET_RATIO:.0f}x "
        "one batched training step (forward + backward + Adam on the whole batch). Models: `build_model(name)` presets, untrained.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads (CPU shared with other jobs, so absolute times are noisy).",
        f"Command: `.venv/bin/python benchmarks/fisher_speed.py --n {args.n} --chunk-size {args.chunk_size} "
        f"--repeats {args.repeats}`",
        "",
        "| model | train step (ms) | Fisher vmap (ms) | Fisher loop (ms) | vmap / step | median of per-pair ratios "
        "| loop / vmap | within target |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
