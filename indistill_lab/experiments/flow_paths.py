"""Notebook 03's precomputed results: which pruning criteria keep a model's top flow paths, and the causal check
that zeroing a class's top paths hurts that class more than zeroing other channels.

Both are measured on the zoo teacher and on the model InDistill actually prunes, the PKT auxiliary
(`auxiliary-pkt`), each pruned to the zoo student's widths. Rebuild the stored files with

    python -c "from indistill_lab.experiments.flow_paths import cached_path_survival, cached_ablation; \
[cached_path_survival(m, refresh=True) for m in ('teacher', 'auxiliary-pkt')]; cached_ablation(refresh=True)"

(about 15 minutes on a 2-core CPU); they land in results/precomputed/flow-*.json and flow-ablation-*.json.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import zoo
from ..cache import cached
from ..criteria import criteria
from ..data import Loader, load_split
from ..flow import ablation_check, chance_survival, flow_layers, path_survival
from ..pruning import prune_to_widths
from ..taps import get_module

FLOW_MODELS = ("teacher", "auxiliary-pkt")
"""The zoo models notebook 03 measures: the teacher, and the PKT auxiliary that InDistill prunes."""

SURVIVAL_RUN: dict[str, Any] = {"dataset": "fashion-mnist", "images": 20, "n_paths": 20, "n_steps": 32,
                                "taylor_batches": 4, "seed": 0}
"""Survival comparison: the true class of `images` test images, the model's top `n_paths` paths of each."""

ABLATION_RUN: dict[str, Any] = {"dataset": "fashion-mnist", "models": list(FLOW_MODELS), "classes": list(range(10)),
                                "select_per_class": 32, "eval": 1000, "n_paths": 10, "draws": 10, "n_steps": 16,
                                "seed": 0}
"""Causal check: each class's top `n_paths` paths found on `select_per_class` training images of the class,
their channels zeroed on `eval` test images (all classes, balanced), against `draws` random sets of the same size
and the lowest-attribution channels."""


def cached_path_survival(model: str = "teacher", refresh: bool = False, **overrides: Any) -> dict[str, Any]:
    """How much of zoo `model`'s top paths (true class of `images` test images) survives pruning it to the zoo
    student's widths under each built-in criterion (`flow.path_survival` measures), with the chance levels of
    random channel choices; stored in results/precomputed/flow-*.json."""
    if model not in FLOW_MODELS:
        raise KeyError(f"Unknown model {model!r}; notebook 03 measures {', '.join(FLOW_MODELS)}.")
    params = {**SURVIVAL_RUN, **overrides, "model": model}

    def compute() -> dict[str, Any]:
        source, student = zoo.load(model), zoo.load("student")
        test = load_split(params["dataset"], "test", quick=False).subset(params["images"], seed=params["seed"])
        train = load_split(params["dataset"], "train", quick=False).subset(128 * params["taylor_batches"])
        kept, chance = {}, {}
        layers = flow_layers(source)
        widths = [get_module(source, layer.conv).out_channels for layer in layers]
        for name, criterion in criteria(Loader(train, 128, shuffle=False), seed=params["seed"]).items():
            _, report = prune_to_widths(source, student, criterion)
            kept[name] = report.kept
            chance[name] = {"paths": chance_survival(layers, report.kept, widths),
                            "channels": sum(len(report.kept[l.conv]) / w for l, w in zip(layers, widths)) / len(layers)}
        survival = path_survival(source, kept, test.x, test.y.tolist(), params["n_paths"], params["n_steps"])
        return {"survival": survival, "chance": chance, "images": test.y.tolist(), "widths": widths}

    return cached("flow", params, compute, refresh=refresh)


def cached_ablation(refresh: bool = False, **overrides: Any) -> dict[str, Any]:
    """{model: [ablation_check result per class]} for `ABLATION_RUN` (plus `overrides`); stored in
    results/precomputed/flow-ablation-*.json."""
    params = {**ABLATION_RUN, **overrides}

    def compute() -> dict[str, Any]:
        train = load_split(params["dataset"], "train", quick=False)
        test = load_split(params["dataset"], "test", quick=False).subset(params["eval"], seed=params["seed"])
        out = {}
        for name in params["models"]:
            model = zoo.load(name)
            out[name] = []
            for k in params["classes"]:
                select = train.x[train.y == k][:params["select_per_class"]]
                torch.manual_seed(params["seed"])
                out[name].append(ablation_check(model, select, test.x, test.y, k, params["n_paths"], params["draws"],
                                                params["n_steps"], params["seed"]))
        return out

    return cached("flow-ablation", params, compute, refresh=refresh)
