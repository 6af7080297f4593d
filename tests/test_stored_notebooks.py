"""The stored notebooks read without a kernel: no raw widget repr, no widget view without its state, no error,
no empty figure, every figure with a PNG of itself (what GitHub shows), no script from a CDN, small enough to
browse, and stored as JupyterLab writes them (`make notebooks` stores them; `make fallbacks` adds the PNGs
to a notebook stored without them)."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from PIL import Image

from indistill_lab.viz.snapshot import DEFAULT_HEIGHT, DEFAULT_WIDTH

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
RAW_REPRS = ("VBox(", "HBox(", "FigureWidget(", "<bound method", "Error displaying widget")
MAX_BYTES = 4_000_000
DATA_KEYS = ("x", "y", "z", "values", "node", "link", "lat", "r")
PLOTLY = "application/vnd.plotly.v1+json"
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)
RESTORE = "python -m indistill_lab.viz.store --no-run"


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _has_data(trace: dict[str, Any]) -> bool:
    return any(trace.get(key) not in (None, [], {}, "") for key in DATA_KEYS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_stored_outputs_are_readable_without_a_kernel(path: Path) -> None:
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB: store it compactly"
    nb = json.loads(path.read_text())
    state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    problems = []
    for number, cell in enumerate(nb["cells"], start=1):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                problems.append(f"cell {number}: stored error {output['ename']}")
            texts = [_text(output.get("text", ""))] + [_text(v) for k, v in output.get("data", {}).items()
                                                       if k.startswith("text/")]
            problems += [f"cell {number}: raw repr {raw!r}" for raw in RAW_REPRS if any(raw in t for t in texts)]
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view and view["model_id"] not in state:
                problems.append(f"cell {number}: widget view without stored state (shows 'model not found')")
            figure = output.get("data", {}).get("application/vnd.plotly.v1+json")
            if figure is not None and not any(_has_data(t) for t in figure.get("data", [])):
                problems.append(f"cell {number}: empty figure {figure.get('layout', {}).get('title')}")
    assert not problems, f"{path.name}: {problems}"


def _png_problem(image: str, figure: dict[str, Any]) -> str:
    """What is wrong with a figure's stored PNG ('' when it is a picture of the figure's size, not blank)."""
    try:
        picture = Image.open(io.BytesIO(base64.b64decode(image)))
        picture.load()
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the finding
        return f"a PNG that does not decode ({exc})"
    layout = figure.get("layout", {})
    size = (layout.get("width") or DEFAULT_WIDTH, layout.get("height") or DEFAULT_HEIGHT)
    if picture.size != size:
        return f"a PNG of {picture.size[0]}x{picture.size[1]} for a figure of {size[0]}x{size[1]}: not this figure's"
    if picture.convert("RGB").getcolors(maxcolors=1) is not None:
        return "a blank PNG (one colour)"
    return ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_every_stored_figure_has_a_static_fallback_and_no_cdn_script(path: Path) -> None:
    nb = json.loads(path.read_text())
    problems = []
    for number, cell in enumerate(nb["cells"], start=1):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            problems += [f"cell {number}: {key} loads a script from the network" for key, value in data.items()
                         if key.startswith("text/") and REMOTE_SCRIPT.search(_text(value))]
            if PLOTLY not in data:
                continue
            if "image/png" not in data:
                problems.append(f"cell {number}: figure without a PNG (blank on GitHub)")
            elif problem := _png_problem(data["image/png"], data[PLOTLY]):
                problems.append(f"cell {number}: {problem}")
    assert not problems, f"{path.name}: {problems}; run {RESTORE} {path.relative_to(path.parents[1])}"


def test_the_png_check_catches_blank_and_foreign_images() -> None:
    def encoded(picture: Image.Image) -> str:
        out = io.BytesIO()
        picture.save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()

    figure = {"data": [{"type": "bar", "y": [1]}], "layout": {"height": 200}}
    drawn = Image.new("RGB", (DEFAULT_WIDTH, 200), "white")
    drawn.paste((31, 119, 180), (100, 50, 140, 190))
    assert _png_problem(encoded(drawn), figure) == ""
    assert "blank" in _png_problem(encoded(Image.new("RGB", (DEFAULT_WIDTH, 200), "white")), figure)
    assert "not this figure's" in _png_problem(encoded(drawn.resize((DEFAULT_WIDTH, 300))), figure)
    assert "does not decode" in _png_problem(base64.b64encode(b"not a png").decode(), figure)


def test_the_remote_script_check_catches_plotly_cdn_html() -> None:
    import plotly.graph_objects as go

    html = go.Figure(go.Bar(y=[1, 2])).to_html(include_plotlyjs="cdn", full_html=False)
    assert REMOTE_SCRIPT.search(html)
    assert not REMOTE_SCRIPT.search("<div>no script</div><script>var x = 1;</script>")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_stored_kernelspec_is_the_one_jupyterlab_writes(path: Path) -> None:
    """JupyterLab rewrites another kernelspec (e.g. "Python 3" for "Python 3 (ipykernel)") when it starts the
    kernel, which marks the notebook modified before anything ran."""
    from jupyter_client.kernelspec import KernelSpecManager

    stored = json.loads(path.read_text())["metadata"]["kernelspec"]
    spec = KernelSpecManager().get_kernel_spec(stored["name"])
    assert (stored["display_name"], stored["language"]) == (spec.display_name, spec.language), \
        f"{path.name}: kernelspec {stored} is not the installed one; {RESTORE} {path.relative_to(path.parents[1])}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_stored_notebook_is_what_jupyter_writes(path: Path) -> None:
    """Read and written back by nbformat (as JupyterLab saves it), the file is unchanged: no key order,
    indentation, minor version or missing cell id for an editor to normalise when it opens or saves it."""
    text = path.read_text()
    assert nbformat.writes(nbformat.reads(text, as_version=nbformat.NO_CONVERT)) + "\n" == text, \
        f"{path.name} is not stored as nbformat writes it: {RESTORE} {path.relative_to(path.parents[1])} rewrites it"
