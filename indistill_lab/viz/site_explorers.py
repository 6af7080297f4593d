"""The explorers the course website turns into client-side sliders, built at site-build time as their notebooks
build them (same inputs, same library classes), never by running a notebook.

Each `SiteSlider` names its page (notebook file stem), the code that marks its cell (the slider goes right
after that cell) and a `build()` that returns the explorer and the controls to precompute. The stored notebooks
were run in quick mode (`make notebooks`), so inputs that depend on the mode are loaded in quick mode;
tests/test_static_site.py checks that each explorer's opening state equals the figure stored in its notebook.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import zoo
from ..cache import cached
from ..data import load_split
from .common import Explorer
from .sliders import Control

PRIMER_TEMPERATURES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0)
"""00's slider runs from 0.5 to 50 on a log scale; these are the round values on it a learner tries."""
RETRIEVAL_QUERIES = 16
"""01: the first queries of the test split, each with every model (euclidean distance, as the explorer opens)."""


@dataclass(frozen=True)
class SiteSlider:
    """An explorer of one page: where it is (the notebook stem and a code fragment of its cell) and how to
    rebuild it with the controls to precompute (and the values the page opens at)."""

    name: str
    notebook: str
    marker: str
    intro: str
    build: Callable[[], tuple[Explorer, list[Control], list[Any]]]


def _temperature() -> tuple[Explorer, list[Control], list[Any]]:
    """00: the teacher's soft targets of one Pullover, Sneaker and Shirt (the first of each in the test set)."""
    from .primer import TemperatureExplorer

    teacher = zoo.load("teacher")
    test = load_split("fashion-mnist", "test", quick=False)
    names = test.info.class_names
    picked = [int((test.y == names.index(c)).nonzero()[0]) for c in ("Pullover", "Sneaker", "Shirt")]
    with torch.no_grad():
        logits = teacher(test.x[picked])
    titles = [f"test image #{i}: {names[int(test.y[i])]}" for i in picked]
    explorer = TemperatureExplorer(logits, names, titles, temperature=4)
    return explorer, [Control("temperature", PRIMER_TEMPERATURES, "T")], [4.0]


def _retrieval() -> tuple[Explorer, list[Control], list[Any]]:
    """01: the zoo's three models querying the quick-mode training split with the quick-mode test split."""
    from .retrieval import RetrievalExplorer

    train, test = load_split("fashion-mnist", "train", quick=True), load_split("fashion-mnist", "test", quick=True)
    trained = {name: zoo.load(name) for name in ["teacher", "auxiliary", "student"]}
    explorer = RetrievalExplorer(trained, test, train, k=8)
    controls = [Control("model", tuple(trained), "model", "select"),
                Control("query", tuple(range(RETRIEVAL_QUERIES)), "query #")]
    return explorer, controls, ["teacher", 0]


def _not_precomputed() -> Any:
    raise FileNotFoundError("notebook 02's pruning sweep is not in results/precomputed/: run notebook 02 once "
                            "(it computes and stores the sweep) before building the site.")


def _pruning() -> tuple[Explorer, list[Control], list[Any]]:
    """02: the committed pruning sweep of the zoo's auxiliary (never recomputed here)."""
    from .pruning import SweepExplorer

    criteria, ratios = ["L1", "L2", "BN scale", "Taylor", "random"], [0.25, 0.5, 0.75, 0.875]
    params = {"model": "auxiliary", "sha256": zoo.read_manifest()["models"]["auxiliary"]["sha256"],
              "criteria": criteria, "ratios": ratios, "finetune": 2048, "queries": 500, "database": 2000,
              "finetune_epochs": 1, "seed": 0}
    rows = cached("pruning-sweep", params, _not_precomputed)
    auxiliary = zoo.load("auxiliary")
    widths = {p: m.out_channels for p, m in auxiliary.named_modules() if isinstance(m, torch.nn.Conv2d)}
    explorer = SweepExplorer(rows, widths)
    modes = tuple(dict.fromkeys(r["mode"] for r in rows))
    controls = [Control("criterion", tuple(criteria), "criterion", "select"),
                Control("mode", modes, "prune", "select"), Control("ratio", tuple(ratios), "ratio")]
    return explorer, controls, ["L1", modes[0], 0.5]


def _shape() -> tuple[Explorer, list[Control], list[Any]]:
    """09: sorted softmax curves from the committed self-distillation views (beta stays at 1)."""
    from ..experiments.self_distillation import self_distillation_views
    from .self_distillation import ShapeExplorer

    views = self_distillation_views()
    explorer = ShapeExplorer(views["logits_before"], views["logits_after"], views["classes"])
    slider = explorer.temperature
    steps = round((slider.max - slider.min) / slider.step)
    temperatures = tuple(round(slider.min + k * slider.step, 6) for k in range(steps + 1))
    return explorer, [Control("temperature", temperatures, "T")], [4.0]


SITE_EXPLORERS: tuple[SiteSlider, ...] = (
    SiteSlider("00-temperature", "00_distillation_primer", "TemperatureExplorer(",
                 "The temperature explorer above, without a kernel: its states for these temperatures were "
                 "computed when this site was built. Move the slider.", _temperature),
    SiteSlider("01-retrieval", "01_data_models_and_retrieval", "RetrievalExplorer(",
                 f"The retrieval explorer above, without a kernel: the first {RETRIEVAL_QUERIES} queries with each "
                 "model (euclidean distance), computed when this site was built.", _retrieval),
    SiteSlider("02-pruning", "02_pruning_to_align", "SweepExplorer(",
                 "The sweep explorer above, without a kernel: every criterion, stage and ratio of the stored sweep "
                 "(the fresh-run button needs the notebook).", _pruning),
    SiteSlider("09-temperature", "09_self_distillation", "ShapeExplorer(",
                 "The shape explorer above, without a kernel: every temperature of its slider at beta = 1, "
                 "computed when this site was built.", _shape),
)
