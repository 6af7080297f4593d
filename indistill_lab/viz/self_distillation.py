"""Figures for self-distillation (notebook 09): what the DRG head attends to, the "shape" of a sorted
output that DSR regularises, and the ablation table. They draw precomputed arrays; they never train."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..self_distillation import sorted_probabilities
from .common import Explorer, SyncedFigure


def neighbour_dsr(logits: torch.Tensor, temperature: float, beta: float = 1.0) -> float:
    """Mean DSR between each sample and the one before it (the previous "batch" of one): how much the
    sorted output's shape varies from sample to sample."""
    p, q = sorted_probabilities(logits[:-1], temperature), sorted_probabilities(logits[1:], temperature)
    return float(beta * temperature ** 2 * (p * (p.log() - q.log())).sum(1).mean())


class ShapeExplorer(Explorer):
    """Sorted softmax curves of a few samples, before and after training, with sliders for T and beta.

    Every class is forgotten once the output is sorted: only the shape (how peaked, how fast it falls)
    is left, and that is what DSR makes consistent from one mini-batch to the next.
    """

    def __init__(self, logits_before: Sequence[Sequence[float]], logits_after: Sequence[Sequence[float]],
                 classes: Sequence[str]) -> None:
        self.before, self.after = torch.tensor(logits_before), torch.tensor(logits_after)
        self.classes = list(classes)
        self.temperature = widgets.FloatSlider(value=4.0, min=0.5, max=10.0, step=0.5, description="T")
        self.beta = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1, description="beta")
        self.figure = SyncedFigure(make_subplots(rows=1, cols=2, subplot_titles=("random init", "after training")))
        colours = qualitative.Plotly
        for col in (1, 2):
            for i, name in enumerate(self.classes):  # one colour per image in both panels, as the legend says
                colour = colours[i % len(colours)]
                self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=name, showlegend=col == 1,
                                        legendgroup=name, line=dict(color=colour), marker=dict(color=colour),
                                        row=1, col=col)
        self.figure.update_layout(height=400, margin=dict(t=110, b=40), title=dict(y=0.96, yanchor="top"))
        for control in (self.temperature, self.beta):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def update(self) -> None:
        T, beta = self.temperature.value, self.beta.value
        ranks = list(range(1, self.before.shape[1] + 1))
        curves = [*sorted_probabilities(self.before, T).tolist(), *sorted_probabilities(self.after, T).tolist()]
        with self.figure.batch_update():
            for i, (trace, y) in enumerate(zip(self.figure.data, curves)):
                trace.x, trace.y, trace.name = ranks, y, self.classes[i % len(self.classes)]
            self.figure.layout.title.text = (f"sorted softmax(z / {T:g}) of each image<br>beta·T²·KL between "
                                             f"neighbouring samples: {neighbour_dsr(self.before, T, beta):.3f} "
                                             f"before, {neighbour_dsr(self.after, T, beta):.3f} after")
            self.figure.layout.xaxis.title, self.figure.layout.xaxis2.title = "rank", "rank"
            self.figure.layout.yaxis.title = "probability"

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.temperature, self.beta]), self.figure])


class MaskExplorer(Explorer):
    """An input image beside the DRG head's attention mask (channel mean) on the chosen stage."""

    def __init__(self, images: Sequence[Any], masks: Mapping[str, Sequence[Any]], classes: Sequence[str]) -> None:
        self.images, self.masks, self.classes = images, dict(masks), list(classes)
        self.image = widgets.Dropdown(options=[(c, i) for i, c in enumerate(self.classes)], description="image")
        self.stage = widgets.Dropdown(options=list(self.masks), description="stage")
        self.figure = SyncedFigure(make_subplots(rows=1, cols=2, subplot_titles=("input", "attention mask")))
        self.figure.add_heatmap(z=[[0]], row=1, col=1)
        self.figure.add_heatmap(z=[[0]], row=1, col=2)
        self.figure.update_layout(height=340, width=700, margin=dict(t=60, b=20))
        for control in (self.image, self.stage):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def update(self) -> None:
        i, stage = self.image.value, self.stage.value
        mask = self.masks[stage][i]
        with self.figure.batch_update():
            self.figure.data[0].update(z=self.images[i], colorscale="gray", showscale=False)
            self.figure.data[1].update(z=mask, colorscale="Viridis",
                                       colorbar=dict(x=1.0, len=0.9))
            for axis in ("yaxis", "yaxis2"):
                self.figure.layout[axis].autorange = "reversed"
                self.figure.layout[axis].scaleanchor = axis.replace("yaxis", "x")
            self.figure.layout.title = f"{self.classes[i]}: mask on {stage} ({len(mask)}x{len(mask[0])})"

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.image, self.stage]), self.figure])


def gain_figure(regimes: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Each method's gain over CE alone, paired by seed, in test accuracy and Euclidean mAP (points): a bar
    from 0 to the mean and one dot per seed, one colour per regime (`regimes`: title -> entries of
    `experiments.self_distillation.summary`, those without paired seeds skipped)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("test accuracy − CE alone (points)", "mAP (e) − CE alone (points)"))
    colours = qualitative.Plotly
    for i, (title, entries) in enumerate(regimes.items()):
        mine = [e for e in entries if e["paired_accuracy"]]
        if not mine:
            continue
        colour = colours[i % len(colours)]
        for col, key in ((1, "accuracy"), (2, "map_e")):
            fig.add_bar(x=[e["method"] for e in mine], y=[e[f"gain_{key}"][0] for e in mine], name=title,
                        legendgroup=title, showlegend=col == 1, marker_color=colour, opacity=0.55,
                        offsetgroup=str(i), row=1, col=col)
            fig.add_scatter(x=[e["method"] for e in mine for _ in e[f"paired_{key}"]],
                            y=[d for e in mine for _, d in e[f"paired_{key}"]], mode="markers", name=f"{title}: seeds",
                            legendgroup=title, showlegend=False, marker=dict(color=colour, size=7, symbol="circle-open"),
                            offsetgroup=str(i), row=1, col=col)
    fig.update_layout(barmode="group", scattermode="group", height=440, margin=dict(t=95, b=40),
                      legend=dict(orientation="h", y=-0.15),
                      title=dict(text="bars: mean over seeds from 0; circles: each seed", y=0.97, yanchor="top"))
    fig.add_hline(y=0, line_color="black", line_width=1)
    return fig
