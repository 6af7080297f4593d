"""Notebook 05's precomputed difficulty tables: the PKT auxiliary that InDistill prunes (`auxiliary-pkt`, pruned
to the student's widths by L1, as `pipeline.prune_auxiliary` does) against fresh students of several seeds,
stage k to stage k. Rebuild the stored file with

    python -c "from indistill_lab.experiments.difficulty import cached_difficulty; cached_difficulty(refresh=True)"

(about 25 minutes on a 2-core CPU); it lands in results/precomputed/difficulty-*.json.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import zoo
from ..cache import cached
from ..criteria import criteria
from ..curriculum import stage_pairs
from ..data import load_split
from ..difficulty import difficulty_table
from ..models import build_model
from ..pruning import prune_to_widths

DIFFICULTY_RUN: dict[str, Any] = {"dataset": "fashion-mnist", "source": "auxiliary-pkt", "criterion": "L1",
                                  "seeds": [0, 1, 2], "probe": 256, "train_images": 40960, "batch_size": 128,
                                  "evals": 40, "fraction": 0.5, "lr": 1e-3}
"""One table per student seed: start measures on `probe` held-out test images; each pair distilled alone for one
pass over `train_images` training images (320 Adam steps of `batch_size`), the held-out loss measured `evals`
times."""


def fresh_student(seed: int, dataset: str = "fashion-mnist") -> nn.Module:
    """The student InDistill starts from: the kit's student at its seeded initialisation."""
    torch.manual_seed(seed)
    return build_model("student", dataset)


def pruned_source(params: dict[str, Any] = DIFFICULTY_RUN) -> nn.Module:
    """The teacher side of the table: zoo `source` pruned to the student's widths with `criterion` (data-free)."""
    pruned, _ = prune_to_widths(zoo.load(params["source"]), build_model("student", params["dataset"]),
                                criteria()[params["criterion"]])
    return pruned.eval()


def cached_difficulty(refresh: bool = False, **overrides: Any) -> dict[str, Any]:
    """{"seeds": [...], "tables": {seed: difficulty_table}} for `DIFFICULTY_RUN` (plus `overrides`), stored in
    results/precomputed/difficulty-*.json."""
    params = {**DIFFICULTY_RUN, **overrides}

    def compute() -> dict[str, Any]:
        teacher = pruned_source(params)
        probe_x = load_split(params["dataset"], "test", quick=False).subset(params["probe"]).x
        train = load_split(params["dataset"], "train", quick=False)
        tables = {}
        for seed in params["seeds"]:
            student = fresh_student(seed, params["dataset"])
            tables[str(seed)] = difficulty_table(
                teacher, student, stage_pairs(teacher, student), train.subset(params["train_images"], seed=seed),
                probe_x, epochs=1, fraction=params["fraction"], batch_size=params["batch_size"], lr=params["lr"],
                evals=params["evals"], seed=seed)
        return {"seeds": params["seeds"], "tables": tables}

    return cached("difficulty", params, compute, refresh=refresh)
