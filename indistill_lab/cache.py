"""Precomputed results: compute once, store as JSON in `results/precomputed/`, reuse instantly.

Notebooks browse expensive sweeps with sliders; the sweep runs once (or when asked with
`refresh=True`) and its result is committed, so a fresh clone opens the notebook instantly.
The file name carries a hash of the parameters, so changing a parameter never returns a
stale result. A committed result is never overwritten (a refresh returns the fresh result without
storing it), and quick mode stores its results under the git-ignored `results/quick/`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from .config import HOME, quick_mode
from .results import is_tracked

CACHE_DIR = HOME / "results" / "precomputed"


def cache_path(name: str, params: dict[str, Any], folder: Path | None = None) -> Path:
    """Where the result of `name` with `params` is stored."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(folder or CACHE_DIR) / f"{name}-{digest}.json"


def _quick_twin(path: Path) -> Path:
    """Where quick mode stores `path`: the same place under the git-ignored results/quick/."""
    results = HOME / "results"
    inside = results in path.resolve().parents
    return results / "quick" / path.resolve().relative_to(results) if inside else path


def cached(name: str, params: dict[str, Any], compute: Callable[[], Any],
           refresh: bool = False, folder: Path | None = None) -> Any:
    """Return the stored result of `compute()` for (`name`, `params`), computing and storing it if absent.

    `params` must be JSON-serialisable and describe everything the result depends on;
    `compute()` must return JSON-serialisable data.
    """
    path = cache_path(name, params, folder)
    places = [path, _quick_twin(path)] if quick_mode() else [path]
    for place in places:
        if place.is_file() and not refresh:
            return json.loads(place.read_text())["result"]
    result = compute()
    if is_tracked(path):  # a committed result stays as committed: the fresh one is returned, not stored
        return result
    path = places[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"name": name, "params": params, "created": time.strftime("%Y-%m-%d %H:%M"),
                               "result": result}, indent=1))
    os.replace(tmp, path)
    return result
