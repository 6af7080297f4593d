"""Figures and widgets of the diagnostics notebooks: deficits (04; its Fisher figures are in
`viz.critical_periods`), information-flow paths (03), per-layer distillation difficulty (05)."""
from __future__ import annotations

from typing import Any, Callable

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import Explorer, SyncedFigure

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
DEFICIT_FILL = "rgba(120, 120, 120, 0.18)"


# -- critical learning periods (notebook 04) ------------------------------------------------------

class DeficitExplorer(Explorer):
    """Slider over the deficit length N: final accuracy vs N (left), the chosen run's curve (right).

    `sweep` is {"runs": [{"deficit_epochs", "final_acc", "val_acc" (after each epoch), optionally
    "final_std" and "seeds"}]}, e.g. `experiments.critical_periods.Results().deficit_sweep()` (seed means,
    drawn with the seed spread). With `rerun` (N -> a new run dict), a button trains one run afresh and
    draws it beside the stored mean (a single seed never replaces a mean of several).
    """

    def __init__(self, sweep: dict[str, Any], rerun: Callable[[int], dict[str, Any]] | None = None) -> None:
        self.runs = {r["deficit_epochs"]: r for r in sweep["runs"]}
        self.fresh: dict[int, dict[str, Any]] = {}
        self.rerun = rerun
        deficits = sorted(self.runs)
        self.slider = widgets.SelectionSlider(options=deficits, value=deficits[min(2, len(deficits) - 1)],
                                              description="blurred epochs N", continuous_update=True,
                                              style={"description_width": "initial"})
        self.figure = SyncedFigure(make_subplots(
            rows=1, cols=2, subplot_titles=("final clean accuracy vs deficit length", "the chosen run")))
        self.figure.add_scatter(mode="lines+markers", name="final accuracy", row=1, col=1, line=dict(color="#1f77b4"))
        self.figure.add_scatter(mode="markers", name="chosen N", row=1, col=1,
                                marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(color="#d62728", width=3)))
        reference = self.runs[deficits[0]]
        self.figure.add_scatter(x=list(range(1, len(reference["val_acc"]) + 1)), y=reference["val_acc"],
                                name=f"N = {deficits[0]} (no deficit)", mode="lines", row=1, col=2,
                                line=dict(color="#999", dash="dash"))
        self.figure.add_scatter(mode="lines+markers", name="chosen run", row=1, col=2, line=dict(color="#d62728"))
        self.figure.add_scatter(mode="markers", name="fresh run (one seed)", row=1, col=1, showlegend=False,
                                marker=dict(symbol="x", size=11, color="#2ca02c"))
        self.figure.add_scatter(mode="lines", name="fresh run of this N (one seed)", row=1, col=2, showlegend=False,
                                line=dict(color="#2ca02c", dash="dot"))
        self.figure.update_xaxes(title_text="epochs on blurred inputs before clean training (N)", row=1, col=1)
        self.figure.update_xaxes(title_text="epoch", row=1, col=2)
        self.figure.update_yaxes(title_text="clean test accuracy", row=1, col=1)
        self.figure.update_layout(height=380, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.25))
        self.status = widgets.HTML()
        self.button = widgets.Button(description="fresh run of this N", icon="refresh",
                                     disabled=rerun is None, tooltip="retrain this deficit length (a few minutes)",
                                     layout=widgets.Layout(width="auto"))
        self.button.on_click(self._fresh)
        self.slider.observe(lambda _: self.update(), names="value")
        self.update()

    def update(self) -> None:
        """Redraw both panels for the slider's N."""
        n = self.slider.value
        deficits = sorted(self.runs)
        run = self.runs[n]
        fresh = self.fresh.get(n)
        spread = [self.runs[d].get("final_std") for d in deficits]
        with self.figure.batch_update():
            self.figure.data[0].update(x=deficits, y=[self.runs[d]["final_acc"] for d in deficits],
                                       error_y=dict(type="data", array=spread, visible=None not in spread))
            self.figure.data[1].update(x=[n], y=[run["final_acc"]])
            self.figure.data[4].update(x=sorted(self.fresh), y=[self.fresh[d]["final_acc"] for d in sorted(self.fresh)],
                                       showlegend=bool(self.fresh))
            self.figure.data[5].update(x=list(range(1, len(fresh["val_acc"]) + 1)) if fresh else [],
                                       y=fresh["val_acc"] if fresh else [], showlegend=fresh is not None)
            self.figure.data[3].update(x=list(range(1, len(run["val_acc"]) + 1)), y=run["val_acc"],
                                       name=f"N = {n}")
            self.figure.layout.shapes = ([dict(type="rect", xref="x2", yref="y2 domain", x0=0.5, x1=n + 0.5, y0=0,
                                               y1=1, fillcolor=DEFICIT_FILL, line_width=0, layer="below")]
                                         if n > 0 else [])
        seeds = f" ± {run['final_std']:.3f} over {run['seeds']} seeds" if run.get("final_std") is not None else ""
        self.status.value = (f"N = {n}: final clean accuracy <b>{run['final_acc']:.3f}</b>{seeds} "
                             f"(no deficit: {self.runs[deficits[0]]['final_acc']:.3f}); shaded = blurred epochs"
                             + (f"; fresh run (one seed): <b>{fresh['final_acc']:.3f}</b>" if fresh else ""))

    def _fresh(self, _button: widgets.Button) -> None:
        assert self.rerun is not None
        n = self.slider.value
        self.button.disabled, self.status.value = True, f"training N = {n} afresh ..."
        try:
            self.fresh[n] = self.rerun(n)
        finally:
            self.button.disabled = False
        self.update()

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.slider, self.button]), self.status, self.figure])


# -- information-flow paths (notebook 03) ----------------------------------------------------------

def _short(layer: str) -> str:
    """'stage2.conv1' -> 's2.c1' for compact node labels."""
    return layer.replace("stage", "s").replace("conv", "c")


def sankey_trace(layers: list[str], paths: list[tuple[list[int], float]], domain_y: tuple[float, float],
                 colour: str = "rgba(31, 119, 180, 0.45)") -> go.Sankey:
    """One Sankey of paths: nodes are (layer, channel), each path adds its share of the paths' summed score to
    every link on it, so link thickness is the share of the top paths' score through that connection."""
    nodes: dict[tuple[int, int], int] = {}
    links: dict[tuple[int, int], float] = {}
    total = sum(score for _, score in paths) or 1.0
    for channels, score in paths:
        score = score / total  # share of the shown paths' summed score
        ids = [nodes.setdefault((l, c), len(nodes)) for l, c in enumerate(channels)]
        for a, b in zip(ids, ids[1:]):
            links[(a, b)] = links.get((a, b), 0.0) + score
    order = sorted(nodes, key=nodes.get)
    span = max(len(layers) - 1, 1)
    return go.Sankey(
        domain=dict(x=[0, 1], y=list(domain_y)), arrangement="snap",
        node=dict(label=[f"{_short(layers[l])} #{c}" for l, c in order], pad=6, thickness=12,
                  x=[0.01 + 0.98 * l / span for l, _ in order], y=[0.1 + 0.8 * (i % 7) / 7 for i, _ in enumerate(order)],
                  color="#555"),
        link=dict(source=[a for a, _ in links], target=[b for _, b in links], value=list(links.values()),
                  color=colour))


def flow_figure(flows: dict[str, dict[str, Any]], height_per_model: int = 230) -> go.Figure:
    """Stacked Sankeys of the top paths of several models (name -> `FlowResult.to_dict()`)."""
    fig = go.Figure()
    n = len(flows)
    gap = 0.08
    for i, (name, flow) in enumerate(flows.items()):
        top = 1 - i / n
        bottom = top - 1 / n + gap
        fig.add_trace(sankey_trace(flow["layers"], flow["paths"], (bottom, top - 0.02), _rgba(PALETTE[i], 0.45)))
        fig.add_annotation(text=f"<b>{name}</b>", x=0, y=top, xref="paper", yref="paper", showarrow=False,
                           xanchor="left", yanchor="bottom")
    fig.update_layout(height=height_per_model * n, margin=dict(l=10, r=10, t=30, b=10), font_size=10)
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def attribution_maps_figure(maps: dict[str, list[Any]], layers: dict[str, list[str]], height_per_model: int = 150
                            ) -> go.Figure:
    """Grad-CAM maps per layer (columns) for each model (rows): name -> list of 2-D arrays, each drawn as a share
    of its own maximum on one colour scale (shown beside the figure)."""
    cols = max(len(m) for m in maps.values())
    titles = [_short(layer) for name in maps for layer in layers[name] + [""] * (cols - len(layers[name]))]
    fig = make_subplots(rows=len(maps), cols=cols, subplot_titles=titles, horizontal_spacing=0.02,
                        vertical_spacing=0.12)
    for i, (name, model_maps) in enumerate(maps.items(), start=1):
        for j, m in enumerate(model_maps, start=1):
            # each map over its own maximum: Grad-CAM's scale differs from layer to layer, its shape is the message
            z = np.asarray(m, dtype=float)
            z = z / z.max() if z.max() > 0 else z
            fig.add_heatmap(z=z.tolist(), colorscale="Inferno", zmin=0, zmax=1, row=i, col=j,
                            showscale=i == 1 and j == 1, hovertemplate="%{z:.2f} of this map's maximum<extra></extra>",
                            colorbar=dict(title=dict(text="share of<br>the map's<br>maximum", font_size=10),
                                          tickformat=".0%", len=0.75, y=0.45, yanchor="middle", thickness=12))
        fig.update_yaxes(title_text=name.replace(" (", "<br>("), title_font_size=10, row=i, col=1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    fig.update_layout(height=height_per_model * len(maps) + 40, margin=dict(l=60, r=80, t=40, b=10))
    fig.update_annotations(font_size=10)
    return fig


def survival_figure(survival: dict[str, dict[str, list[float]]], chance: dict[str, dict[str, float]] | None = None,
                    n_paths: int | None = None, title: str | None = None) -> go.Figure:
    """Per pruning criterion: the share of the teacher's top paths' channels that is kept (left) and the share
    of whole paths kept (right); mean over inputs with standard deviation, chance level in red.
    `survival` and `chance` are `experiments.flow_paths.cached_path_survival()`'s entries; `title` (the model)
    stands above the panel titles, the legend below the panels (above them, the two collided)."""
    names = list(survival)
    top = f"top {n_paths} " if n_paths else "top "
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"channels of the teacher's {top}paths kept",
                                                        f"whole {top}paths kept (every channel)"))
    for col, measure in enumerate(("channels", "paths"), start=1):
        values = [survival[n][measure] for n in names]
        means = [sum(v) / len(v) for v in values]
        sds = [(sum((x - m) ** 2 for x in v) / max(len(v) - 1, 1)) ** 0.5 for v, m in zip(values, means)]
        below = [min(s, m) for s, m in zip(sds, means)]  # a share is never below 0
        fig.add_bar(x=names, y=means, error_y=dict(type="data", array=sds, arrayminus=below),
                    marker_color=PALETTE[col - 1], text=[f"{m:.1%}" for m in means], textposition="outside",
                    showlegend=False, row=1, col=col)
        if chance:
            fig.add_scatter(x=names, y=[chance[n][measure] for n in names], mode="markers", row=1, col=col,
                            marker=dict(symbol="line-ew-open", size=36, color="#d62728", line_width=3),
                            name="chance (random channels)", showlegend=col == 1)
        fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=1, col=col)
    fig.update_xaxes(title_text="criterion (pruned to the student's widths)")
    fig.update_layout(title=title, height=440, margin=dict(t=90 if title else 50, b=90),
                      legend=dict(orientation="h", y=-0.25, x=0.5, xanchor="center", yanchor="top"))
    return fig


ABLATION_MEASURES = {"logit": "drop in the class's logit", "accuracy": "drop in the class's accuracy",
                     "others": "drop in the other classes' accuracy"}


def ablation_figure(summaries: dict[str, dict[str, Any]]) -> go.Figure:
    """The causal check of the flow paths: for each model (colour), the drop each condition's zeroed channels cause
    (x: top paths, random, lowest), one panel per measure, mean over classes with their standard deviation.
    `summaries`: model name -> `flow.ablation_summary(...)`."""
    from ..flow import ABLATION_CONDITIONS

    fig = make_subplots(rows=1, cols=len(ABLATION_MEASURES), subplot_titles=list(ABLATION_MEASURES.values()))
    for i, (name, summary) in enumerate(summaries.items()):
        for col, measure in enumerate(ABLATION_MEASURES, start=1):
            means, sds = zip(*(summary[c][measure] for c in ABLATION_CONDITIONS))
            scale = 1.0 if measure == "logit" else 100.0  # accuracies in percentage points
            fig.add_bar(x=list(ABLATION_CONDITIONS), y=[m * scale for m in means], name=name, legendgroup=name,
                        showlegend=col == 1, marker_color=PALETTE[i % len(PALETTE)],
                        error_y=dict(type="data", array=[v * scale for v in sds]), row=1, col=col)
    fig.update_yaxes(title_text="logit", row=1, col=1)
    for col in range(2, len(ABLATION_MEASURES) + 1):
        fig.update_yaxes(title_text="percentage points", row=1, col=col)
    fig.update_layout(height=380, barmode="group", margin=dict(t=50, b=40), legend=dict(orientation="h", y=1.18))
    return fig


class FlowExplorer(Explorer):
    """Dropdowns for an image and a class; Sankeys of each model's top paths and their Grad-CAM maps.

    `models`: name -> model (e.g. teacher, pruned teacher, student). `kept`: name -> `PruneReport.kept`
    for pruned models, so their channels are labelled by the unpruned teacher's indices (a channel
    that keeps its number is the same channel). What is shown is kept readable: `flows` (name ->
    `FlowResult.to_dict()`, pruned models in unpruned indices) and `probabilities` (name -> p(class | image)).
    """

    def __init__(self, models: dict[str, Any], images: Any, kept: dict[str, dict[str, list[int]]] | None = None,
                 n_paths: int = 8, n_steps: int = 16) -> None:
        from ..flow import attribution_maps, flow_layers

        self.models, self.images, self.kept = models, images, kept or {}
        self.n_paths, self.n_steps = n_paths, n_steps
        self.layers = {name: flow_layers(m) for name, m in models.items()}
        self._attribution_maps = attribution_maps
        classes = images.info.class_names
        self.image = widgets.Dropdown(options=[(f"#{i}: {classes[int(y)]}", i) for i, y in enumerate(images.y)],
                                      description="image")
        self.target = widgets.Dropdown(options=[(c, k) for k, c in enumerate(classes)], description="class")
        self.target.value = int(images.y[0])
        self.flows = self._flows()
        self.sankey = SyncedFigure(flow_figure(self.flows))
        self.maps = SyncedFigure(attribution_maps_figure(*self._maps()))
        self.status = widgets.HTML()
        self._describe()
        self.image.observe(self._image_changed, names="value")
        self.target.observe(lambda _: self.update(), names="value")

    def _flows(self) -> dict[str, dict[str, Any]]:
        from ..flow import flow_paths, to_original_indices

        x = self.images.x[self.image.value]
        out = {}
        for name, model in self.models.items():
            result = flow_paths(model, x, self.target.value, self.n_paths, self.n_steps)
            if name in self.kept:
                result.paths = to_original_indices(result.paths, result.layers, self.kept[name])
            out[name] = result.to_dict()
        return out

    def _maps(self) -> tuple[dict[str, list[Any]], dict[str, list[str]]]:
        x = self.images.x[self.image.value]
        maps = {name: [m.numpy() for m in self._attribution_maps(model, x, self.target.value, self.layers[name])]
                for name, model in self.models.items()}
        return maps, {name: [layer.conv for layer in layers] for name, layers in self.layers.items()}

    def _image_changed(self, _change: Any) -> None:
        if self.target.value != int(self.images.y[self.image.value]):
            self.target.value = int(self.images.y[self.image.value])  # triggers update()
        else:
            self.update()

    def _describe(self) -> None:
        import torch

        x = self.images.x[self.image.value].unsqueeze(0)
        with torch.no_grad():
            self.probabilities = {n: float(m(x).softmax(1)[0, self.target.value]) for n, m in self.models.items()}
        shown = ", ".join(f"{n} <b>{p:.2f}</b>" for n, p in self.probabilities.items())
        self.status.value = "p(class | image): " + shown

    def update(self) -> None:
        """Recompute paths and maps for the chosen image and class (a few seconds on a CPU)."""
        self.flows = self._flows()
        fresh_sankey, fresh_maps = flow_figure(self.flows), attribution_maps_figure(*self._maps())
        with self.sankey.batch_update():
            for old, new in zip(self.sankey.data, fresh_sankey.data):
                old.node, old.link = new.node, new.link
        with self.maps.batch_update():
            for old, new in zip(self.maps.data, fresh_maps.data):
                old.z = new.z
        self._describe()

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.image, self.target]), self.status, self.sankey, self.maps])


# -- per-layer distillation difficulty (notebook 05) -------------------------------------------------

COLUMN_TITLES = {"nmse": "nMSE at the start<br>(the rule's measure)", "one_minus_cka": "1 - CKA<br>at the start",
                 "steps": "steps until the loss falls<br>to {fraction:g} x its start"}
"""The difficulty bars' panel titles, on two lines each (on one line neighbouring titles ran into each other);
`{fraction:g}` is filled with the table's target fraction."""


class DifficultyExplorer(Explorer):
    """Slider over the probe's length (steps), dropdown for the student's seed.

    Top: the difficulty table as bars, one panel per measure; a censored `steps` value is a hatched bar up to the
    probe's length labelled ">= n". Middle: each layer's single-layer distillation curve (loss / initial loss),
    the target fraction dotted, the probe's end dashed. Bottom: the curriculum the rule
    (`difficulty.curriculum_from_table`) builds, on the curriculum-editor timeline. `result` is
    `experiments.difficulty.cached_difficulty()`; `final`, `budget`, `total_epochs` and `critical_end` are passed
    to the curriculum.
    """

    def __init__(self, result: dict[str, Any], final: Any, budget: int, total_epochs: int,
                 critical_end: int | None = None) -> None:
        from .curriculum import timeline_figure

        self.tables = result["tables"]
        self.final, self.budget, self.total_epochs, self.critical_end = final, budget, total_epochs, critical_end
        self._timeline_figure = timeline_figure
        seeds = [str(s) for s in result["seeds"]]
        first = self.tables[seeds[0]]
        steps = [int(s) for s in first["rows"][0]["curve"]["step"] if s > 0]
        self.slider = widgets.SelectionSlider(options=steps, value=steps[-1], description="probe length (steps)",
                                              style={"description_width": "initial"}, continuous_update=True,
                                              layout=widgets.Layout(width="420px"))
        self.seed = widgets.Dropdown(options=seeds, value=seeds[0], description="student seed",
                                     style={"description_width": "initial"}, layout=widgets.Layout(width="200px"))
        n_pairs = len(first["rows"])
        colours = [PALETTE[i % len(PALETTE)] for i in range(n_pairs)]
        titles = [title.format(fraction=first["fraction"]) for title in COLUMN_TITLES.values()]
        self.bars = SyncedFigure(make_subplots(rows=1, cols=3, subplot_titles=titles))
        for c in range(3):
            self.bars.add_bar(row=1, col=c + 1, marker_color=colours, showlegend=False, textposition="outside",
                              cliponaxis=False)
        self.bars.update_layout(height=340, margin=dict(t=70, b=40))
        self.curves = SyncedFigure()
        for i in range(n_pairs):
            self.curves.add_scatter(mode="lines+markers", line=dict(color=colours[i]))
        self.curves.update_layout(height=320, margin=dict(t=50, b=40), xaxis_title="steps of single-layer distillation",
                                  yaxis=dict(title="held-out loss / initial loss", rangemode="tozero"),
                                  title="each layer distilled alone (direct MSE)")
        self.timeline = SyncedFigure(self._curriculum_figure())
        self.slider.observe(lambda _: self.update(), names="value")
        self.seed.observe(lambda _: self.update(), names="value")
        self.update()

    @property
    def table(self) -> dict[str, Any]:
        """The chosen seed's table as a probe of the chosen length measured it."""
        from ..difficulty import at_budget

        return at_budget(self.tables[self.seed.value], self.slider.value)

    @property
    def curriculum(self) -> Any:
        """The curriculum the rule builds from the chosen seed's table (the probe's length does not change it)."""
        from ..difficulty import curriculum_from_table

        return curriculum_from_table(self.table, self.budget, self.final, self.total_epochs,
                                     critical_end=self.critical_end)

    def _curriculum_figure(self) -> go.Figure:
        lengths = " / ".join(str(p.epochs) for p in self.curriculum.phases)
        return self._timeline_figure(self.curriculum, title=f"the rule: epochs in proportion to nMSE ({lengths} of "
                                                            f"{self.budget}), student seed {self.seed.value}")

    def update(self) -> None:
        """Redraw bars, curves and timeline for the chosen probe length and seed."""
        from ..difficulty import steps_label

        table = self.table
        rows, n = table["rows"], table["probe_steps"]
        labels = [f"{r['teacher']}→{r['student']}" for r in rows]
        with self.bars.batch_update():
            for trace, key in zip(self.bars.data, COLUMN_TITLES):
                if key == "steps":
                    trace.update(x=labels, y=[n if r["censored"] else r["steps"] for r in rows],
                                 text=[steps_label(r) for r in rows],
                                 marker_pattern_shape=["/" if r["censored"] else "" for r in rows])
                else:
                    trace.update(x=labels, y=[r[key] for r in rows], text=[f"{r[key]:.3f}" for r in rows])
        with self.curves.batch_update():
            for trace, row, label in zip(self.curves.data, rows, labels):
                loss0 = row["curve"]["loss"][0] or 1.0
                trace.update(x=row["curve"]["step"], y=[v / loss0 for v in row["curve"]["loss"]],
                             name=f"{label}: {steps_label(row)} steps")
            full = self.tables[self.seed.value]["probe_steps"]
            self.curves.layout.xaxis.range = [0, full]
            self.curves.layout.shapes = [
                dict(type="line", xref="paper", x0=0, x1=1, y0=table["fraction"], y1=table["fraction"],
                     line=dict(dash="dot", color="#888"), label=dict(text=f"target: {table['fraction']:g} x the "
                     "initial loss", textposition="end", yanchor="bottom", font=dict(size=11, color="#555"))),
                dict(type="line", yref="paper", x0=n, x1=n, y0=0, y1=1, line=dict(dash="dash", color="#444"))]
        fresh = self._curriculum_figure()
        with self.timeline.batch_update():
            self.timeline.data[0].update(fresh.data[0])
            self.timeline.layout.update(title=fresh.layout.title, shapes=fresh.layout.shapes,
                                        annotations=fresh.layout.annotations)

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.slider, self.seed]), self.bars, self.curves, self.timeline])
