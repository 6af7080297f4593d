"""Figures of notebook 04's measured critical-period experiments: the Fisher trace per layer under each
protocol (seed band, measured end of the period), the accuracy cost of a deficit against its length and
its onset, and final mAP against the onset of InDistill's warm-up; static PNGs of the same for results/.

Every function takes per-seed values ({seed: value} or {seed: curve}) so the spread over seeds is drawn,
never only a mean.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import Explorer, SyncedFigure

Curves = tuple[Sequence[float], Mapping[int, Sequence[float]]]
"""Images seen, and one curve per seed over them."""
PerSeed = Mapping[int, float]
COLORS = {"sgd-wd": "#1f77b4", "sgd": "#ff7f0e", "adam": "#2ca02c"}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _color(name: str, i: int) -> str:
    return COLORS.get(name, ("#9467bd", "#8c564b", "#e377c2")[i % 3])


def _fill(hex_color: str, alpha: float = 0.18) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


class FisherExplorer(Explorer):
    """The Fisher trace of one layer (dropdown) under each protocol: mean over seeds, min-max band, and a
    dashed line where `ends` (protocol -> images seen, or None) puts the end of the critical period.

    `data` maps layer -> protocol -> `Curves`. The x axis (images seen) switches between linear and log
    (log drops the measurement before training, at 0 images).
    """

    def __init__(self, data: Mapping[str, Mapping[str, Curves]], ends: Mapping[str, Mapping[str, float | None]],
                 layer: str = "total") -> None:
        if layer not in data:
            raise KeyError(f"No layer {layer!r}; layers: {', '.join(data)}.")
        self.data, self.ends = data, ends
        self.layer = widgets.Dropdown(options=list(data), value=layer, description="layer")
        self.scale = widgets.ToggleButtons(options=["log", "linear"], value="log", description="images seen")
        self.figure = SyncedFigure()
        self.figure.update_layout(height=380, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.2),
                                  yaxis_title="tr F (sum over the layer's weights)")
        self.status = widgets.HTML()
        self.layer.observe(lambda _: self.update(), names="value")
        self.scale.observe(lambda _: self.update(), names="value")
        self.update()

    def update(self) -> None:
        """Redraw for the chosen layer and axis."""
        layer, log = self.layer.value, self.scale.value == "log"
        traces, shapes = [], []
        for i, (protocol, (images, curves)) in enumerate(self.data[layer].items()):
            keep = [j for j, x in enumerate(images) if x > 0 or not log]
            xs = [images[j] for j in keep]
            columns = [[curves[s][j] for s in curves] for j in keep]
            color = _color(protocol, i)
            traces += [go.Scatter(x=xs + xs[::-1], y=[max(c) for c in columns] + [min(c) for c in columns][::-1],
                                  fill="toself", fillcolor=_fill(color), line=dict(width=0), hoverinfo="skip",
                                  showlegend=False, name=f"{protocol} seed range"),
                       go.Scatter(x=xs, y=[_mean(c) for c in columns], mode="lines+markers", marker=dict(size=4),
                                  line=dict(color=color), name=f"{protocol} (mean of {len(curves)} seeds)")]
            end = self.ends.get(layer, {}).get(protocol)
            if end is not None:
                shapes.append(dict(type="line", x0=end, x1=end, yref="paper", y0=0, y1=1,
                                   line=dict(color=color, dash="dash")))
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.add_traces(traces)
            self.figure.layout.shapes = shapes
            self.figure.update_xaxes(type="log" if log else "linear", title_text="images seen")
            self.figure.update_layout(title=f"Fisher trace, {layer}: band = range over seeds, dashed = measured end")
        self.status.value = "; ".join(
            f"{p}: " + ("no peak" if self.ends.get(layer, {}).get(p) is None
                        else f"end at {self.ends[layer][p]:,.0f} images") for p in self.data[layer])

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.layer, self.scale]), self.status, self.figure])


ByProtocol = Mapping[str, Mapping[int, PerSeed]]
"""Protocol -> condition (deficit length or onset, in epochs) -> {seed: change in points}."""


def _change_panel(fig: go.Figure, col: int, data: ByProtocol, images_per_epoch: int) -> None:
    """Per-seed dots and the mean line of paired changes (points) against images, one colour per protocol."""
    for i, (protocol, changes) in enumerate(data.items()):
        keys, color = sorted(changes), _color(protocol, i)
        xs = [k * images_per_epoch for k in keys]
        fig.add_scatter(x=[x for k, x in zip(keys, xs) for _ in changes[k]],
                        y=[v for k in keys for v in changes[k].values()], mode="markers",
                        marker=dict(size=7, color=color, opacity=0.4), name=f"{protocol}: seeds",
                        legendgroup=protocol, showlegend=col == 1, row=1, col=col)
        fig.add_scatter(x=xs, y=[_mean(list(changes[k].values())) for k in keys], mode="lines+markers",
                        line=dict(color=color, width=3), name=f"{protocol}: mean", legendgroup=protocol,
                        showlegend=col == 1, row=1, col=col)
    fig.add_hline(y=0, line=dict(color="#999", dash="dot"), row=1, col=col)


def deficit_figure(first: ByProtocol, windows: ByProtocol, images_per_epoch: int) -> go.Figure:
    """Change in final clean accuracy (points, paired by seed against the run without deficit) against the
    length of a deficit at the start (left) and against the onset of a fixed-length window (right), in images."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=(
        "blurred first, then the same clean training", "a fixed blurred window at a later onset"))
    for col, (data, title) in enumerate(((first, "images blurred at the start"),
                                         (windows, "onset of the blurred window (images)")), start=1):
        _change_panel(fig, col, data, images_per_epoch)
        fig.update_xaxes(title_text=title, row=1, col=col)
    fig.update_yaxes(title_text="final clean accuracy − no deficit (points)", row=1, col=1)
    fig.update_layout(height=380, margin=dict(t=50, b=40))
    return fig


WARMUP_SERIES = (("same total images", "#1f77b4"), ("same PKT after the warm-up (longer runs)", "#ff7f0e"))


def warmup_onset_figure(onsets: Mapping[int, PerSeed], control: PerSeed, images_per_epoch: int,
                        same_recovery: Mapping[int, PerSeed] | None = None, metric: str = "mAP (e), %") -> go.Figure:
    """Final `metric` per seed against the image at which InDistill's warm-up starts (`onsets`: onset epoch ->
    {seed: value}, every run equally long), optionally the same with as much PKT after the warm-up as at onset 0
    (`same_recovery`), and the control (PKT alone) as a band over its seeds."""
    fig = go.Figure()
    fig.add_hrect(y0=min(control.values()), y1=max(control.values()), fillcolor=_fill("#7f7f7f", 0.25), line_width=0)
    fig.add_hline(y=_mean(list(control.values())), line=dict(color="#7f7f7f", dash="dash"),
                  annotation_text="PKT alone (band: seeds)", annotation_position="bottom right")
    for data, (label, color) in zip((onsets, same_recovery), WARMUP_SERIES):
        if not data:
            continue
        keys = sorted(data)
        xs = [k * images_per_epoch for k in keys]
        fig.add_scatter(x=[x for k, x in zip(keys, xs) for _ in data[k]], y=[v for k in keys for v in data[k].values()],
                        mode="markers", marker=dict(color=color, size=7, opacity=0.4), name=f"{label}: seeds")
        fig.add_scatter(x=xs, y=[_mean(list(data[k].values())) for k in keys], mode="lines+markers",
                        line=dict(color=color, width=3), name=f"{label}: mean")
    fig.update_layout(height=380, margin=dict(t=50, b=40), title="InDistill's layer-by-layer warm-up, started later",
                      xaxis_title="images of PKT before the warm-up", yaxis_title=metric,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def results_png(path: Path | str, fisher: Mapping[str, Curves], first: Mapping[int, PerSeed],
                windows: Mapping[int, PerSeed], images_per_epoch: int, title: str = "") -> None:
    """The static overview of results/critical-periods.png: total Fisher trace per protocol (log x, seed range),
    and the paired accuracy changes against deficit length and window onset (matplotlib, no browser)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, (protocol, (images, curves)) in enumerate(fisher.items()):
        keep = [j for j, x in enumerate(images) if x > 0]
        columns = [[curves[s][j] for s in curves] for j in keep]
        xs = [images[j] for j in keep]
        axes[0].fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], color=_color(protocol, i),
                             alpha=0.2, lw=0)
        axes[0].plot(xs, [_mean(c) for c in columns], color=_color(protocol, i), marker=".", label=protocol)
    axes[0].set(xscale="log", xlabel="images seen", ylabel="tr F, all layers", title="Fisher trace (band: seeds)")
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend()
    for ax, data, label in ((axes[1], first, "images blurred at the start"),
                            (axes[2], windows, "onset of the blurred window (images)")):
        for i, (protocol, changes) in enumerate(data.items()):
            keys, color = sorted(changes), _color(protocol, i)
            xs = [k * images_per_epoch for k in keys]
            for k, x in zip(keys, xs):
                ax.scatter([x] * len(changes[k]), list(changes[k].values()), color=color, alpha=0.4)
            ax.plot(xs, [_mean(list(changes[k].values())) for k in keys], color=color, lw=2, marker="o", label=protocol)
        ax.axhline(0, color="#999", ls=":")
        ax.set(xlabel=label, ylabel="final clean accuracy − no deficit (points)")
        ax.legend()
    axes[1].set_title("deficit at the start, same clean training after")
    axes[2].set_title("fixed deficit window, equal run lengths")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def warmup_onset_png(path: Path | str, onsets: Mapping[int, PerSeed], control: PerSeed, images_per_epoch: int,
                     same_recovery: Mapping[int, PerSeed] | None = None, title: str = "") -> None:
    """results/warmup-onset.png: `warmup_onset_figure`'s content with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.axhspan(min(control.values()), max(control.values()), color="#7f7f7f", alpha=0.25, label="PKT alone (seeds)")
    for data, (label, color) in zip((onsets, same_recovery), WARMUP_SERIES):
        if not data:
            continue
        keys = sorted(data)
        xs = [k * images_per_epoch for k in keys]
        for k, x in zip(keys, xs):
            ax.scatter([x] * len(data[k]), list(data[k].values()), color=color, alpha=0.4)
        ax.plot(xs, [_mean(list(data[k].values())) for k in keys], color=color, lw=2, marker="o", label=label)
    ax.set(xlabel="images of PKT before the warm-up", ylabel="mAP (e), %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
