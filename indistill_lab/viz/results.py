"""Figures of the reproduced results table: a widget to choose the metric and the distance in notebook 07
(the README's static PNG is `static.results_png`)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import ipywidgets as widgets

from .common import Explorer, SyncedFigure

METRICS = {"mAP (11-point)": "map", "mAP (standard)": "map_std", "top-100 precision": "top100"}
DISTANCES = {"euclidean": "e", "cosine": "c"}


class ResultsExplorer(Explorer):
    """Widget over result rows (one per method and seed): pick the metric and the distance; a wide tick shows
    the mean over seeds with the std as error bars, dots show each seed.

    Means are ticks, not bars: the axis is cut to the values' range (the methods differ by tenths of a point),
    and a bar on a cut axis draws a length that is not its value (on an axis from 74.5 the cross-entropy
    student's bar looked a third of PKT's); the cut is said on the axis title."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            raise ValueError("ResultsExplorer needs result rows: run `python -m indistill_lab reproduce` first.")
        self.rows = list(rows)
        self.methods = list(dict.fromkeys(r["method"] for r in self.rows))
        self.metric = widgets.Dropdown(options=list(METRICS), description="metric")
        self.distance = widgets.ToggleButtons(options=list(DISTANCES), description="distance",
                                              style={"button_width": "auto"})
        self.figure = SyncedFigure()
        self.figure.add_scatter(x=self.methods, y=[0] * len(self.methods), name="mean over seeds (± std)",
                                mode="markers", marker=dict(symbol="line-ew", size=34, line=dict(width=4,
                                color="#1f77b4")), error_y=dict(type="data", array=[0] * len(self.methods)))
        self.figure.add_scatter(x=[], y=[], mode="markers", name="one seed", marker=dict(color="black", size=6))
        self.figure.update_layout(height=380, margin=dict(t=50, b=90), yaxis_title="%")
        for control in (self.metric, self.distance):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def column(self) -> str:
        """The result column the controls select, e.g. 'map_e'."""
        return f"{METRICS[self.metric.value]}_{DISTANCES[self.distance.value]}"

    def values(self, method: str) -> list[float]:
        return [float(r[self.column()]) for r in self.rows if r["method"] == method]

    def update(self) -> None:
        means, stds, xs, ys = [], [], [], []
        for m in self.methods:
            vals = self.values(m)
            mean = sum(vals) / len(vals)
            means.append(mean)
            stds.append((sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0)
            xs += [m] * len(vals)
            ys += vals
        low, high = min(ys), max(ys)
        with self.figure.batch_update():
            self.figure.data[0].y, self.figure.data[0].error_y.array = means, stds
            self.figure.data[1].x, self.figure.data[1].y = xs, ys
            self.figure.layout.title = f"{self.metric.value}, {self.distance.value} distance"
            bottom = max(0.0, low - 3)
            self.figure.layout.yaxis.range = [bottom, min(100, high + 2)]
            self.figure.layout.yaxis.title.text = f"% (axis cut: starts at {bottom:.1f}, not 0)" if bottom else "%"

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.metric, self.distance]), self.figure])
