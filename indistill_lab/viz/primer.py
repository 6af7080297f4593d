"""Figures of the distillation primer (notebook 00): a teacher's soft targets at several temperatures, a
temperature slider over them, and the InDistill pipeline drawn as boxes and arrows."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .common import Explorer, SyncedFigure

TEMPERATURE_COLOURS = ("#9ecae1", "#4292c6", "#08306b", "#6baed6", "#2171b5", "#c6dbef")


def _check_soft_target_inputs(logits: torch.Tensor, temperatures: Sequence[float], class_names: Sequence[str],
                              titles: Sequence[str]) -> None:
    """Raise a ValueError that says what to pass when the logits, names, titles or temperatures do not fit."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a 2-D tensor (images, classes), got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}.")
    if len(class_names) != logits.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {logits.shape[1]} logits per image: pass one name per "
                         "class (e.g. split.info.class_names).")
    if len(titles) != logits.shape[0]:
        raise ValueError(f"{len(titles)} titles for {logits.shape[0]} images: pass one title per row of logits.")
    if not temperatures or any(not t > 0 for t in temperatures):
        raise ValueError(f"temperatures must be a non-empty list of numbers > 0 (T divides the logits), "
                         f"got {list(temperatures)}.")


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) per row, in float64 (so that a 1e-6 share at T = 1 is not rounded away)."""
    return torch.softmax(logits.detach().double() / temperature, dim=1)


def entropy_share(probs: torch.Tensor) -> torch.Tensor:
    """Each row's entropy as a share of the uniform distribution's, ln(classes): 0 one-hot, 1 uniform."""
    return -(probs * probs.clamp_min(1e-300).log()).sum(dim=1) / math.log(probs.shape[1])


def soft_targets_figure(logits: torch.Tensor, temperatures: Sequence[float], class_names: Sequence[str],
                        titles: Sequence[str]) -> go.Figure:
    """One panel per image: softmax(logits / T) over the classes, one bar colour per temperature.

    Shows what Hinton's soft targets are: at T = 1 nearly all mass sits on one class; a higher T spreads it
    over the classes the teacher finds similar ("dark knowledge").
    """
    _check_soft_target_inputs(logits, temperatures, class_names, titles)
    fig = make_subplots(rows=len(titles), cols=1, subplot_titles=list(titles), vertical_spacing=0.3 / len(titles))
    for k, temperature in enumerate(temperatures):
        for i, row in enumerate(soft_targets(logits, temperature).tolist()):
            fig.add_bar(x=list(class_names), y=row, name=f"T = {temperature:g}", legendgroup=str(k),
                        showlegend=i == 0, marker_color=TEMPERATURE_COLOURS[k % len(TEMPERATURE_COLOURS)],
                        hovertemplate="%{x}: %{y:.3f}<extra>T = " + f"{temperature:g}</extra>", row=i + 1, col=1)
    fig.update_yaxes(range=[0, 1], title_text="probability")
    fig.update_layout(barmode="group", height=70 + 200 * len(titles), margin=dict(t=60, b=30),
                      title="the teacher's soft targets: softmax(logits / T)",
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return fig


class TemperatureExplorer(Explorer):
    """A temperature slider over the teacher's soft targets: one bar chart per image, softmax(logits / T), a
    dashed line at the uniform share 1 / classes, and a line per image with its top class's probability, the
    runner-up classes and the entropy as a share of the uniform one."""

    def __init__(self, logits: torch.Tensor, class_names: Sequence[str], titles: Sequence[str],
                 temperature: float = 4.0, t_min: float = 0.5, t_max: float = 50.0) -> None:
        if not 0 < t_min <= temperature <= t_max:
            raise ValueError(f"Need 0 < t_min <= temperature <= t_max, got {t_min}, {temperature}, {t_max}: the "
                             "slider starts at `temperature` inside its range.")
        _check_soft_target_inputs(logits, [temperature], class_names, titles)
        self.logits, self.class_names, self.titles = logits.detach(), list(class_names), list(titles)
        self.temperature = widgets.FloatLogSlider(value=temperature, base=10, min=math.log10(t_min),
                                                  max=math.log10(t_max), step=0.05, readout_format=".3g",
                                                  description="T", continuous_update=False,
                                                  layout=widgets.Layout(width="420px"))
        self.status = widgets.HTML()
        rows = len(self.titles)
        self.figure = SyncedFigure(make_subplots(rows=rows, cols=1, subplot_titles=self.titles,
                                                 vertical_spacing=0.3 / rows))
        for i in range(rows):
            self.figure.add_bar(x=self.class_names, y=[0.0] * len(self.class_names), showlegend=False,
                                marker_color=TEMPERATURE_COLOURS[2], name=self.titles[i],
                                hovertemplate="%{x}: %{y:.3f}<extra></extra>", row=i + 1, col=1)
            self.figure.add_hline(y=1 / len(self.class_names), line=dict(dash="dash", color="#999999", width=1),
                                  row=i + 1, col=1)
        self.figure.update_yaxes(range=[0, 1], title_text="probability")
        self.figure.update_layout(height=70 + 200 * rows, margin=dict(t=60, b=30))
        self.temperature.observe(lambda _change: self.update(), names="value")
        self.update()

    def update(self) -> None:
        """Redraw the bars and the readout for the slider's temperature."""
        t = float(self.temperature.value)
        probs = soft_targets(self.logits, t)
        shares = entropy_share(probs)
        lines = []
        with self.figure.batch_update():
            self.figure.layout.title.text = f"softmax(logits / T) at T = {t:.3g} (dashed: uniform, 1/{probs.shape[1]})"
            for i, (title, row) in enumerate(zip(self.titles, probs)):
                self.figure.data[i].y = row.tolist()
                top = row.topk(min(3, len(row)))
                ranked = ", ".join(f"{self.class_names[j]} {p:.3f}" for p, j in zip(top.values.tolist(),
                                                                                       top.indices.tolist()))
                lines.append(f"<b>{title}</b>: {ranked}; entropy {float(shares[i]):.0%} of uniform")
        self.status.value = "<br>".join(lines)

    def layout(self) -> widgets.Widget:
        return widgets.VBox([self.temperature, self.status, self.figure])


@dataclass(frozen=True)
class Stage:
    """One box of a pipeline diagram: a short title and a detail line or two ('\\n' separates lines)."""

    title: str
    detail: str = ""
    colour: str = "#e8eef7"


INDISTILL_STAGES: tuple[Stage, ...] = (
    Stage("teacher", "24/48/96 channels, two convs\nper stage; trained with CE", "#dbe9f6"),
    Stage("PKT auxiliary", "the student's shape, twice as wide\n(16/32/64, fc 128), taught by\nthe teacher with PKT",
          "#dbe9f6"),
    Stage("pruned auxiliary", "L1 filter pruning, 50% per conv:\n8/16/32, the student's widths", "#fde7cf"),
    Stage("layer curriculum", "student from scratch: MSE on\nstage 1, then 2, then 3, inside\nthe critical period",
          "#dcf0dc"),
    Stage("final-layer loss", "PKT on the penultimate features\nfor the remaining epochs", "#dcf0dc"),
    Stage("retrieval mAP", "test images query the training set;\n11-point mAP, Euclidean and cosine", "#eeeeee"),
)
INDISTILL_LINKS: tuple[str, ...] = ("PKT on the\nembeddings", "prune to the\nstudent's widths",
                                    "stage outputs\nas MSE targets", "warmed-up\nstudent", "the student's\nembedding")

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _PX = 2.9, 1.3, 1.5, 1.0, 78


def _box_centres(n: int, per_row: int) -> list[tuple[float, float]]:
    """Box centres laid out row by row, every other row right to left (a snake), so each arrow is short."""
    centres = []
    for i in range(n):
        row, col = divmod(i, per_row)
        col = col if row % 2 == 0 else per_row - 1 - col
        centres.append((col * (_BOX_W + _GAP_X), -row * (_BOX_H + _GAP_Y)))
    return centres


def _arrow_ends(a: tuple[float, float], b: tuple[float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Tail on box a's edge facing box b, head on box b's edge facing box a (same row or same column)."""
    (ax, ay), (bx, by) = a, b
    if ay == by:
        step = _BOX_W / 2 if bx > ax else -_BOX_W / 2
        return (ax + step, ay), (bx - step, by)
    step = _BOX_H / 2 if by > ay else -_BOX_H / 2
    return (ax, ay + step), (bx, by - step)


def pipeline_figure(stages: Sequence[Stage] = INDISTILL_STAGES, links: Sequence[str] = INDISTILL_LINKS,
                    per_row: int = 3, title: str = "InDistill, stage by stage") -> go.Figure:
    """The stages as boxes (a text trace at their centres carries the labels) joined in order by arrows, each
    arrow labelled with what passes from one stage to the next (`links[i]` joins stage i and stage i + 1)."""
    if len(stages) < 2 or not all(isinstance(s, Stage) and s.title.strip() for s in stages):
        raise ValueError("pipeline_figure needs at least two Stage(title, detail) objects, each with a title; "
                         f"got {list(stages)!r}.")
    if len(links) != len(stages) - 1:
        raise ValueError(f"{len(stages)} stages need {len(stages) - 1} link labels (one per arrow, '' for none), "
                         f"got {len(links)}.")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1 (boxes per row), got {per_row}.")
    centres = _box_centres(len(stages), per_row)
    fig = go.Figure()
    for (x, y), stage in zip(centres, stages):
        fig.add_shape(type="rect", x0=x - _BOX_W / 2, x1=x + _BOX_W / 2, y0=y - _BOX_H / 2, y1=y + _BOX_H / 2,
                      fillcolor=stage.colour, line=dict(color="#555555", width=1), layer="below")
    fig.add_scatter(x=[c[0] for c in centres], y=[c[1] for c in centres], mode="text", name="stages",
                    text=[f"<b>{s.title}</b><br>" + s.detail.replace("\n", "<br>") for s in stages],
                    textfont=dict(size=12), hoverinfo="skip", showlegend=False)
    for i, label in enumerate(links):
        tail, head = _arrow_ends(centres[i], centres[i + 1])
        fig.add_annotation(x=head[0], y=head[1], ax=tail[0], ay=tail[1], xref="x", yref="y", axref="x", ayref="y",
                           text="", showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1.6, name=f"arrow {i}")
        mid_x, mid_y = (tail[0] + head[0]) / 2, (tail[1] + head[1]) / 2
        vertical = tail[0] == head[0]
        fig.add_annotation(x=mid_x, y=mid_y, text=label.replace("\n", "<br>"), showarrow=False, name=f"link {i}",
                           font=dict(size=11, color="#333333"), xanchor="left" if vertical else "center",
                           yanchor="middle" if vertical else "bottom", xshift=6 if vertical else 0,
                           yshift=0 if vertical else 4)
    xs, ys = [c[0] for c in centres], [c[1] for c in centres]
    x_range = [min(xs) - _BOX_W / 2 - 0.2, max(xs) + _BOX_W / 2 + 0.2]
    y_range = [min(ys) - _BOX_H / 2 - 0.2, max(ys) + _BOX_H / 2 + 0.2]
    fig.update_xaxes(visible=False, range=x_range, fixedrange=True)
    fig.update_yaxes(visible=False, range=y_range, fixedrange=True)
    fig.update_layout(title=title, width=int((x_range[1] - x_range[0]) * _PX) + 40,
                      height=int((y_range[1] - y_range[0]) * _PX) + 80, margin=dict(l=20, r=20, t=60, b=20),
                      plot_bgcolor="white")
    return fig
