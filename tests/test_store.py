"""Storing notebooks: each stored figure gets a PNG of itself drawn offline by chromium, the CDN HTML is
dropped, solutions become closed markdown blocks that never run, the kernelspec is the installed one, and
`--no-run` does that to a stored notebook without running it (chromium tests are skipped, saying why, where
there is no chromium)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import nbformat
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from PIL import Image

from indistill_lab.errors import guarded
from indistill_lab.viz import store
from indistill_lab.viz.common import figure_json
from indistill_lab.viz.snapshot import CHROMIUM, DEFAULT_WIDTH, compact_png, png_images

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM} (make chromium)")
RED = (255, 0, 0)


def _picture(image: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB"))


def _red_pixels(image: str) -> int:
    return int((_picture(image) == RED).all(axis=2).sum())


def _notebook_with_cdn_figure(figure: go.Figure) -> nbformat.NotebookNode:
    """A notebook as the old store wrote it: plotly JSON beside HTML that loads plotly.js from its CDN."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    cell = nbformat.v4.new_code_cell("figure")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        store.PLOTLY: figure_json(figure), "text/html": pio.to_html(figure, include_plotlyjs="cdn", full_html=False),
        "text/plain": "Figure"}), nbformat.v4.new_output("stream", name="stdout", text="done\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), cell]
    return nb


@needs_chromium
def test_png_images_draw_each_figure_at_its_size() -> None:
    bars = go.Figure(go.Bar(x=["a", "b"], y=[3, 1], marker_color="rgb(255,0,0)"), layout=dict(height=300))
    empty = go.Figure(layout=dict(width=400, height=250))
    drawn, blank = png_images([figure_json(bars), figure_json(empty)])
    assert _picture(drawn).shape == (300, DEFAULT_WIDTH, 3) and _picture(blank).shape == (250, 400, 3)
    assert _red_pixels(drawn) > 1000, "the red bars are not in the image"
    assert _red_pixels(blank) == 0


def test_compact_png_keeps_plots_faithful_and_photos_whole() -> None:
    plot = Image.new("RGB", (200, 100), "white")
    plot.paste(RED, (20, 20, 60, 90))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for picture in (plot, noise):
        raw = io.BytesIO()
        picture.save(raw, format="PNG")
        compacted = compact_png(base64.b64encode(raw.getvalue()).decode())
        assert (_picture(compacted) == np.asarray(picture)).all(), "compact_png changed a pixel"
    transparent = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    raw = io.BytesIO()
    transparent.save(raw, format="PNG")
    assert (_picture(compact_png(base64.b64encode(raw.getvalue()).decode())) == 255).all(), "not put on white"


@needs_chromium
def test_add_fallbacks_replaces_cdn_html_by_a_png_once() -> None:
    nb = _notebook_with_cdn_figure(go.Figure(go.Scatter(y=[1, 3, 2], line_color="rgb(255,0,0)", line_width=6)))
    assert store.add_fallbacks(nb) == 1
    data = nb.cells[1].outputs[0]["data"]
    assert set(data) == {store.PLOTLY, store.PNG, "text/plain"}
    assert _red_pixels(data[store.PNG]) > 100
    assert nb.cells[1].outputs[1]["text"] == "done\n"
    image = data[store.PNG]
    assert store.add_fallbacks(nb) == 0 and nb.cells[1].outputs[0]["data"][store.PNG] == image


@needs_chromium
def test_no_run_command_finishes_a_stored_notebook(tmp_path: Path) -> None:
    path = tmp_path / "stored.ipynb"
    nbformat.write(_notebook_with_cdn_figure(go.Figure(go.Bar(y=[1, 2]))), path)
    assert guarded(store.main, ["--no-run", str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    assert store.PNG in nb.cells[1].outputs[0]["data"] and "text/html" not in nb.cells[1].outputs[0]["data"]
    assert nb.metadata["kernelspec"]["display_name"] != "Python 3"  # the installed spec's name, e.g. "(ipykernel)"


def test_static_outputs_carry_no_html() -> None:
    (output,) = store.static_outputs([figure_json(go.Figure(go.Bar(y=[1]), layout=dict(title="bars")))])
    assert set(output["data"]) == {store.PLOTLY, "text/plain"} and output["data"]["text/plain"] == "Figure: bars"


def test_store_refuses_what_is_not_a_notebook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert guarded(store.main, ["--no-run", str(tmp_path / "missing.ipynb")]) == 2
    assert "not a notebook file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert guarded(store.main, ["--no-run", str(tmp_path / "notes.txt")]) == 2


@needs_chromium
def test_store_runs_a_notebook_and_stores_its_figure_with_a_png(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import plotly.graph_objects as go, plotly.io as pio\n"
        "pio.renderers.default = 'plotly_mimetype'\n"
        "go.Figure(go.Bar(y=[1, 2], marker_color='rgb(255,0,0)'), layout=dict(title='bars')).show()"),
        nbformat.v4.new_markdown_cell("### Exercise 1"),
        nbformat.v4.new_code_cell("raise RuntimeError('the solution ran')", metadata={"tags": ["solution"]})]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    store.store(path, timeout=120)  # raises CellExecutionError if the solution ran
    stored = nbformat.read(path, as_version=4)
    assert stored.cells[2].cell_type == "markdown" and "the solution ran" in stored.cells[2].source
    (output,) = stored.cells[0].outputs
    assert set(output["data"]) == {store.PLOTLY, store.PNG, "text/plain"}
    assert output["data"]["text/plain"] == "Figure: bars" and _red_pixels(output["data"][store.PNG]) > 1000


def test_hide_solutions_turns_solution_code_into_a_closed_markdown_block() -> None:
    nb = nbformat.v4.new_notebook()
    solution = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nanswer = 6 * 7\nprint(answer)\n",
                                         metadata={"tags": ["solution"], "jupyter": {"source_hidden": True}})
    solution.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    other = nbformat.v4.new_code_cell("x = 1")
    nb.cells = [nbformat.v4.new_markdown_cell("### Exercise 1"), solution, other]
    assert store.hide_solutions(nb) == 1
    hidden = nb.cells[1]
    assert hidden.cell_type == "markdown" and hidden.id == solution.id and hidden.metadata == {"tags": ["solution"]}
    assert hidden.source == ("<details><summary>Solution</summary>\n\n```python\nanswer = 6 * 7\nprint(answer)\n```"
                             "\n\n</details>")
    assert "outputs" not in hidden and nb.cells[2] is other
    assert store.hide_solutions(nb) == 0
    nbformat.validate(nb)
    with pytest.raises(ValueError, match="fence"):
        store.solution_markdown('text = """\n```\n"""')


def test_solution_code_reads_back_what_hide_solutions_wrote() -> None:
    nb = nbformat.v4.new_notebook()
    code = "for x in range(3):\n    print(x)"
    nb.cells = [nbformat.v4.new_code_cell(code, metadata={"tags": ["solution"]}), nbformat.v4.new_markdown_cell(
        "<details><summary>Solution</summary>\n\n```python\nx = 1\n```\n\n</details>")]
    store.hide_solutions(nb)
    assert store.solution_code(nb.cells[0]) == code
    raw = {**nb.cells[0], "source": nb.cells[0].source.splitlines(keepends=True)}  # as the .ipynb JSON holds it
    assert store.solution_code(raw) == code
    assert store.solution_code(nb.cells[1]) is None, "an untagged block is not a hidden solution"


def test_png_images_without_chromium_says_how_to_install_it(tmp_path: Path) -> None:
    assert png_images([], chromium=tmp_path / "none") == []  # nothing to draw: no browser needed
    with pytest.raises(FileNotFoundError, match="make chromium"):
        png_images([figure_json(go.Figure(go.Bar(y=[1])))], chromium=tmp_path / "none")
