"""The results tables: every method for every seed, one CSV row per run, then a markdown table and a plot.

    rows = reproduce(RunConfig(), seeds=range(3), workers=2)   # resumable: rows already there are skipped

Runs go in-process (`workers=1`), to worker processes of one thread each (`workers=N`) or to a Ray
cluster (`ray_address="auto"`, one task per run); each run seeds itself, so the rows are the same
whichever way (on CPUs). Files are named after the dataset for the default
configuration and `<dataset>-<digest>` for any other, so a variant never replaces the committed table.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import zoo
from ..config import quick_mode
from ..methods import check_names, get_method, method_names
from ..data import load_split
from ..models import model_input_shape
from ..pipeline import RunConfig, build
from ..results import check_unique, check_writable, remove_rows, results_dir as default_results_dir
from .ray_runs import ray_runs
from .runs import Session
from .tables import RESULT_TYPES, append_result, read_results, write_report

_WORKER: Session | None = None
"""The session a worker process runs with: inherited from the parent (fork) or built by `_worker_init`."""


def _worker_init(cfg: RunConfig | None, methods: Sequence[str], cache_dir: Path | None = None) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no traceback per worker
    torch.set_num_threads(1)
    if cfg is not None:
        _WORKER = Session(cfg, methods, log=lambda m: print(f"[worker {os.getpid()}] {m}", flush=True),
                          cache_dir=cache_dir)


def _worker_run(method: str, seed: int, checkpoint: Path | None) -> tuple[dict[str, Any], nn.Module]:
    assert _WORKER is not None, "_worker_init did not run"
    return _WORKER.run(method, seed, checkpoint)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside the block (the thread count is restored after): every run of a table is
    single-threaded, in this process or in a worker, so small nets do not spin a second thread on a shared core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pool(cfg: RunConfig, methods: Sequence[str], workers: int, log: Callable[[str], None],
          cache_dir: Path | None = None) -> ProcessPoolExecutor:
    """Worker processes of one thread each. Where fork exists, the parent builds the shared stages and
    the target cache once (on one thread, so no OpenMP pool is forked) and the workers share its memory
    copy-on-write: one cache for all workers instead of one each. Elsewhere each worker builds its own."""
    global _WORKER
    if "fork" not in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(cfg, methods, cache_dir))
    with one_thread():
        _WORKER = Session(cfg, methods, log, cache_dir)
        _WORKER.build()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init,
                               initargs=(None, methods))


def step_seconds(cfg: RunConfig, steps: int = 8) -> float:
    """Median seconds of one student training step (cross-entropy, batch `cfg.batch_size`) on one thread,
    measured now: the unit of the projection printed before a table starts."""
    with one_thread():
        model = build(cfg, "student")
        x = torch.randn(cfg.batch_size, *model_input_shape(model))
        y = torch.randint(0, model.num_classes, (cfg.batch_size,))
        opt = torch.optim.Adam(model.parameters(), cfg.lr)
        times = []
        for _ in range(steps + 2):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        return sorted(times[2:])[len(times[2:]) // 2]


def projection(cfg: RunConfig, runs: int, workers: int, train_size: int) -> str:
    """Runs x epochs x steps x measured step time / workers: a floor for the training time of a table
    (distillation steps cost somewhat more). Evaluation is not estimated: the line says which protocol each run
    is scored on (the full one took about a minute a run on 2 loaded CPU cores, the small-run subset about 10 s;
    benchmarks/small_run.md)."""
    steps = -(-min(cfg.epoch_size or train_size, train_size) // cfg.batch_size)
    step = step_seconds(cfg)
    hours = runs * cfg.epochs * steps * step / max(1, min(workers, runs)) / 3600
    subset = cfg.evaluation_size(train_size)
    queries = f"{cfg.test_size:,}" if cfg.test_size is not None else "all"
    scored = (f"the full protocol ({queries} test queries x all {train_size:,} training images)" if subset is None
              else f"a {subset:,}-image training subset ({queries} test queries; --full-eval for the full protocol)")
    return (f"projection: {runs} runs x {cfg.epochs} epochs x {steps} steps x {1000 * step:.0f} ms/step "
            f"/ {min(workers, runs)} worker(s) = {hours:.2f} h of training; evaluation not included "
            f"(each run is then scored on {scored})")


def measured_projection(rows: Sequence[Mapping[str, Any]], todo: Sequence[tuple[str, int]], workers: int) -> str:
    """The remaining runs' time from this configuration's finished rows: each run costs its method's mean
    `wall_seconds` so far (the mean over all rows for a method not run yet), summed and shared by the
    workers. Unlike `projection` it includes distillation's dearer steps, evaluation and the slowdown of
    workers sharing memory bandwidth, as they were when those rows ran."""
    seconds: dict[str, list[float]] = {}
    for row in rows:
        seconds.setdefault(row["method"], []).append(float(row["wall_seconds"]))
    if not seconds or not todo:
        return ""
    overall = sum(map(sum, seconds.values())) / sum(map(len, seconds.values()))
    total = sum(sum(seconds[m]) / len(seconds[m]) if m in seconds else overall for m, _ in todo)
    return (f"from the {len(rows)} finished run(s) of this config: {len(todo)} runs x their method's mean wall "
            f"time / {min(workers, len(todo))} worker(s) = {total / min(workers, len(todo)) / 3600:.2f} h")


def results_name(cfg: RunConfig) -> str:
    """'<dataset>' for the default configuration outside quick mode, '<dataset>-<digest>' otherwise."""
    default = cfg == RunConfig(dataset=cfg.dataset) and not quick_mode()
    return cfg.dataset if default else f"{cfg.dataset}-{cfg.digest()}"


def reproduce(cfg: RunConfig, seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] | None = None,
              results_dir: Path | str | None = None, name: str | None = None, workers: int = 1,
              save_students: bool = True, log: Callable[[str], None] = print,
              ray_address: str | None = None, update: bool = False, force: bool = False) -> list[dict[str, Any]]:
    """Every method for every seed (seed-major, so a partial run still compares all methods), one CSV row
    per finished run; rows already present for this config are skipped. Then the table and the plot.

    With `ray_address` each run is a Ray task (see `ray_runs`; needs the 'cluster' extra) and the rows
    are written here as tasks finish, in the same resumable CSV.

    With `save_students`, seed 0's InDistill (paper curriculum) student of the default configuration
    is recorded in the zoo as 'student-indistill' (notebook 07's retrieval comparison).

    `results_dir` defaults to `results.results_dir()` (the repository's results/, results/quick/ in quick
    mode, or $INDISTILL_OUT). A committed (git-tracked) table is extended only with `update=True`.

    Rows are keyed by method, seed, configuration digest and the method's identity (`Method.identity`):
    a method whose code or parameters changed is rerun, and `force` reruns every asked-for run; the rows
    they replace are moved to `<name>.csv.replaced`.
    """
    methods = check_names(check_unique(method_names() if methods is None else methods, "methods"))
    seeds = check_unique(seeds, "seeds")
    if min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative ints, got {seeds}; e.g. --seeds 3 runs seeds 0, 1, 2.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if workers > 1 and ray_address is not None:
        raise ValueError("choose worker processes (workers > 1) or Ray (ray_address), not both: Ray already "
                         "runs one task per CPU of its cluster.")
    results_dir = default_results_dir(results_dir)
    name = name or results_name(cfg)
    csv_path = results_dir / f"{name}.csv"
    identity = {m: get_method(m).identity() for m in methods}
    redo = {(m, s) for m in methods for s in seeds} if force else set()
    stale = [r for r in read_results(csv_path) if r["config"] == cfg.digest() and r["method"] in identity
             and ((r["method"], r["seed"]) in redo or r["method_id"] not in (None, identity[r["method"]]))]
    if stale:
        log(f"{len(stale)} row(s) of {csv_path} are rerun ("
            + ("--force" if force else "their method changed since: another identity") + "): "
            + ", ".join(f"{r['method']} seed {r['seed']}" for r in stale) + f"; the old rows go to {csv_path}.replaced")
        keys = {(r["method"], r["seed"], r["method_id"]) for r in stale}
        remove_rows(csv_path, lambda r: r["config"] == cfg.digest() and (r["method"], r["seed"], r["method_id"]) in keys,
                    RESULT_TYPES, update)
    finished_rows = [r for r in read_results(csv_path) if r["config"] == cfg.digest()]
    done = {(r["method"], r["seed"]) for r in finished_rows}
    todo = [(m, s) for s in seeds for m in methods if (m, s) not in done]
    if todo:
        check_writable(csv_path, update)
    log(f"config {cfg.digest()}: {len(done)} runs already in {csv_path}, {len(todo)} to do"
        + (f" on {workers} worker processes" if workers > 1 and todo else "")
        + (f" as Ray tasks ({ray_address})" if ray_address is not None and todo else ""))
    keep_student = save_students and name == cfg.dataset and cfg.use_zoo
    if todo and ray_address is None:  # measured on this machine's CPU: says nothing of a cluster's
        log(projection(cfg, len(todo), workers, cfg.train_size or load_split(cfg.dataset, "train").x.shape[0]))
        if finished_rows:
            log(measured_projection(finished_rows, todo, workers))

    checkpoints = results_dir / "checkpoints" / f"{name}-{cfg.digest()}"

    def checkpoint(method: str, seed: int) -> Path:
        """Each run's last finished epoch, so a killed table resumes inside its runs (deleted once the row is in)."""
        return checkpoints / f"{method}-{seed}.pt"

    def finished(row: dict[str, Any], student: nn.Module, count: int) -> None:
        append_result(csv_path, row, update=update)
        checkpoint(row["method"], row["seed"]).unlink(missing_ok=True)
        log(f"[{count}/{len(todo)}] {row['method']} seed {row['seed']}: mAP e/c {row['map_e']}/{row['map_c']}, "
            f"acc {row['accuracy']} ({row['accuracy_from']}), train {row['train_seconds']} s, "
            f"eval {row['eval_seconds']} s")
        if keep_student and row["seed"] == 0 and row["method"] == "indistill-paper":
            _save_student(student, cfg, row)

    if ray_address is not None and todo:
        for i, (row, student) in enumerate(ray_runs(cfg, methods, todo, ray_address, log), 1):
            finished(row, student, i)
    elif workers == 1:
        session = Session(cfg, methods, log, results_dir / "cache")
        with one_thread():  # as in a worker: rows do not depend on --workers, no thread spins on a shared machine
            for i, (method, seed) in enumerate(todo, 1):
                finished(*session.run(method, seed, checkpoint(method, seed)), i)
    elif todo:
        global _WORKER
        try:
            with _pool(cfg, methods, workers, log, results_dir / "cache") as pool:
                futures = [pool.submit(_worker_run, m, s, checkpoint(m, s)) for m, s in todo]
                try:
                    for i, future in enumerate(as_completed(futures), 1):
                        finished(*future.result(), i)
                except KeyboardInterrupt:  # stop the workers now; their runs resume from their checkpoints
                    pool.shutdown(wait=False, cancel_futures=True)
                    for child in multiprocessing.active_children():
                        child.terminate()
                    raise
        finally:
            _WORKER = None  # the parent's copy of the shared stages and cache is freed
    rows = [r for r in read_results(csv_path) if r["config"] == cfg.digest()]
    write_report(rows, cfg, results_dir / f"{name}.md", results_dir / f"{name}.png", update)
    return rows


def _save_student(student: nn.Module, cfg: RunConfig, row: Mapping[str, Any]) -> None:
    rel = f"{cfg.dataset}/student-indistill.pt"
    sha = zoo.save_model(student, zoo.ZOO_DIR / rel)
    metrics = {k: row[k] for k in ("accuracy", "map_e", "map_c", "map_std_e", "map_std_c", "top100_e", "top100_c")}
    zoo.record(zoo.ZOO_DIR, "student-indistill", {
        "file": rel, "sha256": sha, "dataset": cfg.dataset, "seed": 0, "config": asdict(cfg),
        "command": "python -m indistill_lab reproduce (method indistill-paper, seed 0)",
        "epochs": cfg.epochs, "train_seconds": row["train_seconds"], "torch": torch.__version__,
        **metrics, "test_accuracy": row["accuracy"]})
