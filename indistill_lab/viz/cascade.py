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


def signals_figure(signals: Mapping[str, Any], batch: int) -> go.Figure:
    """`cascade.score_signals`: per filter (a dot, one colour per layer) the signed first-order signal the
    first version's scores read against the per-example spread the kit's read, log-log, with the size of batch
    noise (spread / sqrt(batch)) as a dashed line."""
    fig = go.Figure()
    spreads = [float(v) for s in signals.values() for v in s[:, 1]]
    for site, s in signals.items():
        fig.add_scatter(x=s[:, 1].tolist(), y=s[:, 0].tolist(), mode="markers", name=site, marker=dict(size=6))
    low, high = min(spreads), max(spreads)
    fig.add_scatter(x=[low, high], y=[low / batch ** 0.5, high / batch ** 0.5], mode="lines",
                    name=f"batch noise (spread / √{batch})", line=dict(dash="dash", color="#555"))
    fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="signed = spread", line=dict(color="#bbb"))
    fig.update_layout(height=420, margin=dict(t=60, b=50), xaxis_type="log", yaxis_type="log",
                      xaxis_title="per-example spread √(mean d²): what the kit's scores read",
                      yaxis_title="|mean d|: what the first version's read",
                      title=dict(text="one dot per filter of the pretrained cascade-net (all kept)", font_size=14))
    return fig


def _pyplot():  # matplotlib without a display, imported when a PNG is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw_overlap(ax: Any, new: Sequence[Mapping[str, Any]], old: Sequence[Mapping[str, Any]]) -> None:
    """Student-in-TA overlap (fraction of the student's kept filters its TA keeps) against the fraction of
    the joint phase: `old` runs (the first version, dashed) against `new` stories (one line per run, colour
    by arm). Each story/run needs `snapshots` (with `step`) and `overlap` (one value per snapshot)."""
    def draw(run: Mapping[str, Any], style: str, color: str, label: str | None) -> None:
        steps = [s["step"] for s in run["snapshots"]]  # snapshots are taken in the joint phase only
        ax.plot([t / (steps[-1] or 1) for t in steps], run["overlap"], style, color=color, label=label, alpha=0.8)
    for n, run in enumerate(old):
        draw(run, "--", "tab:red", "first version (Adam, raw scores, no nesting)" if n == 0 else None)
    colors: dict[str, str] = {}
    for run in new:
        arm = run["arm"]
        draw(run, "-", colors.setdefault(arm, f"C{len(colors)}"), None if arm in colors and
             any(r["arm"] == arm for r in new[:new.index(run)]) else arm)
    ax.set_xlabel("fraction of the joint phase")
    ax.set_ylabel("student's kept filters its TA keeps")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def overlap_png(new: Sequence[Mapping[str, Any]], old: Sequence[Mapping[str, Any]], path: Path | str) -> None:
    """The before/after figure alone: the first version's students invade their TA's pruned filters."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_overlap(ax, new, old)
    ax.set_title("student-in-TA overlap during the joint phase (k = 0.8, 1 TA)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cascade_table_png(rows: Sequence[Mapping[str, Any]], stories: Sequence[Mapping[str, Any]],
                      old: Sequence[Mapping[str, Any]], path: Path | str) -> None:
    """The table's figure: accuracy per arm (one dot per seed, the mean as a tick: no bar, whose length on a
    cut axis would not be its value) and the overlap during the joint phase of the 1-TA cascades against the
    first version's runs."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.3, 1]})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for x, arm in enumerate(arms):
        accs = [r["accuracy"] for r in rows if r["arm"] == arm]
        left.hlines(sum(accs) / len(accs), x - 0.3, x + 0.3, color="tab:blue", lw=2.5,
                    label="mean over seeds" if x == 0 else None)
        left.plot([x] * len(accs), accs, "o", color="k", ms=4, label="one seed" if x == 0 else None)
    left.set_xticks(range(len(arms)), arms, rotation=25, ha="right", fontsize=8)
    low = min(r["accuracy"] for r in rows)
    left.set_ylim(low - 0.5, max(r["accuracy"] for r in rows) + 0.5)
    left.set_ylabel("test accuracy (%, 10,000 images)")
    left.legend(fontsize=8, loc="lower left")
    left.grid(alpha=0.3, axis="y")
    draw_overlap(right, [s for s in stories if s["arm"].startswith("cascade-1ta") and s.get("overlap")], old)
    fig.suptitle("Cascaded TAs, k = 0.8, SGD protocol: accuracy by arm (dots: seeds) and student-in-TA overlap",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
