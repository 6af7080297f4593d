"""One run of a results table, and a process's session: the shared stages and the target cache built once
and reused by every run of the process (in-process, in a forked worker, or in a Ray worker)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..evaluation import evaluate_student
from ..feature_cache import FeatureCache
from ..methods import Context, Method, get_method
from ..pipeline import Prepared, RunConfig, eval_train_split, make_loader, prepare


def run_method(method: str | Method, prep: Prepared, cfg: RunConfig, seed: int, cache: FeatureCache | None = None,
               progress: bool = False, checkpoint: Path | None = None,
               student: Callable[[], nn.Module] | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Train and evaluate one (method, seed); returns the result row and the student. `method` is a
    registered name or a `Method` instance (an experiment's variant, named by its `name`). With
    `checkpoint`, training keeps its last finished epoch there and resumes from it (see `Trainer.resume`).
    `student` builds a fresh student of the user's (`Context.student`); by default the configuration's preset."""
    start = time.perf_counter()
    loader = make_loader(cfg, prep.train, seed)
    if cache is not None:
        cache.loader = loader  # tables are per example, so they serve every seed's batch order
    recipe = method if isinstance(method, Method) else get_method(method)
    trained = recipe.train(Context(cfg, prep.train, prep.sources, loader, cache, checkpoint, student), seed,
                           progress=progress)
    mid = time.perf_counter()
    # the full protocol, or a class-balanced database/probe subset for a short run (the digest says which)
    row = evaluate_student(trained.student, eval_train_split(cfg, prep.train), prep.test, trained.trains_head)
    done = time.perf_counter()
    return {"method": recipe.name, "seed": seed, "config": cfg.digest(), "epochs": cfg.epochs,
            "epoch_size": cfg.epoch_size or len(prep.train), "a": cfg.a, "optimizer_state": cfg.optimizer_state,
            **row, "train_seconds": round(mid - start, 1), "eval_seconds": round(done - mid, 1),
            "wall_seconds": round(done - start, 1), "phases": json.dumps(trained.phases),
            "method_id": recipe.identity()}, trained.student


def needs_finetune(methods: Sequence[str | Method]) -> bool:
    """Whether any of the methods reads the fine-tuned pruned auxiliary (the 'tuned' source of `prepare`)."""
    recipes = [m if isinstance(m, Method) else get_method(m) for m in methods]
    return any(getattr(r, "targets_from", None) == "tuned" for r in recipes)


def shared_cache(prep: Prepared, cfg: RunConfig, methods: Sequence[str],
                 student: Callable[[], nn.Module] | None = None) -> FeatureCache | None:
    """Every listed method's targets computed once, up front. None (targets computed batch by batch) when the
    configuration disables it or when one run sees fewer examples than the cache would compute: a short run
    should not pay for a pass over the whole training set."""
    if not cfg.cache or cfg.is_short(len(prep.train)):
        return None
    ctx = Context(cfg, prep.train, prep.sources, student=student)
    layers = list(dict.fromkeys(p for m in methods for p in get_method(m).source_layers(ctx)))
    cache = FeatureCache(prep.sources.features, make_loader(cfg, prep.train, 0))
    cache.prefetch(layers)
    return cache


class Session:
    """The shared stages and target cache of one process, built on its first run and then reused."""

    def __init__(self, cfg: RunConfig, methods: Sequence[str], log: Callable[[str], None],
                 cache_dir: Path | None = None) -> None:
        self.cfg, self.methods, self.log, self.cache_dir = cfg, list(methods), log, cache_dir
        self.prep: Prepared | None = None
        self.cache: FeatureCache | None = None

    def build(self) -> None:
        """The shared stages and every method's targets (once)."""
        if self.prep is not None:
            return
        self.prep = prepare(self.cfg, log=self.log, finetune=needs_finetune(self.methods), cache_dir=self.cache_dir)
        t0 = time.perf_counter()
        self.cache = shared_cache(self.prep, self.cfg, self.methods)
        if self.cache is not None:
            self.log(f"feature cache: {len(self.cache.tables)} tables, {self.cache.nbytes / 2**20:.0f} MiB, "
                     f"{time.perf_counter() - t0:.0f} s")

    def run(self, method: str, seed: int, checkpoint: Path | None = None) -> tuple[dict[str, Any], nn.Module]:
        """One (method, seed) with this session's stages and cache (resuming from `checkpoint` if it exists)."""
        self.build()
        assert self.prep is not None
        return run_method(method, self.prep, self.cfg, seed, self.cache, checkpoint=checkpoint)
