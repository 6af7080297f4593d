"""Figures and widgets every notebook uses: renderer set-up, live training curves, image grids."""
from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.subplots import make_subplots

from ..train import Callback, Trainer


def setup_notebook(seed: int = 0) -> None:
    """Render plotly figures natively in JupyterLab (no 3 MB script per notebook) and seed torch."""
    pio.renderers.default = "plotly_mimetype"
    pio.templates.default = "plotly_white"
    torch.manual_seed(seed)


class Explorer:
    """The one display convention of every interactive view in the kit.

    A subclass builds its controls and figures in `__init__` and arranges them in `layout()`. The
    object shows itself when it is the last expression of a cell or passed to `display`, and
    `explorer.widget` is the same box every time (so a redraw never detaches a second copy).
    """

    def layout(self) -> widgets.Widget:
        raise NotImplementedError(f"{type(self).__name__} must arrange its controls in layout().")

    @property
    def widget(self) -> widgets.Widget:
        """The arranged controls and figures (built once)."""
        if "_widget" not in self.__dict__:
            self.__dict__["_widget"] = self.layout()
        return self.__dict__["_widget"]

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


class LivePlot(Callback):
    """A training callback drawing each loss term (and validation accuracy) as it is logged.

    `live = LivePlot(); display(live.figure)`, then pass `callbacks=[live]` to the Trainer.
    Batch losses are averaged over `every` steps to keep the widget responsive.
    """

    def __init__(self, title: str = "training", every: int = 10, height: int = 320) -> None:
        self.every = max(1, every)
        self.figure = go.FigureWidget(make_subplots(rows=1, cols=2, subplot_titles=("loss terms", "validation accuracy")))
        self.figure.update_layout(title=title, height=height, margin=dict(t=60, b=30))
        self.figure.update_xaxes(title_text="step", row=1, col=1)
        self.figure.update_xaxes(title_text="epoch", row=1, col=2)
        self._pending: dict[str, list[float]] = {}

    def _trace(self, name: str, col: int) -> go.Scatter:
        for trace in self.figure.data:
            if trace.name == name:
                return trace
        self.figure.add_scatter(x=[], y=[], name=name, mode="lines+markers" if col == 2 else "lines", row=1, col=col)
        return self.figure.data[-1]

    def on_batch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            self._pending.setdefault(key, []).append(value)
        if trainer.step % self.every:
            return
        with self.figure.batch_update():
            for key, values in self._pending.items():
                trace = self._trace(key, 1)
                trace.x = (*trace.x, trainer.step)
                trace.y = (*trace.y, sum(values) / len(values))
        self._pending.clear()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if "val_acc" in logs:
            trace = self._trace("val_acc", 2)
            with self.figure.batch_update():
                trace.x = (*trace.x, logs["epoch"])
                trace.y = (*trace.y, logs["val_acc"])


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, cols: int = 8,
               size: int = 90, title: str | None = None) -> go.Figure:
    """Show images (N, C, H, W) in [0, 1] as a grid of small panels with optional titles."""
    n = len(images)
    if n == 0:
        raise ValueError("image_grid() needs at least one image.")
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=0.01, vertical_spacing=0.08 if titles else 0.01)
    for i, img in enumerate(images):
        arr = (img.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
        arr = arr.repeat(3, 1, 1) if arr.shape[0] == 1 else arr
        fig.add_trace(go.Image(z=arr.permute(1, 2, 0).numpy()), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=rows * size + (80 if title else 40), width=cols * size + 40, title=title,
                      margin=dict(l=10, r=10, t=60 if title else 30, b=10))
    fig.update_annotations(font_size=10)
    return fig
