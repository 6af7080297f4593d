"""Figures and widgets every notebook uses: renderer set-up, live training curves, image grids."""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from copy import deepcopy
from functools import cache
from typing import Any, Iterator, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio
import torch
import traitlets
from plotly.basewidget import BaseFigureWidget
from plotly.subplots import make_subplots

from ..config import quick_mode
from ..train import Callback, Trainer


def setup_notebook(seed: int = 0) -> None:
    """Render plotly figures natively in JupyterLab (no 3 MB script per notebook) and seed torch.

    In quick mode (tests, CI) torch runs on one thread: the quick runs' small batches gain little from a
    second thread, and on a loaded machine its synchronisation cost more than the work (20 training steps:
    1.5 s on one thread, 18.6 s on two, measured at load 11 on the 2-core machine).
    """
    pio.renderers.default = "plotly_mimetype"
    pio.templates.default = "plotly_white"
    torch.manual_seed(seed)
    if quick_mode():
        torch.set_num_threads(1)


STATIC_FIGURES_MIME = "application/vnd.indistill.figures+json"
"""Mimetype carrying an explorer's figures as plain plotly JSON beside its widget view (no front end renders
it; `python -m indistill_lab.viz.store` turns it into static figures in a stored notebook)."""


def sync_widget_state(figure: go.FigureWidget) -> None:
    """Make a FigureWidget's synced state (what a browser view is drawn from) the whole current figure.

    plotly sends edits as messages and refreshes `_widget_data`/`_widget_layout` only when the figure itself
    is displayed; a figure first shown inside a box after `add_*` and `batch_update` edits is drawn from
    stale state in the browser and loses properties (names, category x values, heatmap labels).
    """
    figure._widget_data = deepcopy(figure._data)
    figure._widget_layout = deepcopy(figure._layout_obj._props)


@cache
def _plotly_widget_module() -> str:
    """The source of plotly's own FigureWidget front end (an ES module of about 5 MB with plotly.js inside)."""
    return str(BaseFigureWidget._esm)  # anywidget has read the file into a FileContents


# The front end of every SyncedFigure: a small module that anywidget loads within its deadline, and that loads
# plotly's module (sent beside it as `_plotly_module`) when a view is drawn, once per page (cached by digest).
#
# Why: anywidget gives each widget model 2 s from its creation to load its module and run `initialize`; past
# that, `runtime.ready` is rejected and the model drops every later message from the kernel, for good. Plotly's
# FigureWidget ships its 5 MB module as each model's `_esm`, imported anew for every figure: 3.7-12 s in
# Chromium at load 11-14 on 2 cores (measured, notebook 03). A figure whose module lost that race was drawn from
# the state it had when created (empty) and ignored every redraw (issue 24, item 2).
_FRONT_END = """
const KEY = "__indistill_plotly_widget_DIGEST";
function plotlyWidget(model) {
  if (!globalThis[KEY]) {
    const url = URL.createObjectURL(new Blob([model.get("_plotly_module")], {type: "text/javascript"}));
    globalThis[KEY] = import(url).finally(() => URL.revokeObjectURL(url));
  }
  return globalThis[KEY];
}
export default {
  initialize() {},
  async render({ model, el }) {
    const widget = (await plotlyWidget(model)).default();
    widget.initialize({ model });
    return widget.render({ model, el });
  },
};
"""


class SyncedFigure(go.FigureWidget):
    """A FigureWidget whose synced state is re-sent whole after every `batch_update` (see
    `sync_widget_state`), so a view created later, or a stored widget state, shows the current figure; its
    front end loads plotly's module when it draws, not within anywidget's deadline (see `_FRONT_END`)."""

    _esm = _FRONT_END.replace("DIGEST", hashlib.sha256(_plotly_widget_module().encode()).hexdigest()[:16])
    _plotly_module = traitlets.Unicode(_plotly_widget_module()).tag(sync=True)

    @contextmanager
    def batch_update(self) -> Iterator[None]:
        """Batch edits into one message, then re-send the whole figure's state."""
        with super().batch_update():
            yield
        sync_widget_state(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, validate: bool = True,
                          **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(include, exclude, validate, **kwargs)
        title = self.layout.title.text or "plotly figure"
        return {**bundle, "text/plain": f"Live figure: {title} (run the cell to draw it)"}


def figure_json(figure: go.Figure) -> dict[str, Any]:
    """A figure (or FigureWidget) as the plain plotly JSON a static renderer draws."""
    return json.loads(go.Figure(figure).to_json())


def _figures_in(widget: Any) -> list[go.FigureWidget]:
    if isinstance(widget, go.FigureWidget):
        return [widget]
    return [f for child in getattr(widget, "children", ()) for f in _figures_in(child)]


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

    @property
    def figures(self) -> list[go.FigureWidget]:
        """The figures of the view, top to bottom."""
        return _figures_in(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view, plus a readable text and the current figures as static plotly JSON."""
        for figure in self.figures:
            sync_widget_state(figure)
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        bundle["text/plain"] = f"{type(self).__name__}: an interactive view (run the notebook to use its controls)"
        bundle[STATIC_FIGURES_MIME] = {"figures": [figure_json(f) for f in self.figures]}
        return bundle


class LivePlot(Callback):
    """A training callback drawing each loss term (and validation accuracy) as it is logged.

    `live = LivePlot(); display(live.figure)`, then pass `callbacks=[live]` to the Trainer.
    Batch losses are averaged over `every` steps to keep the widget responsive. Losses use a log axis
    (a 0.003 term stays visible beside a total of 2) with the total dotted beneath the terms; the
    validation-accuracy panel appears only once a validation accuracy is logged.
    """

    def __init__(self, title: str = "training", every: int = 10, height: int = 320) -> None:
        self.every = max(1, every)
        self.figure = SyncedFigure()
        self.figure.update_layout(title=title, height=height, margin=dict(t=60, b=30),
                                  xaxis=dict(title_text="step", domain=[0, 1]),
                                  yaxis=dict(title_text="loss (log scale)", type="log"),
                                  # the validation panel, shown with its first point: accuracy on 0..1 and whole
                                  # epochs (one point alone was drawn on an axis from -0.3 to 1.6)
                                  xaxis2=dict(visible=False, anchor="y2", domain=[0.72, 1], title_text="epoch",
                                              dtick=1),
                                  yaxis2=dict(visible=False, anchor="x2", title_text="validation accuracy",
                                              range=[0, 1], tickformat=".0%"))
        self._pending: dict[str, list[float]] = {}

    def _trace(self, key: str) -> go.Scatter:
        for trace in self.figure.data:
            if trace.meta == key:
                return trace
        if key == "val_acc":
            # The panel's axes exist (hidden) from the start: creating them here sent plotly.js "xaxis2" whole and
            # "xaxis2.domain" in one relayout ("cannot set xaxis2.domain and a parent attribute simultaneously").
            self.figure.update_layout(xaxis_domain=[0, 0.62], xaxis2_domain=[0.72, 1], xaxis2_visible=True,
                                      yaxis2_visible=True)
            self.figure.add_scatter(x=[], y=[], name="validation accuracy", meta=key, mode="lines+markers",
                                    xaxis="x2", yaxis="y2")
        elif key == "loss":
            self.figure.add_scatter(x=[], y=[], name="total", meta=key, mode="lines",
                                    line=dict(color="black", dash="dot", width=2))
        else:
            self.figure.add_scatter(x=[], y=[], name=key, meta=key, mode="lines")
        return self.figure.data[-1]

    def on_batch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            self._pending.setdefault(key, []).append(value)
        if trainer.step % self.every:
            return
        # Added before, not inside, a batched update; the total first, so that it is drawn beneath the terms and
        # a phase with one active term (total == term) shows the term's colour, not the dotted total over it.
        traces = {key: self._trace(key) for key in sorted(self._pending, key=lambda k: k != "loss")}
        with self.figure.batch_update():
            for key, values in self._pending.items():
                trace = traces[key]
                trace.x = (*trace.x, trainer.step)
                trace.y = (*trace.y, sum(values) / len(values))
        self._pending.clear()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if "val_acc" in logs:
            trace = self._trace("val_acc")  # its panel's axes exist in the browser before the trace is drawn
            epochs = (*trace.x, logs["epoch"])
            with self.figure.batch_update():
                trace.x, trace.y = epochs, (*trace.y, logs["val_acc"])
                self.figure.layout.xaxis2.range = [min(epochs) - 0.5, max(epochs) + 0.5]


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
