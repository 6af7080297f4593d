"""Runs of a results table as Ray tasks (the optional 'cluster' extra): one task builds the shared stages,
then each (method, seed) is a task of 1 CPU, or 1 GPU where the cluster has GPUs."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..config import QUICK_ENV, quick_mode
from ..pipeline import Prepared, RunConfig, prepare
from .runs import Session, needs_finetune, shared_cache


_RAY_SESSION: Session | None = None
"""The session of a Ray worker process: kept across its tasks while they share a configuration."""


def _ray_log(message: str) -> None:
    print(f"[ray worker {os.getpid()}] {message}", flush=True)


def _ray_prepare(cfg: RunConfig, quick: bool, methods: Sequence[str]) -> Prepared:
    """The shared stages, built once for the whole cluster by one Ray task (the driver's quick mode)."""
    os.environ[QUICK_ENV] = "1" if quick else ""
    torch.set_num_threads(1)
    return prepare(cfg, log=_ray_log, finetune=needs_finetune(methods))


def _ray_task(cfg: RunConfig, methods: Sequence[str], method: str, seed: int, quick: bool,
              prep: Prepared) -> tuple[dict[str, Any], nn.Module]:
    """One (method, seed) in a Ray worker, on one thread: the shared stages come from `_ray_prepare`
    (through Ray's object store); this process builds the target cache on its first task of the
    configuration and reuses both for its next ones."""
    global _RAY_SESSION
    os.environ[QUICK_ENV] = "1" if quick else ""
    torch.set_num_threads(1)
    if _RAY_SESSION is None or (_RAY_SESSION.cfg, _RAY_SESSION.methods) != (cfg, list(methods)):
        _RAY_SESSION = Session(cfg, methods, log=_ray_log)
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
        prep = ray.remote(_ray_prepare).options(num_cpus=1, num_gpus=gpus).remote(cfg, quick_mode(), list(methods))
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
