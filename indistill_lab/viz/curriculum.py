"""The curriculum lab: a timeline figure, an interactive curriculum editor, and schedule comparisons.

    fig = timeline_figure(curriculum)              # a Gantt-style picture of any curriculum
    editor = CurriculumEditor(pairs, final, total_epochs=20, critical_end=10)
    editor                                          # sliders + dropdown + live timeline
    editor.curriculum                               # the edited schedule, a Curriculum

`ComparisonView` browses the results of `experiments.curriculum.compare_curricula` (one student
per schedule from the same initialisation: per-term loss curves and retrieval mAP).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..curriculum import Curriculum, CurriculumError, Pair, Phase, Term
from ..train import resets_optimizer
from .common import Explorer, SyncedFigure

LOSS_COLOURS = {"mse": "#1f77b4", "pkt": "#2ca02c", "kd": "#9467bd", "fitnets": "#d62728"}
CRITICAL_FILL = "rgba(255, 160, 0, 0.15)"


def metric_label(key: str) -> str:
    """A readable name for a retrieval metric key: 'map_11pt' -> 'mAP (11-point)', 'precision_at_100' ->
    'precision@100'."""
    if key.startswith("precision_at_"):
        return f"precision@{key.rsplit('_', 1)[1]}"
    return {"map_11pt": "mAP (11-point)", "map": "mAP (non-interpolated)"}.get(key, key.replace("_", " "))


def _label(term: Term, final: bool = False) -> str:
    return f"{term.teacher} → {term.student} · {term.loss}" + (" (final)" if final else "")


def _bar_fields(phases: Sequence[Phase], final: Term | None, final_begins: int, total_epochs: int,
                critical_end: int | None) -> dict[str, Any]:
    """The bar trace's data: one bar per phase (in order), then the final term."""
    rows = [(_label(p), p.start, p.epochs, p) for p in phases]
    if final is not None:
        rows.append((_label(final, True), final_begins, max(total_epochs - final_begins, 0), final))
    late = [isinstance(t, Phase) and critical_end is not None and t.end > critical_end for *_, t in rows]
    return dict(
        y=[r[0] for r in rows], base=[r[1] for r in rows], x=[r[2] for r in rows],
        text=[f"w={t.weight:g}" for *_, t in rows],
        marker=dict(color=[LOSS_COLOURS.get(t.loss, "#7f7f7f") for *_, t in rows],
                    opacity=[0.35 + 0.65 * min(t.weight, 1.0) for *_, t in rows],
                    line=dict(color=["#d62728" if flag else "rgba(0,0,0,0)" for flag in late], width=3)),
        customdata=[[r[1], r[1] + r[2], t.weight] for r, (*_, t) in zip(rows, rows)],
    )


def _critical_layout(critical_end: int | None, total_epochs: int) -> dict[str, Any]:
    shapes, annotations = [], []
    if critical_end is not None:
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=0, x1=critical_end, y0=0, y1=1,
                           fillcolor=CRITICAL_FILL, line_width=0, layer="below"))
        annotations.append(dict(x=critical_end / 2, y=1.0, xref="x", yref="paper", yanchor="bottom",
                                text="critical period", showarrow=False, font=dict(color="#b36b00")))
    return dict(shapes=shapes, annotations=annotations, xaxis=dict(range=[0, total_epochs]))


OPTIMIZER_CHOICES = [("Adam reset every epoch (reference)", "epoch"), ("Adam reset at each phase change", "phase"),
                     ("Adam kept for the whole run", "run")]


def _reset_shapes(policy: str, curriculum: Curriculum) -> list[dict[str, Any]]:
    """Dotted vertical lines where the optimizer's state is cleared under `policy`."""
    starts = curriculum.phase_starts()
    return [dict(type="line", xref="x", yref="paper", x0=e, x1=e, y0=0, y1=1, layer="above",
                 line=dict(color="#555", width=1, dash="dot"))
            for e in range(curriculum.total_epochs) if resets_optimizer(policy, e, starts)]


def _timeline_base(height: int) -> go.Figure:
    fig = go.Figure(go.Bar(orientation="h", textposition="inside", insidetextanchor="middle",
                           hovertemplate="%{y}<br>epochs %{customdata[0]}-%{customdata[1]} (end excluded)"
                                         "<br>weight %{customdata[2]}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=50, b=40), showlegend=False, bargap=0.3,
                      xaxis_title="epoch", yaxis=dict(autorange="reversed", type="category"))
    return fig


def timeline_figure(curriculum: Curriculum, title: str = "curriculum", height: int | None = None) -> go.Figure:
    """A Gantt-style figure of a curriculum: one bar per phase and one for the final term, colour = loss,
    opacity = weight, the critical period shaded, phases that run past it outlined in red."""
    c = curriculum
    fig = _timeline_base(height or 120 + 40 * (len(c.phases) + 1))
    fig.update_traces(**_bar_fields(c.phases, c.final, c.final_begins, c.total_epochs, c.critical_end))
    fig.update_layout(title=title, **_critical_layout(c.critical_end, c.total_epochs))
    return fig


class CurriculumEditor(Explorer):
    """Sliders per layer pair (start epoch, length, weight), a rule dropdown and a live timeline.

    Choosing a rule ('paper', 'difficulty' when scores are given, 'all-at-once') sets the sliders;
    moving them edits the schedule by hand. A length of 0 leaves the layer out. `curriculum`
    is the edited schedule and `optimizer_state.value` the chosen policy for Adam's state at its
    boundaries (shown as dotted lines; pass it to the Trainer); when the sliders describe an invalid one it raises CurriculumError
    with the problems, which the editor also shows under the timeline.
    """

    def __init__(self, pairs: Sequence[Pair], final: Term | None, total_epochs: int,
                 critical_end: int | None = None, difficulty: Sequence[float] | None = None, a: int = 2,
                 budget: int | None = None, loss: str = "mse", rule: str = "paper") -> None:
        self.pairs, self.final, self.total_epochs, self.loss = list(pairs), final, total_epochs, loss
        self.a, self.difficulty = a, list(difficulty) if difficulty is not None else None
        self.budget = budget if budget is not None else sum(a + k for k in range(1, len(self.pairs) + 1))
        rules = ["paper", *(["difficulty"] if self.difficulty is not None else []), "all-at-once"]
        if rule not in rules:
            raise ValueError(f"Unknown rule {rule!r}; choose one of {rules}"
                             + ("" if self.difficulty is not None else " (pass `difficulty` scores for 'difficulty')")
                             + ".")
        style, layout = {"description_width": "60px"}, widgets.Layout(width="260px")
        self.rule = widgets.Dropdown(options=rules, value=rule, description="rule", style=style)
        self.critical = widgets.IntSlider(critical_end or 0, 0, total_epochs, description="critical",
                                          style=style, layout=layout,
                                          tooltip="end of the critical period (0 = none)")
        self.rows = [(widgets.IntSlider(0, 0, total_epochs - 1, description="start", style=style, layout=layout),
                      widgets.IntSlider(1, 0, total_epochs, description="epochs", style=style, layout=layout),
                      widgets.FloatSlider(1.0, min=0.0, max=2.0, step=0.1, description="weight", style=style,
                                          layout=layout))
                     for _ in self.pairs]
        # Its description is wider than the sliders' 60 px column: sized to its text, not cut to "optimi...".
        self.optimizer_state = widgets.Dropdown(options=OPTIMIZER_CHOICES, value="epoch", description="optimizer",
                                                style={"description_width": "initial"},
                                                layout=widgets.Layout(width="360px"))
        self.status = widgets.HTML()
        self.figure = SyncedFigure(_timeline_base(140 + 40 * (len(self.pairs) + 1)))
        self._applying = False
        self._set_rule()
        self.rule.observe(lambda _: self._set_rule(), names="value")
        for slider in [self.critical, self.optimizer_state, *(s for row in self.rows for s in row)]:
            slider.observe(lambda _: self._edited(), names="value")

    def layout(self) -> widgets.Widget:
        labels = [widgets.Label(f"{t} → {s}", layout=widgets.Layout(width="150px")) for t, s in self.pairs]
        return widgets.VBox([widgets.HBox([self.rule, self.critical, self.optimizer_state]),
                             *[widgets.HBox([label, *row]) for label, row in zip(labels, self.rows)],
                             self.figure, self.status])

    def rule_curriculum(self, rule: str) -> Curriculum:
        """The schedule a rule gives for this editor's layers, budget and training length."""
        common = dict(final=self.final, total_epochs=self.total_epochs, loss=self.loss)
        if rule == "paper":
            return Curriculum.paper(self.pairs, a=self.a, **common)
        if rule == "difficulty" and self.difficulty is not None:
            return Curriculum.from_difficulty(self.pairs, self.difficulty, self.budget, **common)
        if rule == "all-at-once":
            return Curriculum.all_at_once(self.pairs, self.budget, **common)
        raise ValueError(f"Unknown rule {rule!r}; choose one of {list(self.rule.options)}.")

    def set_curriculum(self, curriculum: Curriculum) -> None:
        """Move the sliders to `curriculum`'s phases (matched to this editor's layer pairs by position)."""
        by_pair = {(p.teacher, p.student): p for p in curriculum.phases}
        self._applying = True
        try:
            for pair, (start, length, weight) in zip(self.pairs, self.rows):
                phase = by_pair.get(pair)
                start.value, length.value = (phase.start, phase.epochs) if phase else (0, 0)
                weight.value = phase.weight if phase else 1.0
        finally:
            self._applying = False
        self._edited()

    def _set_rule(self) -> None:
        self.set_curriculum(self.rule_curriculum(self.rule.value))

    def phases(self) -> list[Phase]:
        """The phases the sliders describe (layers with length 0 left out), in layer order."""
        return [Phase(t, s, self.loss, round(w.value, 3), start=start.value, epochs=length.value)
                for (t, s), (start, length, w) in zip(self.pairs, self.rows) if length.value > 0]

    @property
    def curriculum(self) -> Curriculum:
        """The edited schedule (raises CurriculumError, with what to change, if it is not valid)."""
        return Curriculum(tuple(self.phases()), self.final, self.total_epochs, critical_end=self.critical.value or None)

    def _edited(self) -> None:
        if self._applying:
            return
        phases, critical = self.phases(), self.critical.value or None
        final_begins = max((p.end for p in phases), default=0)
        resets: list[dict[str, Any]] = []
        try:
            current = self.curriculum
            resets = _reset_shapes(self.optimizer_state.value, current)
            late = current.outside_critical()
            note = (f"<span style='color:#b36b00'>{len(late)} phase(s) run past the critical period "
                    f"(outlined in red).</span>" if late else "")
            self.status.value = (f"<b style='color:#2ca02c'>valid</b> {note} Adam's state is cleared "
                                 f"{len(resets)} time(s) (dotted lines).")
        except CurriculumError as exc:
            items = "".join(f"<li>{line.strip()[2:]}</li>" for line in str(exc).splitlines()[1:])
            self.status.value = f"<b style='color:#d62728'>not runnable:</b><ul>{items}</ul>"
        layout = _critical_layout(critical, self.total_epochs)
        shapes = layout.pop("shapes") + resets
        with self.figure.batch_update():
            self.figure.data[0].update(**_bar_fields(phases, self.final, final_begins, self.total_epochs, critical))
            self.figure.layout.shapes = shapes  # assigned, not merged: the number of lines changes
            self.figure.update_layout(**layout)


class ComparisonView(Explorer):
    """Browse `compare_curricula` results: per-term loss curves of one schedule (dropdown) beside the final
    retrieval score of every schedule (metric and distance dropdowns). `add` puts a new run in."""

    def __init__(self, results: Mapping[str, Mapping[str, Any]]) -> None:
        if not results:
            raise ValueError("ComparisonView needs at least one result from compare_curricula.")
        self.results = dict(results)
        self.schedule = widgets.Dropdown(options=list(self.results), description="curves of")
        metrics = list(next(iter(self.results.values()))["retrieval"]["euclidean"])
        self.metric = widgets.Dropdown(options=[(metric_label(m), m) for m in metrics], value="map_11pt",
                                      description="metric")
        self.distance = widgets.Dropdown(options=("euclidean", "cosine"), description="distance")
        self.figure = SyncedFigure(make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                                                    subplot_titles=("loss terms per epoch (log)", "retrieval (%)")))
        self.figure.add_bar(x=[], y=[], marker_color="#7f7f7f", textposition="outside", showlegend=False,
                            row=1, col=2)
        self.figure.update_xaxes(title_text="epoch", row=1, col=1)
        self.figure.update_yaxes(type="log", row=1, col=1)
        self.figure.update_layout(height=380, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.25))
        for control in (self.schedule, self.metric, self.distance):
            control.observe(lambda _: self.redraw(), names="value")
        self.redraw()

    def layout(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.schedule, self.metric, self.distance]), self.figure])

    def add(self, name: str, result: Mapping[str, Any]) -> None:
        """Add (or replace) one schedule's result and show its curves."""
        self.results[name] = result
        self.schedule.options = list(self.results)
        self.schedule.value = name
        self.redraw()

    def _curve(self, term: str) -> Any:
        for trace in self.figure.data[1:]:
            if trace.name == term:
                return trace
        self.figure.add_scatter(x=[], y=[], name=term, mode="lines+markers", row=1, col=1)
        return self.figure.data[-1]

    def redraw(self) -> None:
        epochs = self.results[self.schedule.value]["epochs"]
        terms = sorted({k for r in self.results.values() for e in r["epochs"] for k in e if k != "loss"})
        names = list(self.results)
        scores = [100 * self.results[n]["retrieval"][self.distance.value][self.metric.value] for n in names]
        with self.figure.batch_update():
            for term in terms:
                xs = [i + 1 for i, e in enumerate(epochs) if term in e]
                self._curve(term).update(x=xs, y=[epochs[i - 1][term] for i in xs])
            self.figure.data[0].update(x=names, y=scores, text=[f"{v:.2f}" for v in scores])
            metric = metric_label(self.metric.value)
            self.figure.layout.annotations[1].text = f"retrieval {metric} ({self.distance.value}) %"
