"""Figures as a learner's browser draws them: the synced widget state (what a view created after the first
update is drawn from) equals the figure the function built, and the readability fixes of issue 14."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from indistill_lab.models import build_model
from indistill_lab.retrieval import RECALL_POINTS
from indistill_lab.viz.common import STATIC_FIGURES_MIME, Explorer, LivePlot, figure_json
from indistill_lab.curriculum import Term
from indistill_lab.viz.curriculum import ComparisonView, CurriculumEditor
from indistill_lab.viz.diagnostics import DeficitExplorer, survival_figure
from indistill_lab.viz.pruning import SweepExplorer, cka_heatmaps
from indistill_lab.viz.results import ResultsExplorer
from indistill_lab.viz.retrieval import RetrievalExplorer

METHODS = ["student-ce", "hinton-kd", "pkt", "indistill-paper"]


def browser_data(explorer: Explorer) -> list[list[dict]]:
    """Each figure's traces as the browser receives them when the explorer is displayed in a cell."""
    explorer._repr_mimebundle_()
    return [list(figure._widget_data) for figure in explorer.figures]


def assert_browser_draws_the_figure(explorer: Explorer) -> None:
    for figure, traces in zip(explorer.figures, browser_data(explorer)):
        assert figure_json(figure.__class__(data=traces, layout=figure._widget_layout)) == figure_json(figure)


def result_rows() -> list[dict]:
    return [dict(method=m, seed=s, map_e=50.0 + i + s, map_c=51.0, map_std_e=40.0, map_std_c=41.0, top100_e=60.0,
                 top100_c=61.0) for i, m in enumerate(METHODS) for s in (0, 1)]


def test_results_bars_stand_over_their_method_names():
    explorer = ResultsExplorer(result_rows())
    bars, seeds = browser_data(explorer)[0]
    assert list(bars["x"]) == METHODS  # 07: a spurious "0" category, every bar one method to the right
    assert list(bars["y"]) == pytest.approx([50.5 + i for i in range(len(METHODS))])
    assert set(seeds["x"]) == set(METHODS)
    assert_browser_draws_the_figure(explorer)
    # 07: bars on an axis from 74.5 (a bar's length was not its value): ticks, and the cut is said
    assert bars["type"] == "scatter" and bars["mode"] == "markers"
    bottom = explorer.figure.layout.yaxis.range[0]
    assert bottom > 0 and f"starts at {bottom:.1f}, not 0" in explorer.figure.layout.yaxis.title.text


def test_retrieval_model_dropdown_fits_its_longest_name(tiny_split):
    name = "student, InDistill (zoo, CPU table seed 0)"  # 07: cut short in the default 300 px
    explorer = RetrievalExplorer({"student": build_model("student"), name: build_model("student")}, tiny_split,
                                 tiny_split, k=4)
    assert int(explorer.model.layout.width.removesuffix("px")) >= 80 + 7 * len(name) + 30


def test_precision_recall_step_line_is_drawn_against_recall(tiny_split):
    explorer = RetrievalExplorer({"student": build_model("student")}, tiny_split, tiny_split, k=4)
    curve = browser_data(explorer)[1]
    assert list(curve[1]["x"]) == pytest.approx(RECALL_POINTS.tolist())  # 01: drawn at x = 0..10
    assert curve[1]["name"] == "11-point interpolated" and curve[1]["line"]["shape"] == "hv"
    assert_browser_draws_the_figure(explorer)


def test_surviving_channels_heatmap_rows_are_layer_names():
    widths = {"stage1.conv1": 4, "stage2.conv1": 6, "stage3.conv1": 8}
    rows = [dict(criterion="L1", mode="all", r=r, kept={p: list(range(int(w * (1 - r)))) for p, w in widths.items()},
                 widths=[int(w * (1 - r)) for w in widths.values()], params=1000, acc=0.8 - r / 2, map=0.5 - r / 4,
                 acc_ft=0.85 - r / 2, map_ft=0.55 - r / 4) for r in (0.25, 0.5)]
    explorer = SweepExplorer(rows, widths)
    heatmap = next(t for t in browser_data(explorer)[0] if t["type"] == "heatmap")
    assert list(heatmap["y"]) == list(widths)  # 02: the axis read -0.5 .. 2.5
    assert_browser_draws_the_figure(explorer)
    # issue 24: the legend (panel 1's curves) gives the mAP panel's colours too; default colours gave it others
    colours = {(t["xaxis"], t["name"]): t["line"]["color"] for t in browser_data(explorer)[0] if t.get("name")}
    for name in ("pruned", "pruned + fine-tune"):
        assert colours[("x", name)] == colours[("x2", name)]
    assert colours[("x", "pruned")] != colours[("x", "pruned + fine-tune")]
    # the heatmap's row labels fit between the mAP panel and the heatmap (about 7 px a character at 900 px)
    layout = explorer.figure.layout
    gap_px = (layout.xaxis3.domain[0] - layout.xaxis2.domain[1]) * (900 - 60)
    assert gap_px >= 7 * max(len(path) for path in widths)


def deficit_sweep() -> dict:
    return {"runs": [{"deficit_epochs": n, "final_acc": 0.9 - n / 100, "val_acc": [0.5, 0.7, 0.9 - n / 100]}
                     for n in (0, 2, 4)]}


def test_deficit_legend_names_every_trace():
    explorer = DeficitExplorer(deficit_sweep())
    names = [t.get("name") for t in browser_data(explorer)[0] if t.get("showlegend", True)]
    assert names == ["final accuracy", "chosen N", "N = 0 (no deficit)", "N = 4"]  # 04: "trace 0", "trace 1"
    assert_browser_draws_the_figure(explorer)


def test_a_synced_figure_resends_its_state_after_each_update():
    explorer = ResultsExplorer(result_rows())
    explorer._repr_mimebundle_()
    explorer.distance.value = "cosine"
    assert list(explorer.figure._widget_data[0]["y"]) == pytest.approx([51.0] * len(METHODS))
    assert explorer.figure._widget_layout["title"]["text"].endswith("cosine distance")


def test_an_explorer_carries_its_figures_and_a_readable_text():
    explorer = DeficitExplorer(deficit_sweep())
    bundle = explorer._repr_mimebundle_()
    assert bundle["text/plain"].startswith("DeficitExplorer:")
    figures = bundle[STATIC_FIGURES_MIME]["figures"]
    assert len(figures) == 1 and figures[0] == figure_json(explorer.figure)


def test_a_fresh_deficit_run_is_drawn_beside_the_seed_mean_not_over_it():
    """04: a one-seed rerun replaced a 3-seed mean and turned the figure into the opposite of the text."""
    sweep = {"runs": [{**r, "final_std": 0.01, "seeds": 3} for r in deficit_sweep()["runs"]]}
    explorer = DeficitExplorer(sweep, rerun=lambda n: {"deficit_epochs": n, "final_acc": 0.5, "val_acc": [0.4, 0.5]})
    explorer.slider.value = 4
    explorer._fresh(explorer.button)
    assert list(explorer.figure.data[0].y) == [0.9, 0.88, 0.86]  # the stored means stay
    assert list(explorer.figure.data[0].error_y.array) == [0.01] * 3 and explorer.figure.data[0].error_y.visible
    assert list(explorer.figure.data[4].x) == [4] and list(explorer.figure.data[4].y) == [0.5]
    assert list(explorer.figure.data[5].y) == [0.4, 0.5] and explorer.figure.data[5].showlegend
    assert "± 0.010 over 3 seeds" in explorer.status.value and "fresh run (one seed): <b>0.500</b>" in explorer.status.value


def test_buttons_are_as_wide_as_their_label():
    assert DeficitExplorer(deficit_sweep(), rerun=lambda n: {}).button.layout.width == "auto"


def test_curriculum_editor_optimizer_label_is_not_cut():
    # In chromium "optimizer" needs 61 px: in the sliders' 60 px label column it read "optimi...".
    editor = CurriculumEditor([("stage1", "stage1")], Term("act_fc1", "act_fc1", "pkt"), total_epochs=4)
    assert editor.optimizer_state.style.description_width == "initial"
    assert all(row[0].style.description_width == "60px" for row in editor.rows)  # the sliders stay aligned


def test_cka_panels_name_the_models_they_compare():
    m = torch.eye(2)
    fig = cka_heatmaps({"aux x student": m, "aux x pruned aux": m}, ["a", "b"], ["a", "b"],
                       models=[("auxiliary", "student"), ("auxiliary", "pruned auxiliary")])
    assert fig.layout.xaxis2.title.text == "pruned auxiliary layer"  # 02: it read "student layer"
    assert fig.layout.yaxis2.title.text == "auxiliary layer" and fig.layout.xaxis.title.text == "student layer"
    with pytest.raises(ValueError, match="one pair per matrix"):
        cka_heatmaps({"a": m, "b": m}, ["a", "b"], ["a", "b"], models=[("teacher", "student")])


def test_cka_cells_show_two_decimals():
    m = torch.tensor([[0.89, 0.123456], [1.0, 0.0]], dtype=torch.float32)
    fig = cka_heatmaps({"before": m}, ["t1", "t2"], ["s1", "s2"])
    assert [list(row) for row in fig.data[0].text] == [["0.89", "0.12"], ["1.00", "0.00"]]


def test_comparison_metric_dropdown_shows_readable_names():
    scores = {"map_11pt": 0.5, "map": 0.4, "precision_at_100": 0.6}
    result = {"epochs": [{"loss": 1.0, "mse/stage1": 0.9, "pkt/act_fc1": 0.003}],
              "retrieval": {"euclidean": scores, "cosine": scores}}
    view = ComparisonView({"paper": result})
    labels = [label for label, _key in view.metric.options]
    assert labels == ["mAP (11-point)", "mAP (non-interpolated)", "precision@100"]
    assert view.metric.value == "map_11pt"
    assert "_" not in view.figure.layout.annotations[1].text


def test_live_plot_log_axis_and_validation_panel_only_with_validation_data():
    live = LivePlot(every=1)
    for step in (1, 2):
        live.on_batch_end(SimpleNamespace(step=step), {"pkt/act_fc1": 0.003, "loss": 2.0})  # the Trainer's order
    live.on_epoch_end(SimpleNamespace(step=2), {"epoch": 1})
    assert live.figure.layout.yaxis.type == "log"
    assert [t.name for t in live.figure.data] == ["total", "pkt/act_fc1"]  # the total beneath the terms
    live.on_batch_end(SimpleNamespace(step=3), {"mse/stage1": 0.5, "loss": 0.5})  # a term of a later phase
    assert [t.name for t in live.figure.data] == ["total", "pkt/act_fc1", "mse/stage1"]
    assert not any(t.xaxis == "x2" for t in live.figure.data) and live.figure.layout.xaxis.domain == (0, 1)
    relayouts = []
    send = live.figure._send_update_msg
    live.figure._send_update_msg = lambda **message: (relayouts.append(message["relayout_data"]), send(**message))
    live.on_epoch_end(SimpleNamespace(step=2), {"epoch": 1, "val_acc": 0.7})
    assert live.figure.data[-1].xaxis == "x2" and live.figure.data[-1].y == (0.7,)
    assert live.figure.layout.xaxis.domain[1] < 1
    for keys in relayouts:  # 01: "cannot set xaxis2.domain and a parent attribute simultaneously" in plotly.js
        assert not any(other.startswith(key + ".") for key in keys for other in keys), keys
    assert live.figure.layout.yaxis2.range == (0, 1)  # 01: one point was drawn on an axis from -0.3 to 1.6
    assert live.figure.layout.xaxis2.range == (0.5, 1.5) and live.figure.layout.xaxis2.dtick == 1
    assert [t["name"] for t in live.figure._widget_data] == ["total", "pkt/act_fc1", "mse/stage1",
                                                             "validation accuracy"]


def test_survival_error_bars_stay_above_zero():
    survival = {"L1": {"channels": [0.02, 0.3], "paths": [0.0, 0.01]}}
    fig = survival_figure(survival)
    for bar in fig.data:
        assert all(low <= mean + 1e-12 for low, mean in zip(bar.error_y.arrayminus, bar.y))


def test_survival_title_and_legend_keep_apart():
    survival = {"L1": {"channels": [0.2, 0.3], "paths": [0.0, 0.1]}}
    fig = survival_figure(survival, {"L1": {"channels": 0.5, "paths": 0.01}}, 20, title="teacher")
    assert fig.layout.title.text == "teacher"
    # 03: the legend sat at y = 1.15, on the title and the panel titles; now it is under the panels
    assert fig.layout.legend.y < 0 and fig.layout.margin.b >= 80 and fig.layout.margin.t >= 80


def test_grad_cam_maps_share_one_shown_colour_scale():
    from indistill_lab.viz.diagnostics import attribution_maps_figure

    maps = {"teacher": [torch.tensor([[0.0, 2.0], [1.0, 0.5]]), torch.tensor([[0.0, 0.02], [0.01, 0.0]])],
            "student": [torch.zeros(2, 2), torch.tensor([[3.0, 0.0], [0.0, 6.0]])]}
    fig = attribution_maps_figure(maps, {"teacher": ["stage1", "stage2"], "student": ["stage1", "stage2"]})
    assert sum(bool(t.showscale) for t in fig.data) == 1  # 03: no colour scale at all
    assert all((t.zmin, t.zmax) == (0, 1) for t in fig.data)
    assert [max(max(row) for row in t.z) for t in fig.data] == [1.0, 1.0, 0.0, 1.0]  # each over its own maximum


def test_neighbour_titles_put_the_mark_above_the_class_name(tiny_split):
    explorer = RetrievalExplorer({"student": build_model("student")}, tiny_split, tiny_split, k=4)
    explorer._repr_mimebundle_()
    titles = [a["text"] for a in explorer.images._widget_layout["annotations"]]  # as the browser receives them
    query_class = tiny_split.info.class_names[int(tiny_split.y[explorer.query.value])]
    assert titles[0] == f"query<br><b>{query_class}</b>"
    for title in titles[1:]:  # 01: "✗ T-shirt/top" titles on one line ran into each other
        mark, name = title.split("<br>")
        assert name.split(">")[1].split("<")[0] in tiny_split.info.class_names
        assert ("✓" in mark) == (f">{query_class}<" in name) and ("✓" in mark) != ("✗" in mark)


def test_live_figures_load_plotly_after_anywidgets_deadline_once_per_page():
    """Issue 24 item 2: anywidget drops every message to a model whose module is not loaded 2 s after the model
    was created; plotly's 5 MB module per figure lost that race under load and left the figure empty. The module
    a SyncedFigure hands anywidget is small and does nothing in `initialize`; plotly's module travels beside it
    and is imported once per page, when a view is drawn."""
    from plotly.basewidget import BaseFigureWidget

    from indistill_lab.viz.common import SyncedFigure

    state = SyncedFigure().get_state()
    plotly_module = str(BaseFigureWidget._esm)
    assert len(state["_esm"]) < 2_000 < len(plotly_module)
    assert state["_plotly_module"] == plotly_module
    initialize = state["_esm"].split("initialize()", 1)[1].split("\n", 1)[0]
    assert initialize.strip() == "{},", "initialize must return at once (anywidget's deadline covers it)"
    assert "globalThis[KEY]" in state["_esm"] and "import(url)" in state["_esm"].split("async render", 1)[0]


def test_difficulty_bars_name_the_fraction_and_keep_their_titles_apart():
    from indistill_lab.experiments.difficulty import cached_difficulty
    from indistill_lab.viz.diagnostics import DifficultyExplorer

    result = cached_difficulty()  # the committed table (read only)
    explorer = DifficultyExplorer(result, final=Term("act_fc1", "act_fc1", "pkt"), budget=12, total_epochs=20,
                                  critical_end=12)
    fraction = result["tables"][str(result["seeds"][0])]["fraction"]
    titles = [a.text for a in explorer.bars.layout.annotations]
    assert titles[2] == f"steps until the loss falls<br>to {fraction:g} x its start"  # 05: "the fraction"
    # 05: one-line titles of ~40 characters over panels a third of the width wide ran into each other
    assert all(max(len(line) for line in t.split("<br>")) <= 26 for t in titles)
    assert f"{fraction:g} x the initial loss" in explorer.curves.layout.shapes[0].label.text


def test_shape_explorer_draws_each_image_in_one_colour_in_both_panels_under_a_two_line_title():
    from indistill_lab.viz.self_distillation import ShapeExplorer

    torch.manual_seed(0)
    explorer = ShapeExplorer(torch.randn(3, 10).tolist(), (4 * torch.randn(3, 10)).tolist(), ["a", "b", "c"])
    traces = browser_data(explorer)[0]
    colours = [t["line"]["color"] for t in traces]
    assert colours[:3] == colours[3:] and len(set(colours[:3])) == 3  # legend colour = curve colour after training
    assert [t["showlegend"] for t in traces] == [True] * 3 + [False] * 3
    title = explorer.figure.layout.title.text
    assert "<br>" in title and all(len(line) <= 80 for line in title.split("<br>"))  # no line runs off the figure


def test_gain_figure_draws_paired_gains_from_zero_with_one_dot_per_seed():
    from indistill_lab.experiments.self_distillation import summary
    from indistill_lab.viz.self_distillation import gain_figure

    rows = [{"arch": "auxiliary", "optimizer": "sgd", "method": m, "seed": s, "accuracy": acc, "map_e": 60 + acc / 10,
             "map_c": 70.0, "train_seconds": 1.0, "train_accuracy": 99.0, "head_accuracy": None}
            for m, base in (("student-ce", 80.0), ("self-dsr", 81.0)) for s, acc in ((0, base), (1, base + 0.5))]
    fig = gain_figure({"over-fitting": summary(rows)})
    bars = [t for t in fig.data if t.type == "bar"]
    dots = [t for t in fig.data if t.type == "scatter"]
    assert [list(b.x) for b in bars] == [["self-dsr"], ["self-dsr"]]  # CE alone has no gain over itself
    assert bars[0].y[0] == pytest.approx(1.0) and bars[0].base is None  # a bar from 0, not from a cut axis
    assert list(dots[0].y) == pytest.approx([1.0, 1.0]) and list(dots[1].y) == pytest.approx([0.1, 0.1])
