"""The retrieval explorer: pick a query image, a model and a distance; see its nearest neighbours
and the precision-recall curve whose 11 interpolated points average to the query's AP."""
from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from ..data import Split
from ..metrics import embeddings
from ..retrieval import RECALL_POINTS, rank_query
from .common import Explorer, SyncedFigure


def _to_rgb(img: torch.Tensor) -> torch.Tensor:
    arr = (img.clamp(0, 1) * 255).to(torch.uint8)
    return (arr.repeat(3, 1, 1) if arr.shape[0] == 1 else arr).permute(1, 2, 0)


def _neighbour_title(name: str, hit: bool) -> str:
    """A neighbour's title on two lines, the mark above the class name, so that nine titles in a row never
    run into each other (on one line, "✗ T-shirt/top" titles overlapped in views narrower than about 800 px)."""
    colour = "green" if hit else "red"
    return f"<span style='color:{colour}'>{'✓' if hit else '✗'}</span><br><span style='color:{colour}'>{name}</span>"


class RetrievalExplorer(Explorer):
    """Widget: query slider, model dropdown, distance toggle -> top-k neighbours and PR curve.

    Embeddings are computed once per model (eval mode) and reused as the controls move.
    """

    def __init__(self, models: dict[str, nn.Module], queries: Split, database: Split, k: int = 8) -> None:
        if not models:
            raise ValueError("RetrievalExplorer needs at least one model.")
        self.models, self.queries, self.database, self.k = models, queries, database, k
        self._feats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        names = queries.info.class_names
        self.query = widgets.IntSlider(0, 0, len(queries) - 1, description="query #", continuous_update=False)
        # as wide as its longest name (about 8 px a character, the 80 px label and the arrow): at the default
        # 300 px "student, InDistill (zoo, CPU table seed 0)" was cut short (07)
        self.model = widgets.Dropdown(options=list(models), description="model", layout=widgets.Layout(
            width=f"{max(300, 8 * max(len(name) for name in models) + 130)}px"))
        self.distance = widgets.ToggleButtons(options=["euclidean", "cosine"], description="distance",
                                              style={"button_width": "auto"})
        self.summary = widgets.HTML()
        titles = ["query"] + [f"#{i + 1}" for i in range(k)]
        self.images = SyncedFigure(make_subplots(rows=1, cols=k + 1, subplot_titles=titles, horizontal_spacing=0.01))
        for col in range(1, k + 2):
            self.images.add_trace(go.Image(z=torch.zeros(28, 28, 3, dtype=torch.uint8).numpy()), row=1, col=col)
        self.images.update_xaxes(visible=False).update_yaxes(visible=False)
        self.images.update_layout(height=185, margin=dict(l=10, r=10, t=55, b=10))
        self.images.update_annotations(font_size=10)
        self.curve = SyncedFigure()
        self.curve.add_scatter(x=[], y=[], mode="lines", name="precision at each rank")
        self.curve.add_scatter(x=RECALL_POINTS.tolist(), y=[0] * 11, mode="lines+markers", line_shape="hv",
                               name="11-point interpolated")
        self.curve.update_layout(height=300, xaxis_title="recall", yaxis_title="precision", yaxis_range=[0, 1.05],
                                 title="precision-recall curve of this query over the whole database")
        self._names = names
        for control in (self.query, self.model, self.distance):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def features(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(query features, database features) of one model, computed once."""
        if name not in self._feats:
            model = self.models[name]
            self._feats[name] = (embeddings(model, self.queries.x, device="cpu"),
                                 embeddings(model, self.database.x, device="cpu"))
        return self._feats[name]

    def update(self) -> None:
        """Redraw neighbours, titles and curve for the current control values."""
        q, db = self.features(self.model.value)
        i = self.query.value
        label = int(self.queries.y[i])
        ranking = rank_query(q[i], label, db, self.database.y, self.distance.value)
        top = ranking.order[: self.k]
        shown = torch.cat([self.queries.x[i:i + 1], self.database.x[top]])
        pictures = self.database.denormalise(shown)
        step = max(1, len(ranking.order) // 2000)  # thin the curve for drawing, not for the numbers
        with self.images.batch_update(), self.curve.batch_update():
            for trace, img in zip(self.images.data, pictures):
                trace.z = _to_rgb(img).numpy()
            self.images.layout.annotations[0].text = f"query<br><b>{self._names[label]}</b>"
            for ann, j in zip(self.images.layout.annotations[1:], top.tolist()):
                ann.text = _neighbour_title(self._names[int(self.database.y[j])], int(self.database.y[j]) == label)
            self.curve.data[0].x = ranking.recall[::step].tolist()
            self.curve.data[0].y = ranking.precision[::step].tolist()
            self.curve.data[1].y = ranking.interpolated().tolist()
        self.summary.value = (
            f"Query {i} ({self._names[label]}), {self.model.value}, {self.distance.value}: "
            f"AP (11-point) = <b>{100 * ranking.average_precision_11pt():.1f}%</b>, "
            f"AP (non-interpolated) = {100 * ranking.average_precision():.1f}%, "
            f"precision@100 = {100 * ranking.precision_at(100):.0f}% "
            f"(database: {len(self.database):,} images)."
        )

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.query, self.model]), self.distance, self.summary,
                             self.images, self.curve])
