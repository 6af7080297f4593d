"""A results table of the kit's methods on models and data of your own: what `reproduce` is for the presets.

    prep = prepare_models(cfg, train, test, teacher, auxiliary, student_template)
    rows = compare_methods(prep, new_student, cfg, ["pkt", "indistill-paper"], seeds=[0, 1, 2], name="my-resnets")

One CSV row per (method, seed), flushed as each run ends, so a killed table resumes where it stopped. The file
is `<results>/<name>-<digest>.csv`; the digest covers the configuration, the teacher's and the auxiliary's
weights, the student's architecture and the data, so changing any of them starts a new table instead of
mixing rows. Rows are keyed by the method's identity too (`Method.identity`): an edited method is rerun,
and `force` reruns the asked-for runs (their old rows move to `<file>.replaced`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..methods import check_names, get_method
from ..pipeline import Prepared, RunConfig
from ..results import ResultsTable, check_unique, remove_rows
from .reproduce import one_thread
from .runs import run_method, shared_cache
from .tables import RESULT_TYPES, markdown_summary, summarise


def _update(h: Any, tensor: torch.Tensor) -> None:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    h.update(str((tuple(tensor.shape), flat.dtype)).encode())
    h.update(flat.view(torch.uint8).numpy().tobytes())


def models_digest(prep: Prepared, student: Callable[[], nn.Module]) -> str:
    """10 hex digits of what a table on a user's models depends on besides the configuration: the teacher's and
    auxiliary's parameters and buffers, the student's architecture (its repr and tensor shapes) and the data."""
    h = hashlib.sha256()
    for model in (prep.teacher, prep.aux):
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            _update(h, tensor)
    example = student()
    h.update(repr(example).encode())
    h.update(str([(k, tuple(v.shape)) for k, v in example.state_dict().items()]).encode())
    for split in (prep.train, prep.test):
        _update(h, split.x)
        _update(h, split.y)
    return h.hexdigest()[:10]


def compare_methods(prep: Prepared, student: Callable[[], nn.Module], cfg: RunConfig, methods: Sequence[str],
                    seeds: Sequence[int] = (0,), name: str = "my-models", folder: Path | str | None = None,
                    force: bool = False, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and score each method for each seed on `prep` (from `prepare_models`) with students built by
    `student`; returns the table's rows for these methods (current identities) and writes a markdown summary
    and a plot beside the CSV. `folder` defaults to `results_dir()` (`--out` / INDISTILL_OUT)."""
    methods = check_names(check_unique(list(methods), "methods"))
    seeds = check_unique(list(seeds), "seeds")
    if any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative ints, got {seeds}.")
    identity = {m: get_method(m).identity() for m in methods}
    table = ResultsTable(name, {"config": cfg.digest(), "models": models_digest(prep, student)}, RESULT_TYPES,
                         key=("method", "seed", "method_id"), folder=folder)
    if force:
        asked = {(m, s) for m in methods for s in seeds}
        moved = remove_rows(table.path, lambda r: (r["method"], r["seed"]) in asked, RESULT_TYPES)
        if moved:
            log(f"--force: {moved} row(s) of {table.path} moved to {table.path}.replaced")
    todo = table.todo((m, s, identity[m]) for s in seeds for m in methods)
    log(f"{table.path}: {len(todo)} of {len(methods) * len(seeds)} runs to do")
    if todo:
        table.check_writable()
        cache = shared_cache(prep, cfg, methods, student)
        with one_thread():  # as in `reproduce`: rows do not depend on the machine's thread count
            for i, (method, seed, _) in enumerate(todo, 1):
                row, _ = run_method(method, prep, cfg, seed, cache, student=student)
                table.add({**row, "config": table.digest})
                log(f"[{i}/{len(todo)}] {method} seed {seed}: mAP e/c {row['map_e']}/{row['map_c']}, "
                    f"acc {row['accuracy']} ({row['accuracy_from']}), {row['wall_seconds']} s")
    rows = [r for r in table.rows() if r["method"] in identity and r["method_id"] == identity[r["method"]]
            and r["seed"] in seeds]
    if rows:
        from ..viz.static import results_png

        table.write_report(".md", "\n".join([
            f"# {name}: the kit's methods on your models", "",
            f"Written by `compare_methods` (table digest `{table.digest}`: configuration `{cfg.digest()}`, models and "
            "data `" + table.config["models"] + "`), mean ± sample std over seeds.", "", markdown_summary(rows), ""]))
        results_png(summarise(rows), table.path.with_suffix(".png"), title=f"{name}: retrieval mAP by method")
    return rows
