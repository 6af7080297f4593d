"""The course website's parts that need no browser: explorer states for client-side sliders, the figure blocks
and the staged notebooks (tests/test_book.py opens the built site in chromium)."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import ipywidgets as widgets
import nbformat
import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from indistill_lab.viz.common import Explorer, SyncedFigure
from indistill_lab.viz.site_explorers import SITE_EXPLORERS
from indistill_lab.viz.sliders import Control, _compact_images, explorer_states, slider_script
from indistill_lab.viz.static_site import PLOTLY, figure_html, stage_notebook

REPO = Path(__file__).resolve().parents[1]


class _Line(Explorer):
    """y = a * x over three points, with a drop-down for the sign: the smallest explorer with two controls."""

    def __init__(self) -> None:
        self.a = widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.5)
        self.sign = widgets.Dropdown(options=["+", "-"])
        self.status = widgets.HTML()
        self.figure = SyncedFigure()
        self.figure.add_scatter(x=[0, 1, 2], y=[0, 0, 0])
        for control in (self.a, self.sign):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def update(self) -> None:
        a = self.a.value * (1 if self.sign.value == "+" else -1)
        with self.figure.batch_update():
            self.figure.data[0].y = [0, a, 2 * a]
        self.status.value = f"a = {a:g}"

    def layout(self) -> widgets.Widget:
        return widgets.VBox([self.a, self.sign, self.status, self.figure])


def test_explorer_states_records_each_combination_by_the_explorers_own_update() -> None:
    states = explorer_states(_Line(), [Control("sign", ("+", "-"), "sign", "select"),
                                       Control("a", (0.5, 1.0, 2.5), "a")], start=["-", 1.0])
    assert [c["labels"] for c in states["controls"]] == [["+", "-"], ["0.5", "1", "2.5"]]
    assert [c["start"] for c in states["controls"]] == [1, 1]
    assert len(states["frames"]) == 6
    # the last control varies fastest: frame 4 is sign "-", a = 1.0
    assert states["frames"][4]["figures"][0]["data"][0]["y"] == [0, -1.0, -2.0]
    assert states["frames"][2]["status"] == "a = 2.5"


def test_explorer_states_refuses_unknown_controls_start_values_and_values_the_widget_refuses() -> None:
    with pytest.raises(ValueError, match="no control 'b'"):
        explorer_states(_Line(), [Control("b", (1.0,), "b")])
    with pytest.raises(ValueError, match="not among"):
        explorer_states(_Line(), [Control("a", (0.5,), "a")], start=[2.0])
    with pytest.raises(ValueError, match="refuses"):
        explorer_states(_Line(), [Control("sign", ("+", "x"), "sign", "select")], start=["+"])
    with pytest.raises(ValueError, match="kind"):
        Control("a", (1.0,), "a", "knob")


def test_floats_are_rounded_and_image_pixels_become_a_png_that_decodes_to_them() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    figure = json.loads(go.Figure(go.Image(z=pixels)).to_json())
    image = _compact_images(figure)["data"][0]
    assert "z" not in image
    png = base64.b64decode(image["source"].split(",", 1)[1])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), pixels)
    states = explorer_states(_Line(), [Control("a", (1.0 / 3,), "a")], start=[1.0 / 3])
    assert states["frames"][0]["figures"][0]["data"][0]["y"][1] == 0.3333


def test_slider_script_registers_its_states_and_cannot_close_the_page_script() -> None:
    script = slider_script("00-t", {"frames": [{"status": "</script><b>x</b>"}]})
    assert "</script>" not in script
    prefix = '(window.indistillSliders = window.indistillSliders || {})["00-t"] = '
    assert script.startswith(prefix)
    assert json.loads(script[len(prefix):].rstrip().rstrip(";"))["frames"][0]["status"] == "</script><b>x</b>"
    with pytest.raises(ValueError, match="slider name"):
        slider_script("../x", {})


def _notebook() -> nbformat.NotebookNode:
    figure = {"data": [{"type": "bar", "y": [1, 2]}], "layout": {"title": {"text": "a </script> title"}}}
    cells = [nbformat.v4.new_markdown_cell("# t"),
             nbformat.v4.new_code_cell("TemperatureExplorer(logits)", outputs=[nbformat.v4.new_output(
                 "display_data", data={PLOTLY: figure, "image/png": "iVBORw0KGgo=", "text/plain": "Figure: t",
                                       "text/html": '<script src="https://cdn.plot.ly/plotly.js"></script>'})]),
             nbformat.v4.new_code_cell("print(1)")]
    return nbformat.v4.new_notebook(cells=cells)


def test_staged_notebook_draws_figures_locally_and_places_the_slider_after_its_explorer() -> None:
    explorer = next(e for e in SITE_EXPLORERS if e.name == "00-temperature")
    nb = stage_notebook(_notebook(), [explorer])
    html = nb.cells[1].outputs[0]["data"]["text/html"]
    assert "cdn" not in html and PLOTLY not in nb.cells[1].outputs[0]["data"]
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in html and 'alt="a &lt;/script&gt; title"' in html
    assert html.count("</script>") == 1  # the title's own "</script>" is escaped inside the JSON
    assert [c.source.split("\n")[0] for c in nb.cells].index(explorer.intro) == 2
    assert 'data-slider="00-temperature"' in nb.cells[2].source and nb.cells[3].source == "print(1)"
    with pytest.raises(ValueError, match="01-retrieval"):
        stage_notebook(_notebook(), [next(e for e in SITE_EXPLORERS if e.name == "01-retrieval")])


def test_a_figure_without_a_png_is_drawn_by_plotly_only() -> None:
    html = figure_html({PLOTLY: {"data": [], "layout": {}}})
    assert "<img" not in html and 'class="indistill-plotly"' in html


def _stored_figures(explorer_name: str) -> list[dict]:
    explorer = next(e for e in SITE_EXPLORERS if e.name == explorer_name)
    nb = nbformat.read(REPO / "notebooks" / f"{explorer.notebook}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and explorer.marker in c.source)
    return [o["data"][PLOTLY] for o in cell.outputs if PLOTLY in o.get("data", {})]


def _numbers(trace: dict, key: str) -> np.ndarray | None:
    value = trace.get(key)
    if isinstance(value, dict):  # plotly's typed-array form
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).astype(float).ravel()
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value, dtype=float)
    return None


@pytest.mark.parametrize("name", [e.name for e in SITE_EXPLORERS])
def test_each_site_explorer_opens_on_the_figure_its_notebook_stored(name: str) -> None:
    """The build rebuilds each explorer from the notebook's inputs: its opening state must be the stored one
    (a changed notebook, zoo model or sweep that the site would draw differently fails here)."""
    explorer = next(e for e in SITE_EXPLORERS if e.name == name)
    built, controls, start = explorer.build()
    single = [Control(c.attribute, (s,), c.label, c.kind) for c, s in zip(controls, start)]
    drawn = [f["data"] for f in explorer_states(built, single, start)["frames"][0]["figures"]]
    stored = [f["data"] for f in _stored_figures(name)]
    assert [len(f) for f in drawn] == [len(f) for f in stored]
    compared = 0
    for mine, theirs in zip(sum(drawn, []), sum(stored, [])):
        assert mine.get("type") == theirs.get("type")
        for key in ("x", "y"):
            a, b = _numbers(mine, key), _numbers(theirs, key)
            if a is not None and b is not None:
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=f"{name}: trace {key}")
                compared += 1
    assert compared > 0
