"""Run notebooks in quick mode and store their outputs so that they read without a kernel.

    python -m indistill_lab.viz.store notebooks/01_data_models_and_retrieval.ipynb ...   (or `make notebooks`)

A widget needs a live kernel (or a stored widget state: plotly's widget carries its 5 MB script in each one),
so every widget output is stored as the static figures it showed: an explorer's figures from the static
mimetype it carries, a bare figure widget (a live training plot) from its last synced state. Each figure is
stored as plotly JSON (JupyterLab) and as HTML loading plotly.js from its CDN (nbviewer, HTML export).
"""
from __future__ import annotations

import argparse
import base64
import os
import time
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from .common import STATIC_FIGURES_MIME, figure_json

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PLOTLY = "application/vnd.plotly.v1+json"


def _figure_state(model: dict[str, Any]) -> go.Figure:
    """The figure a stored plotly widget model last synced, its binary buffers (numpy arrays plotly sends
    as {dtype, shape, buffer}) put back as lists."""
    state = model["state"]
    for buffer in model.get("buffers", []):
        *parents, _buffer = buffer["path"]
        holder = state
        for key in parents[:-1]:
            holder = holder[key]
        spec = holder[parents[-1]]
        array = np.frombuffer(base64.b64decode(buffer["data"]), dtype=spec["dtype"]).reshape(spec["shape"])
        holder[parents[-1]] = array.tolist()
    return go.Figure(data=state["_widget_data"], layout=state["_widget_layout"])


def static_outputs(figures: list[dict[str, Any]]) -> list[nbformat.NotebookNode]:
    """One display output per figure: plotly JSON, HTML with plotly.js from the CDN, and a readable text."""
    out = []
    for spec in figures:
        figure = go.Figure(spec)
        title = figure.layout.title.text or "figure"
        out.append(nbformat.v4.new_output("display_data", data={
            PLOTLY: spec,
            "text/html": pio.to_html(figure, include_plotlyjs="cdn", full_html=False),
            "text/plain": f"Figure: {title}",
        }))
    return out


def compact(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Replace every widget output by the static figures it showed and drop the stored widget state."""
    models = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if STATIC_FIGURES_MIME in data:
                outputs += static_outputs(data[STATIC_FIGURES_MIME]["figures"])
            elif WIDGET_VIEW in data and "_widget_data" in models.get(data[WIDGET_VIEW]["model_id"], {}).get(
                    "state", {}):
                outputs += static_outputs([figure_json(_figure_state(models[data[WIDGET_VIEW]["model_id"]]))])
            elif PLOTLY in data and "text/html" not in data:
                outputs += static_outputs([data[PLOTLY]])
            else:
                outputs.append(output)
        cell.outputs = outputs
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def store(path: Path, timeout: int = 600) -> float:
    """Execute one notebook (quick mode, in its folder) and write it back compacted; returns seconds taken."""
    from nbclient import NotebookClient

    os.environ["INDISTILL_QUICK"] = "1"
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(compact(nb), path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        seconds = store(path, args.timeout)
        print(f"{path}: ran in {seconds:.0f} s (quick mode), stored {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
