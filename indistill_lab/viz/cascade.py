"""Figures of the cascade (notebook 08): masks learning over training, kept fraction per layer, and the
results against parameters with a control for the number of teaching assistants. They only draw."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import Explorer, SyncedFigure

METRICS = {"accuracy": "accuracy", "mAP (euclidean)": "map_e", "mAP (cosine)": "map_c"}


def _masks(story: Mapping[str, Any], model: int) -> list[list[int]]:
    """Model `model`'s 0/1 mask at every snapshot of a run's story (masks stored as '0101' strings)."""
    return [[int(c) for c in s["masks"][model]] for s in story["snapshots"]]


def kept_fractions(mask: Sequence[int], sizes: Sequence[int]) -> list[float]:
    """Fraction of each layer's filters a flat mask keeps."""
    out, start = [], 0
    for n in sizes:
        out.append(sum(mask[start:start + n]) / n)
        start += n
    return out


def comebacks(story: Mapping[str, Any], model: int) -> int:
    """Filters of `model` that were pruned at some snapshot and kept again at a later one."""
    masks, count = _masks(story, model), 0
    for f in range(len(masks[0])):
        seq = [m[f] for m in masks]
        count += any(a == 0 and 1 in seq[j + 1:] for j, a in enumerate(seq))
    return count


class MaskExplorer(Explorer):
    """A run's masks over training: heatmap of kept filters (rows, grouped by layer) against snapshots, a slider
    over snapshots marking one column, and that snapshot's kept fraction per layer for every model."""

    def __init__(self, story: Mapping[str, Any], names: Sequence[str]) -> None:
        self.story, self.names = story, list(names)
        snaps = story["snapshots"]
        self.model = widgets.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0, description="model")
        self.slider = widgets.IntSlider(min=0, max=len(snaps) - 1, value=len(snaps) - 1, description="snapshot",
                                        continuous_update=False)
        self.figure = SyncedFigure(make_subplots(rows=1, cols=2, column_widths=[0.68, 0.32], subplot_titles=(
            "kept filters (yellow) per snapshot", "kept fraction per layer")))
        self.figure.update_layout(height=420, margin=dict(t=50, b=40), showlegend=True)
        self.model.observe(lambda _: self.redraw(), "value")
        self.slider.observe(lambda _: self.redraw(), "value")
        self.redraw()

    def redraw(self) -> None:
        snaps, sizes, layers = self.story["snapshots"], self.story["sizes"], self.story["layers"]
        masks = _masks(self.story, self.model.value)
        at = self.slider.value
        rows = [f"{layer}[{j}]" for layer, n in zip(layers, sizes) for j in range(n)]
        cols = [f"step {s['step']}" for s in snaps]
        bars = [go.Bar(x=layers, y=kept_fractions([int(c) for c in snaps[at]["masks"][i]], sizes), name=name)
                for i, name in enumerate(self.names)]
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.add_heatmap(z=[list(r) for r in zip(*masks)], x=cols, y=rows, showscale=False,
                                    colorscale="Viridis", zmin=0, zmax=1, row=1, col=1)
            self.figure.add_scatter(x=[cols[at]] * 2, y=[rows[0], rows[-1]], mode="lines", name="snapshot",
                                    line=dict(color="red", width=3), row=1, col=1)
            for bar in bars:
                self.figure.add_trace(bar, row=1, col=2)
            self.figure.update_yaxes(showticklabels=False, row=1, col=1)
            self.figure.update_yaxes(range=[0, 1.05], row=1, col=2)
            self.figure.layout.title = (f"{self.names[self.model.value]}: {comebacks(self.story, self.model.value)} "
                                        "filters pruned and later kept again")

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.model, self.slider]), self.figure])


class ResultsExplorer(Explorer):
    """Accuracy or mAP against parameters (mean ± std over seeds per level), with toggles for which cascades
    (number of assistants) to show beside the two prune-once baselines."""

    def __init__(self, summary: Sequence[Mapping[str, Any]]) -> None:
        self.summary = list(summary)
        cascades = sorted({s["label"] for s in self.summary if s["label"].startswith("cascade")})
        self.metric = widgets.Dropdown(options=list(METRICS), value="accuracy", description="metric")
        self.shown = widgets.SelectMultiple(options=cascades, value=tuple(cascades), description="cascades",
                                            rows=len(cascades))
        self.figure = SyncedFigure()
        self.figure.update_layout(height=420, margin=dict(t=50, b=40), xaxis_title="parameters (exported student)",
                                  xaxis_type="log")
        self.metric.observe(lambda _: self.redraw(), "value")
        self.shown.observe(lambda _: self.redraw(), "value")
        self.redraw()

    def redraw(self) -> None:
        key = METRICS[self.metric.value]
        labels = [lb for lb in dict.fromkeys(s["label"] for s in self.summary)
                  if not lb.startswith("cascade") or lb in self.shown.value]
        with self.figure.batch_update():
            self.figure.data = []
            for lb in labels:
                mine = sorted((s for s in self.summary if s["label"] == lb), key=lambda s: s["params"][0])
                self.figure.add_scatter(
                    x=[s["params"][0] for s in mine], y=[s[key][0] for s in mine], name=lb, mode="lines+markers",
                    error_y=dict(type="data", array=[s[key][1] for s in mine]),
                    text=[f"k = {s['level']}" for s in mine], hovertemplate="%{text}: %{y:.2f}")
            self.figure.layout.yaxis.title = f"{self.metric.value} (%)"
            self.figure.layout.title = f"{self.metric.value} against parameters (k = 0.8, 0.6, 0.3 left to right)"

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.metric, self.shown]), self.figure])


def results_png(summary: Sequence[Mapping[str, Any]], path: Path | str) -> None:
    """Accuracy and mAP (e) against parameters, one line per method (matplotlib, for results/cascade.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (title, key) in zip(axes, (("accuracy", "accuracy"), ("mAP (euclidean)", "map_e"))):
        for lb in dict.fromkeys(s["label"] for s in summary):
            mine = sorted((s for s in summary if s["label"] == lb), key=lambda s: s["params"][0])
            ax.errorbar([s["params"][0] for s in mine], [s[key][0] for s in mine],
                        yerr=[s[key][1] for s in mine], marker="o", capsize=3, label=lb)
        ax.set_xscale("log")
        ax.set_xlabel("parameters of the exported student")
        ax.set_ylabel(f"{title} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Cascaded teaching assistants vs prune-once baselines (Fashion-MNIST, k = 0.8 / 0.6 / 0.3)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
