"""The results tables: every method for every seed, one CSV row per run, then a markdown table and a plot.

    rows = reproduce(RunConfig(), seeds=range(3), workers=2)   # resumable: rows already there are skipped

Runs go in-process (`workers=1`), to worker processes of one thread each (`workers=N`) or to a Ray
cluster (`ray_address="auto"`, one task per run); each run seeds itself, so the rows are the same
whichever way (on CPUs). Files are named after the dataset for the default
configuration and `<dataset>-<digest>` for any other, so a variant never replaces the committed table.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import zoo
from ..config import QUICK_ENV, REPO_ROOT, quick_mode
from ..evaluation import evaluate_student
from ..feature_cache import FeatureCache
from ..methods import Context, check_names, describe, get_method, method_names
from ..data import load_split
from ..models import model_input_shape
from ..pipeline import Prepared, RunConfig, build, make_loader, prepare

RESULT_COLUMNS = ["method", "seed", "config", "epochs", "epoch_size", "a", "optimizer_state", "accuracy",
                  "accuracy_from", "map_e", "map_c", "map_std_e", "map_std_c", "top100_e", "top100_c",
                  "train_seconds", "eval_seconds", "wall_seconds", "phases"]


def read_results(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a results CSV, numbers parsed (empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.append({k: _parse(v) for k, v in row.items()})
    return rows


def _parse(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def append_result(path: Path | str, row: Mapping[str, Any]) -> None:
    """Append one run's row (header written with the first row), flushed so a killed run loses nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    if not new:
        with path.open() as f:
            header = f.readline().strip().split(",")
        if header != RESULT_COLUMNS:
            raise ValueError(f"{path} has the columns {header}, not this kit's {RESULT_COLUMNS}: it was written by "
                             "an older version. Move it aside (its rows stay valid for their own configuration) "
                             "or pass another `name`.")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})


# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------
SUMMARY_COLUMNS = [("mAP (e)", "map_e"), ("mAP (c)", "map_c"), ("top-100 (e)", "top100_e"),
                   ("top-100 (c)", "top100_c"), ("accuracy", "accuracy"), ("wall s / run", "wall_seconds")]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method (in registry order): number of seeds and (mean, std) of each summary column."""
    out = []
    present = {r["method"] for r in rows}
    for method in [m for m in method_names() if m in present] + sorted(present - set(method_names())):
        mine = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "seeds": len(mine),
                                 "accuracy_from": mine[0]["accuracy_from"]}
        for _, key in SUMMARY_COLUMNS:
            entry[key] = mean_std([float(r[key]) for r in mine])
        out.append(entry)
    return out


def markdown_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table: mean +/- std over seeds, best mean per retrieval column in bold."""
    summary = summarise(rows)
    best = {key: max(s[key][0] for s in summary) for _, key in SUMMARY_COLUMNS[:5]}
    lines = ["| method | seeds | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |",
             "|---|---|" + "---|" * len(SUMMARY_COLUMNS)]
    for s in summary:
        cells = []
        for _, key in SUMMARY_COLUMNS:
            mean, std = s[key]
            text = f"{mean:.0f} ± {std:.0f}" if key == "wall_seconds" else f"{mean:.2f} ± {std:.2f}"
            if key == "accuracy" and s["accuracy_from"] == "probe":
                text += "*"
            cells.append(f"**{text}**" if key in best and mean == best[key] else text)
        lines.append(f"| {s['method']} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows: Sequence[Mapping[str, Any]], cfg: RunConfig, md_path: Path, png_path: Path) -> None:
    """Write the markdown table (with the configuration and method descriptions) and the PNG plot."""
    if not rows:
        return
    from ..viz.results import results_png

    text = [f"# InDistill and baselines on {cfg.dataset}", "",
            f"Generated by `python -m indistill_lab reproduce --dataset {cfg.dataset}` (config `{cfg.digest()}`), "
            "one row per method, mean ± sample std over seeds. Retrieval: queries = test set, database = "
            "train set, penultimate features; mAP = 11-point interpolated (the InDistill tables' metric). "
            "Accuracy marked * comes from a linear probe fitted on frozen train embeddings (the method never "
            "trains the classifier). Wall time = training + evaluation of one run.", "",
            markdown_summary(rows), "",
            "Configuration: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()), "",
            "Methods:", *[f"- `{m}`: {d}" for m, d in describe().items() if any(r["method"] == m for r in rows)], ""]
    md_path.write_text("\n".join(text))
    results_png(summarise(rows), png_path, title=f"{cfg.dataset}: retrieval mAP by method (mean ± std over seeds)")


# ------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------
def run_method(method: str, prep: Prepared, cfg: RunConfig, seed: int, cache: FeatureCache | None = None,
               progress: bool = False) -> tuple[dict[str, Any], nn.Module]:
    """Train and evaluate one (method, seed); returns the result row and the student."""
    start = time.perf_counter()
    loader = make_loader(cfg, prep.train, seed)
    if cache is not None:
        cache.loader = loader  # tables are per example, so they serve every seed's batch order
    trained = get_method(method).train(Context(cfg, prep.train, prep.sources, loader, cache), seed, progress=progress)
    mid = time.perf_counter()
    row = evaluate_student(trained.student, prep.train, prep.test, trained.trains_head)
    done = time.perf_counter()
    return {"method": method, "seed": seed, "config": cfg.digest(), "epochs": cfg.epochs,
            "epoch_size": cfg.epoch_size or len(prep.train), "a": cfg.a, "optimizer_state": cfg.optimizer_state,
            **row, "train_seconds": round(mid - start, 1), "eval_seconds": round(done - mid, 1),
            "wall_seconds": round(done - start, 1), "phases": json.dumps(trained.phases)}, trained.student


def shared_cache(prep: Prepared, cfg: RunConfig, methods: Sequence[str]) -> FeatureCache | None:
    """Every listed method's targets computed once, up front (None when the configuration disables it)."""
    if not cfg.cache:
        return None
    ctx = Context(cfg, prep.train, prep.sources)
    layers = list(dict.fromkeys(p for m in methods for p in get_method(m).source_layers(ctx)))
    cache = FeatureCache(prep.sources.features, make_loader(cfg, prep.train, 0))
    cache.prefetch(layers)
    return cache


class _Session:
    """The shared stages and target cache of one process, built on its first run and then reused."""

    def __init__(self, cfg: RunConfig, methods: Sequence[str], log: Callable[[str], None]) -> None:
        self.cfg, self.methods, self.log = cfg, list(methods), log
        self.prep: Prepared | None = None
        self.cache: FeatureCache | None = None

    def build(self) -> None:
        """The shared stages and every method's targets (once)."""
        if self.prep is not None:
            return
        self.prep = prepare(self.cfg, log=self.log)
        t0 = time.perf_counter()
        self.cache = shared_cache(self.prep, self.cfg, self.methods)
        if self.cache is not None:
            self.log(f"feature cache: {len(self.cache.tables)} tables, {self.cache.nbytes / 2**20:.0f} MiB, "
                     f"{time.perf_counter() - t0:.0f} s")

    def run(self, method: str, seed: int) -> tuple[dict[str, Any], nn.Module]:
        self.build()
        assert self.prep is not None
        return run_method(method, self.prep, self.cfg, seed, self.cache)


_WORKER: _Session | None = None
"""The session a worker process runs with: inherited from the parent (fork) or built by `_worker_init`."""


def _worker_init(cfg: RunConfig | None, methods: Sequence[str]) -> None:
    global _WORKER
    torch.set_num_threads(1)
    if cfg is not None:
        _WORKER = _Session(cfg, methods, log=lambda m: print(f"[worker {os.getpid()}] {m}", flush=True))


def _worker_run(method: str, seed: int) -> tuple[dict[str, Any], nn.Module]:
    assert _WORKER is not None, "_worker_init did not run"
    return _WORKER.run(method, seed)


def _pool(cfg: RunConfig, methods: Sequence[str], workers: int, log: Callable[[str], None]) -> ProcessPoolExecutor:
    """Worker processes of one thread each. Where fork exists, the parent builds the shared stages and
    the target cache once (on one thread, so no OpenMP pool is forked) and the workers share its memory
    copy-on-write: one cache for all workers instead of one each. Elsewhere each worker builds its own."""
    global _WORKER
    if "fork" not in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(cfg, methods))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _WORKER = _Session(cfg, methods, log)
        _WORKER.build()
    finally:
        torch.set_num_threads(threads)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init,
                               initargs=(None, methods))


_RAY_SESSION: _Session | None = None
"""The session of a Ray worker process: kept across its tasks while they share a configuration."""


def _ray_log(message: str) -> None:
    print(f"[ray worker {os.getpid()}] {message}", flush=True)


def _ray_prepare(cfg: RunConfig, quick: bool) -> Prepared:
    """The shared stages, built once for the whole cluster by one Ray task (the driver's quick mode)."""
    os.environ[QUICK_ENV] = "1" if quick else ""
    torch.set_num_threads(1)
    return prepare(cfg, log=_ray_log)


def _ray_task(cfg: RunConfig, methods: Sequence[str], method: str, seed: int, quick: bool,
              prep: Prepared) -> tuple[dict[str, Any], nn.Module]:
    """One (method, seed) in a Ray worker, on one thread: the shared stages come from `_ray_prepare`
    (through Ray's object store); this process builds the target cache on its first task of the
    configuration and reuses both for its next ones."""
    global _RAY_SESSION
    os.environ[QUICK_ENV] = "1" if quick else ""
    torch.set_num_threads(1)
    if _RAY_SESSION is None or (_RAY_SESSION.cfg, _RAY_SESSION.methods) != (cfg, list(methods)):
        _RAY_SESSION = _Session(cfg, methods, log=_ray_log)
        _RAY_SESSION.prep, _RAY_SESSION.cache = prep, shared_cache(prep, cfg, methods)
    row, student = _RAY_SESSION.run(method, seed)
    return row, student.cpu()


def ray_runs(cfg: RunConfig, methods: Sequence[str], todo: Sequence[tuple[str, int]], address: str,
             log: Callable[[str], None] = print) -> Iterator[tuple[dict[str, Any], nn.Module]]:
    """Each (method, seed) of `todo` as a Ray task needing 1 CPU, or 1 GPU where the cluster has GPUs,
    after one task of the same needs has built the shared stages; yields (row, student) as tasks finish.
    Uses the Ray of this process if it is initialised, else connects with `ray.init(address)` ('auto':
    the cluster of `ray start` or $RAY_ADDRESS; 'ray://head:10001'; 'local': a new instance on this
    machine) and shuts it down afterwards. Leaving early (an error) cancels the tasks not finished."""
    try:
        import ray  # the optional 'cluster' extra, imported only here
    except ImportError as exc:
        raise RuntimeError("Ray is not installed: pip install -e '.[cluster]' (on every node of the cluster).") from exc
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address)
        except ConnectionError as exc:
            raise RuntimeError(f"no Ray cluster at {address!r} ({exc}). Start one with `ray start --head`, pass its "
                               "address, or use --ray local for an instance on this machine.") from exc
    try:
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        prep = ray.remote(_ray_prepare).options(num_cpus=1, num_gpus=gpus).remote(cfg, quick_mode())
        task = ray.remote(_ray_task).options(num_cpus=1, num_gpus=gpus)
        log(f"ray: {len(todo)} task(s) of 1 {'GPU' if gpus else 'CPU'} each on a cluster of "
            f"{resources.get('CPU', 0):.0f} CPUs, {resources.get('GPU', 0):.0f} GPUs")
        pending = {task.remote(cfg, list(methods), m, s, quick_mode(), prep): (m, s) for m, s in todo}
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                del pending[ref]
                yield ray.get(ref)
        finally:
            for ref in [prep, *pending] if pending else []:
                ray.cancel(ref)
    finally:
        if started:
            ray.shutdown()


def step_seconds(cfg: RunConfig, steps: int = 8) -> float:
    """Median seconds of one student training step (cross-entropy, batch `cfg.batch_size`) on one thread,
    measured now: the unit of the projection printed before a table starts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
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
    finally:
        torch.set_num_threads(threads)


def projection(cfg: RunConfig, runs: int, workers: int, train_size: int) -> str:
    """Runs x epochs x steps x measured step time / workers: a floor for the training time of a table
    (distillation steps cost somewhat more; evaluation adds about a minute per run)."""
    steps = -(-min(cfg.epoch_size or train_size, train_size) // cfg.batch_size)
    step = step_seconds(cfg)
    hours = runs * cfg.epochs * steps * step / max(1, min(workers, runs)) / 3600
    return (f"projection: {runs} runs x {cfg.epochs} epochs x {steps} steps x {1000 * step:.0f} ms/step "
            f"/ {min(workers, runs)} worker(s) = {hours:.2f} h of training (plus evaluation)")


def results_name(cfg: RunConfig) -> str:
    """'<dataset>' for the default configuration outside quick mode, '<dataset>-<digest>' otherwise."""
    default = cfg == RunConfig(dataset=cfg.dataset) and not quick_mode()
    return cfg.dataset if default else f"{cfg.dataset}-{cfg.digest()}"


def reproduce(cfg: RunConfig, seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] | None = None,
              results_dir: Path | str = REPO_ROOT / "results", name: str | None = None, workers: int = 1,
              save_students: bool = True, log: Callable[[str], None] = print,
              ray_address: str | None = None) -> list[dict[str, Any]]:
    """Every method for every seed (seed-major, so a partial run still compares all methods), one CSV row
    per finished run; rows already present for this config are skipped. Then the table and the plot.

    With `ray_address` each run is a Ray task (see `ray_runs`; needs the 'cluster' extra) and the rows
    are written here as tasks finish, in the same resumable CSV.

    With `save_students`, seed 0's InDistill (paper curriculum) student of the default configuration
    is recorded in the zoo as 'student-indistill' (notebook 07's retrieval comparison).
    """
    methods = check_names(methods or method_names())
    seeds = list(seeds)
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds}; e.g. --seeds 3 "
                         "runs seeds 0, 1, 2.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if workers > 1 and ray_address is not None:
        raise ValueError("choose worker processes (workers > 1) or Ray (ray_address), not both: Ray already "
                         "runs one task per CPU of its cluster.")
    results_dir = Path(results_dir)
    name = name or results_name(cfg)
    csv_path = results_dir / f"{name}.csv"
    done = {(r["method"], r["seed"]) for r in read_results(csv_path) if r["config"] == cfg.digest()}
    todo = [(m, s) for s in seeds for m in methods if (m, s) not in done]
    log(f"config {cfg.digest()}: {len(done)} runs already in {csv_path}, {len(todo)} to do"
        + (f" on {workers} worker processes" if workers > 1 and todo else "")
        + (f" as Ray tasks ({ray_address})" if ray_address is not None and todo else ""))
    keep_student = save_students and name == cfg.dataset and cfg.use_zoo
    if todo and ray_address is None:  # measured on this machine's CPU: says nothing of a cluster's
        log(projection(cfg, len(todo), workers, cfg.train_size or load_split(cfg.dataset, "train").x.shape[0]))

    def finished(row: dict[str, Any], student: nn.Module, count: int) -> None:
        append_result(csv_path, row)
        log(f"[{count}/{len(todo)}] {row['method']} seed {row['seed']}: mAP e/c {row['map_e']}/{row['map_c']}, "
            f"acc {row['accuracy']} ({row['accuracy_from']}), train {row['train_seconds']} s, "
            f"eval {row['eval_seconds']} s")
        if keep_student and row["seed"] == 0 and row["method"] == "indistill-paper":
            _save_student(student, cfg, row)

    if ray_address is not None and todo:
        for i, (row, student) in enumerate(ray_runs(cfg, methods, todo, ray_address, log), 1):
            finished(row, student, i)
    elif workers == 1:
        session = _Session(cfg, methods, log)
        for i, (method, seed) in enumerate(todo, 1):
            finished(*session.run(method, seed), i)
    elif todo:
        global _WORKER
        try:
            with _pool(cfg, methods, workers, log) as pool:
                futures = [pool.submit(_worker_run, m, s) for m, s in todo]
                for i, future in enumerate(as_completed(futures), 1):
                    finished(*future.result(), i)
        finally:
            _WORKER = None  # the parent's copy of the shared stages and cache is freed
    rows = [r for r in read_results(csv_path) if r["config"] == cfg.digest()]
    write_report(rows, cfg, results_dir / f"{name}.md", results_dir / f"{name}.png")
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


def rows_matching(results_dir: Path | str = REPO_ROOT / "results", **columns: Any) -> list[dict[str, Any]]:
    """Rows of every current-format results CSV in `results_dir` whose columns equal `columns`
    (e.g. epochs=15, a=0, seed=0), whatever their file: how a notebook gathers the same budget
    under several optimizer-state policies, made in different runs."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.csv")):
        with path.open() as f:
            if f.readline().strip().split(",") != RESULT_COLUMNS:
                continue
        rows += [r for r in read_results(path) if all(r.get(k) == v for k, v in columns.items())]
    return rows
