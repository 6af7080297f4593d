"""One display convention for every interactive view: it shows itself as a cell's last expression."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import indistill_lab.viz as viz
from indistill_lab.viz.common import Explorer
from indistill_lab.viz.results import ResultsExplorer


def test_every_interactive_view_is_an_explorer_with_a_layout():
    views = []
    for info in pkgutil.iter_modules(viz.__path__):
        module = importlib.import_module(f"indistill_lab.viz.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and name.endswith(("Explorer", "View", "Editor")) and cls is not Explorer:
                views.append(cls)
                assert issubclass(cls, Explorer), f"{name} does not follow the Explorer display convention"
                assert cls.layout is not Explorer.layout, f"{name} does not arrange its widgets in layout()"
    assert len(views) >= 7


def test_an_explorer_displays_as_one_widget_view():
    rows = [dict(method=m, seed=s, map_e=50.0 + s, map_c=51.0, top100_e=60.0, top100_c=61.0, accuracy=80.0,
                 accuracy_from="head", wall_seconds=1.0) for m in ("student-ce", "pkt") for s in (0, 1)]
    explorer = ResultsExplorer(rows)
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    assert explorer.widget is explorer.widget  # built once
