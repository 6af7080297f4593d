"""Figures and widgets for notebook 02: which channels survive pruning, what they look like,
how accuracy and retrieval mAP respond to the pruning ratio, and teacher x student CKA."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from .common import Explorer, SyncedFigure, image_grid


def _kept_matrix(kept: Mapping[str, Sequence[int]], widths: Mapping[str, int]) -> np.ndarray:
    """Rows = layers, columns = channel index; 1 kept, 0 removed, NaN past the layer's width."""
    z = np.full((len(widths), max(widths.values())), np.nan)
    for row, (path, width) in enumerate(widths.items()):
        z[row, :width] = 0.0
        z[row, list(kept.get(path, range(width)))] = 1.0
    return z


def surviving_channels(kept: Mapping[str, Sequence[int]], widths: Mapping[str, int],
                       title: str = "surviving channels") -> go.Figure:
    """Heatmap of kept (dark) and removed (light) channels of each layer of the unpruned model."""
    fig = go.Figure(go.Heatmap(z=_kept_matrix(kept, widths), y=list(widths), colorscale=[[0, "#f1d4d4"], [1, "#1f4e79"]],
                               zmin=0, zmax=1, showscale=False, xgap=1, ygap=2,
                               hovertemplate="%{y} channel %{x}: %{z}<extra>1 = kept</extra>"))
    fig.update_layout(title=title, height=90 + 40 * len(widths), margin=dict(l=110, r=20, t=50, b=40),
                      xaxis_title="channel index (unpruned model)", yaxis_autorange="reversed")
    return fig


def filters_kept_and_removed(conv: nn.Conv2d, kept: Sequence[int], scores: torch.Tensor | None = None,
                             cols: int = 8) -> go.Figure:
    """First-layer filters as images, kept ones first, each titled with its index (and score).

    Each filter is min-max scaled on its own, so the picture shows its pattern, not its norm.
    """
    if conv.in_channels not in (1, 3):
        raise ValueError(f"Filters can be shown as images only for 1 or 3 input channels, got {conv.in_channels}.")
    w = conv.weight.detach().cpu()
    lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    images = (w - lo) / (hi - lo).clamp_min(1e-12)
    kept_set = set(kept)
    order = list(kept) + [i for i in range(len(w)) if i not in kept_set]
    titles = [f"{'kept' if i in kept_set else 'cut'} #{i}" + (f" {float(scores[i]):.2g}" if scores is not None else "")
              for i in order]
    images = torch.nn.functional.interpolate(images[order], scale_factor=8, mode="nearest")
    return image_grid(images, titles, cols=cols, title=f"{len(kept)} kept, then {len(w) - len(kept)} removed filters")


def cka_heatmaps(matrices: Mapping[str, torch.Tensor], teacher_labels: Sequence[str],
                 student_labels: Sequence[str],
                 models: Sequence[tuple[str, str]] | None = None) -> go.Figure:
    """Side-by-side CKA matrices, values printed: rows are the layers of one model, columns of the other.

    `models` names each panel's (rows, columns) models for its axis titles ("auxiliary layer", ...): a panel
    that compares the auxiliary with its pruned copy must not be labelled teacher x student. By default every
    panel is teacher (rows) x student (columns).
    """
    models = list(models) if models is not None else [("teacher", "student")] * len(matrices)
    if len(models) != len(matrices):
        raise ValueError(f"{len(matrices)} CKA matrices but {len(models)} (rows, columns) model names: pass one "
                         "pair per matrix, e.g. models=[('auxiliary', 'student'), ...].")
    fig = make_subplots(rows=1, cols=len(matrices), subplot_titles=list(matrices), horizontal_spacing=0.1)
    for c, (m, (rows, cols)) in enumerate(zip(matrices.values(), models), start=1):
        z = m.detach().cpu().numpy()
        fig.add_trace(go.Heatmap(z=z, x=list(student_labels), y=list(teacher_labels), zmin=0, zmax=1,
                                 colorscale="Viridis", text=[[f"{v:.2f}" for v in row] for row in z],
                                 texttemplate="%{text}", hovertemplate=f"{rows} %{{y}} x {cols} %{{x}}: "
                                 "CKA %{z:.3f}<extra></extra>",
                                 showscale=c == len(matrices), colorbar=dict(title="CKA")), row=1, col=c)
        fig.update_yaxes(autorange="reversed", title_text=f"{rows} layer", title_standoff=4, row=1, col=c)
        fig.update_xaxes(title_text=f"{cols} layer", row=1, col=c)
    fig.update_layout(height=380, margin=dict(l=80, r=20, t=60, b=60))
    return fig


SWEEP_COLOURS = {"pruned": "#4c78a8", "pruned + fine-tune": "#e45756"}
SWEEP_PANEL_GAP = 0.12
"""Gap between the sweep's panels, as a share of the plot width: about 100 px of a 900 px figure, room for the
channel heatmap's row labels (12 characters of 11 px type) beside the mAP panel."""


class SweepExplorer(Explorer):
    """Browse a precomputed `pruning_sweep`: criterion dropdown, mode (all stages / one stage)
    and ratio slider; accuracy and mAP curves before/after fine-tuning, and the surviving channels.

    `fresh_run(criterion, mode, ratio) -> row` (optional) backs the "fresh run" button, which
    recomputes the selected point without the cache and shows it beside the stored one.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], widths: Mapping[str, int],
                 fresh_run: Callable[[str, str, float], Mapping[str, Any]] | None = None) -> None:
        if not rows:
            raise ValueError("SweepExplorer needs at least one sweep row.")
        self.rows, self.widths, self.fresh_run = list(rows), dict(widths), fresh_run
        criteria = list(dict.fromkeys(r["criterion"] for r in rows))
        modes = list(dict.fromkeys(r["mode"] for r in rows))
        self.criterion = widgets.Dropdown(options=criteria, description="criterion")
        self.mode = widgets.ToggleButtons(options=modes, description="prune", style={"button_width": "auto"})
        self.ratio = widgets.SelectionSlider(options=self._ratios(), description="ratio", continuous_update=False)
        self.button = widgets.Button(description="fresh run", icon="refresh", disabled=fresh_run is None,
                                     layout=widgets.Layout(width="auto"))
        self.status = widgets.HTML()
        # The channel heatmap's row labels ("stage3.conv1") need a wider gap than plotly's default spacing.
        self.figure = SyncedFigure(make_subplots(
            rows=1, cols=3, column_widths=[0.27, 0.27, 0.46], horizontal_spacing=SWEEP_PANEL_GAP,
            subplot_titles=("test accuracy", "retrieval mAP (11-pt, e)", "surviving channels")))
        for col, key in ((1, "acc"), (2, "map")):
            for suffix, name, dash in (("", "pruned", "dot"), ("_ft", "pruned + fine-tune", "solid")):
                # one colour per curve kind in both panels: the legend (drawn from panel 1) reads for both
                self.figure.add_scatter(x=[], y=[], name=name, mode="lines+markers",
                                        line=dict(dash=dash, color=SWEEP_COLOURS[name]), legendgroup=name,
                                        showlegend=col == 1, row=1, col=col, meta=key + suffix)
            self.figure.add_scatter(x=[], y=[], mode="markers", marker=dict(size=14, symbol="circle-open",
                                    color="black"), showlegend=False, row=1, col=col, meta=key + "_now")
        self.figure.add_heatmap(z=[[0]], y=list(self.widths), colorscale=[[0, "#f1d4d4"], [1, "#1f4e79"]],
                                zmin=0, zmax=1, showscale=False, xgap=1, ygap=2, row=1, col=3)
        self.figure.update_yaxes(autorange="reversed", tickfont_size=11, row=1, col=3)
        self.figure.update_xaxes(title_text="pruning ratio", row=1, col=1)
        self.figure.update_xaxes(title_text="pruning ratio", row=1, col=2)
        self.figure.update_layout(height=380, margin=dict(l=40, r=20, t=60, b=50),
                                  legend=dict(orientation="h", y=-0.25))
        for w in (self.criterion, self.mode):
            w.observe(self._on_selection, names="value")
        self.ratio.observe(lambda _change: self.update(), names="value")
        self.button.on_click(self._on_fresh)
        self.update()

    def _ratios(self) -> list[float]:
        mode = getattr(self, "mode", None)
        return sorted({r["r"] for r in self.rows if mode is None or r["mode"] == mode.value})

    def _on_selection(self, _change: Any) -> None:
        current = self.ratio.value
        options = self._ratios()
        self.ratio.options = options
        self.ratio.value = min(options, key=lambda r: abs(r - current))
        self.update()

    def _selected(self) -> list[Mapping[str, Any]]:
        return sorted((r for r in self.rows if r["criterion"] == self.criterion.value and r["mode"] == self.mode.value),
                      key=lambda r: r["r"])

    def current(self) -> Mapping[str, Any]:
        """The sweep row the controls point at."""
        return next(r for r in self._selected() if r["r"] == self.ratio.value)

    def update(self) -> None:
        rows, row = self._selected(), self.current()
        with self.figure.batch_update():
            for trace in self.figure.data:
                key = trace.meta
                if key is None:  # the widget protocol is JSON: NaN (past a layer's width) becomes None
                    z = _kept_matrix(row["kept"], self.widths)
                    trace.z = np.where(np.isnan(z), None, z).tolist()
                elif key.endswith("_now"):
                    base = key[:-4]
                    trace.x, trace.y = [row["r"]] * 2, [row[base], row.get(base + "_ft")]
                else:
                    trace.x, trace.y = [r["r"] for r in rows], [r[key] for r in rows]
        ft = (f"; after fine-tune acc {row['acc_ft']:.1%}, mAP {row['map_ft']:.1%}"
              if row.get("acc_ft") is not None else " (not fine-tuned in this mode)")
        self.status.value = (f"<b>{row['criterion']}</b>, widths {row['widths']}, {row['params']:,} params: "
                             f"acc {row['acc']:.1%}, mAP {row['map']:.1%}{ft}")

    def _on_fresh(self, _button: Any) -> None:
        self.status.value += "<br><i>running...</i>"
        fresh = self.fresh_run(self.criterion.value, self.mode.value, self.ratio.value)
        ft = f", after fine-tune acc {fresh['acc_ft']:.1%}" if fresh.get("acc_ft") is not None else ""
        self.status.value = self.status.value.replace("<br><i>running...</i>", "") + (
            f"<br>fresh run: acc {fresh['acc']:.1%}, mAP {fresh['map']:.1%}{ft}")

    def layout(self) -> widgets.Widget:
        controls = widgets.HBox([self.criterion, self.ratio, self.button])
        return widgets.VBox([controls, self.mode, self.status, self.figure])
