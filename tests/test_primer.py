"""The primer's figures (notebook 00): soft targets per temperature, and the pipeline diagram whose boxes are
the stages in order and whose arrows join consecutive boxes."""
from __future__ import annotations

import math

import pytest
import torch

from indistill_lab.viz.primer import INDISTILL_LINKS, INDISTILL_STAGES, Stage, pipeline_figure, soft_targets_figure

CLASSES = [f"c{i}" for i in range(5)]


def _boxes(fig) -> list[tuple[float, float, float, float]]:
    return [(s.x0, s.x1, s.y0, s.y1) for s in fig.layout.shapes if s.type == "rect"]


def _on_edge(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    (x, y), (x0, x1, y0, y1) = point, box
    inside = x0 - 1e-9 <= x <= x1 + 1e-9 and y0 - 1e-9 <= y <= y1 + 1e-9
    return inside and min(abs(x - x0), abs(x - x1), abs(y - y0), abs(y - y1)) < 1e-9


@pytest.mark.parametrize("per_row", [1, 2, 3, 6])
def test_pipeline_boxes_are_the_stages_in_order_and_arrows_join_consecutive_boxes(per_row):
    fig = pipeline_figure(per_row=per_row)
    labels = list(fig.data[0].text)
    assert [label.split("<br>")[0] for label in labels] == [f"<b>{s.title}</b>" for s in INDISTILL_STAGES]
    boxes = _boxes(fig)
    assert len(boxes) == len(INDISTILL_STAGES)
    # Each label sits at the centre of its own box.
    for (x, y), (x0, x1, y0, y1) in zip(zip(fig.data[0].x, fig.data[0].y), boxes):
        assert (x, y) == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2))
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == len(INDISTILL_STAGES) - 1
    for i, arrow in enumerate(arrows):
        assert _on_edge((arrow.ax, arrow.ay), boxes[i]), f"arrow {i} does not start on box {i}"
        assert _on_edge((arrow.x, arrow.y), boxes[i + 1]), f"arrow {i} does not end on box {i + 1}"
        assert not any(_on_edge((arrow.x, arrow.y), b) for j, b in enumerate(boxes) if j != i + 1)


def test_pipeline_boxes_do_not_overlap_and_links_are_labelled_in_order():
    fig = pipeline_figure()
    boxes = _boxes(fig)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2], f"boxes {a} and {b} overlap"
    texts = [a.text for a in fig.layout.annotations if not a.showarrow]
    assert texts == [link.replace("\n", "<br>") for link in INDISTILL_LINKS]


def test_pipeline_takes_any_stages():
    fig = pipeline_figure([Stage("a"), Stage("b", "two\nlines")], ["a to b"], title="mine")
    assert list(fig.data[0].text) == ["<b>a</b><br>", "<b>b</b><br>two<br>lines"]
    assert fig.layout.title.text == "mine"


@pytest.mark.parametrize("stages, links, per_row, words", [
    ([Stage("only")], [], 3, "at least two"),
    ([Stage("a"), Stage(" ")], [""], 3, "title"),
    (["a", "b"], [""], 3, "Stage(title, detail)"),
    ([Stage("a"), Stage("b")], [], 3, "2 stages need 1 link"),
    ([Stage("a"), Stage("b")], [""], 0, "per_row"),
])
def test_pipeline_bad_input_says_what_to_change(stages, links, per_row, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        pipeline_figure(stages, links, per_row=per_row)


def test_soft_targets_are_distributions_that_flatten_as_t_grows():
    logits = torch.tensor([[4.0, 1.0, 0.0, -1.0, -3.0], [0.0, 6.0, 2.0, 0.0, 0.0]])
    fig = soft_targets_figure(logits, [1, 4, 10], CLASSES, ["first", "second"])
    assert len(fig.data) == 3 * 2 and [t.name for t in fig.data[::2]] == ["T = 1", "T = 4", "T = 10"]
    assert list(fig.data[0].x) == CLASSES
    for image in (0, 1):
        bars = [fig.data[2 * k + image] for k in range(3)]
        assert all(sum(b.y) == pytest.approx(1.0) for b in bars)
        entropies = [-sum(p * math.log(p) for p in b.y) for b in bars]
        assert entropies[0] < entropies[1] < entropies[2] < math.log(len(CLASSES))
        assert max(bars[0].y) > max(bars[2].y) and bars[0].y.index(max(bars[0].y)) == int(logits[image].argmax())
    assert [a.text for a in fig.layout.annotations] == ["first", "second"]


@pytest.mark.parametrize("logits, temperatures, names, titles, words", [
    (torch.zeros(5), [1], CLASSES, ["x"], "2-D tensor"),
    (torch.zeros(1, 5), [1], CLASSES[:4], ["x"], "4 class names for 5 logits"),
    (torch.zeros(2, 5), [1], CLASSES, ["x"], "1 titles for 2 images"),
    (torch.zeros(1, 5), [0], CLASSES, ["x"], "temperatures"),
    (torch.zeros(1, 5), [], CLASSES, ["x"], "temperatures"),
])
def test_soft_targets_bad_input_says_what_to_change(logits, temperatures, names, titles, words):
    with pytest.raises(ValueError, match=words):
        soft_targets_figure(logits, temperatures, names, titles)


def test_temperature_explorer_draws_softmax_at_the_sliders_t_and_reads_it_out():
    from indistill_lab.viz.primer import TemperatureExplorer, entropy_share, soft_targets
    logits = torch.tensor([[4.0, 1.0, 0.0, -1.0, -3.0], [0.0, 6.0, 2.0, 0.0, 0.0]])
    explorer = TemperatureExplorer(logits, CLASSES, ["first", "second"], temperature=1.0)
    bars = [t for t in explorer.figure.data if t.type == "bar"]
    assert list(bars[1].y) == pytest.approx(torch.softmax(logits[1], 0).tolist())
    low = entropy_share(soft_targets(logits, 1.0))
    explorer.temperature.value = 10.0
    assert list(bars[0].y) == pytest.approx(torch.softmax(logits[0] / 10, 0).tolist())
    high = entropy_share(soft_targets(logits, 10.0))
    assert (high > low).all() and (high < 1).all()
    assert "T = 10" in explorer.figure.layout.title.text
    assert f"{float(high[1]):.0%} of uniform" in explorer.status.value and "<b>second</b>: c1" in explorer.status.value


@pytest.mark.parametrize("kwargs, words", [
    (dict(temperature=100.0), "t_min <= temperature <= t_max"),
    (dict(t_min=0.0), "0 < t_min"),
])
def test_temperature_explorer_bad_range_says_what_to_change(kwargs, words):
    from indistill_lab.viz.primer import TemperatureExplorer
    with pytest.raises(ValueError, match=words):
        TemperatureExplorer(torch.zeros(1, 5), CLASSES, ["x"], **kwargs)
