"""Run notebooks in quick mode and store their outputs so that they read without a kernel.

    python -m indistill_lab.viz.store notebooks/01_data_models_and_retrieval.ipynb ...   (or `make notebooks`)
    python -m indistill_lab.viz.store --no-run notebooks/08_*.ipynb   (or `make finish NOTEBOOKS=...`)
        runs nothing: adds the PNGs, hides the solutions and stores the kernelspec (`finish`), in seconds

A widget needs a live kernel (or a stored widget state: plotly's widget carries its 5 MB script in each one),
so every widget output is stored as the static figures it showed: an explorer's figures from the static
mimetype it carries, a bare figure widget (a live training plot) from its last synced state. Each figure is
stored as plotly JSON (JupyterLab draws it live) with a PNG of it in the same output (GitHub,
nbconvert's HTML and any viewer without scripts show that; JupyterLab shows it until the pointer enters the
figure, and then draws it live). No HTML is stored with a figure: plotly's HTML loads plotly.js from a CDN,
which GitHub and an offline viewer never run (a blank box), and HTML carrying plotly.js itself would add 4.6 MB
to every notebook.
"""
from __future__ import annotations

import argparse
import base64
import os
import time
from pathlib import Path
from typing import Any, Mapping

import nbformat
import numpy as np
import plotly.graph_objects as go

from ..errors import UsageError, cli, positive
from .common import STATIC_FIGURES_MIME, figure_json
from .snapshot import png_images

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PLOTLY = "application/vnd.plotly.v1+json"
PNG = "image/png"
HTML = "text/html"
SOLUTION_OPEN = "<details><summary>Solution</summary>\n\n```python\n"
SOLUTION_CLOSE = "\n```\n\n</details>"


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
    """One display output per figure: plotly JSON and a readable text (`add_fallbacks` adds its PNG)."""
    out = []
    for spec in figures:
        title = go.Figure(spec).layout.title.text or "figure"
        out.append(nbformat.v4.new_output("display_data", data={PLOTLY: spec, "text/plain": f"Figure: {title}"}))
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
            elif PLOTLY in data:
                outputs += static_outputs([data[PLOTLY]])
            else:
                outputs.append(output)
        cell.outputs = outputs
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def add_fallbacks(nb: nbformat.NotebookNode) -> int:
    """Give every stored plotly figure a PNG of itself in its output (drawn offline by chromium) and drop the
    HTML stored beside it (plotly.js from a CDN: blank without scripts or network); returns how many PNGs were
    added. A figure that already has its PNG keeps it, so running this twice changes nothing."""
    bundles = [output["data"] for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
               if PLOTLY in output.get("data", {})]
    for data in bundles:
        data.pop(HTML, None)
    missing = [data for data in bundles if PNG not in data]
    for data, image in zip(missing, png_images([data[PLOTLY] for data in missing])):
        data[PNG] = image
    return len(missing)


def match_kernelspec(nb: nbformat.NotebookNode, name: str = "python3") -> None:
    """Store the kernelspec JupyterLab writes when it starts the kernel (name, display name, language): any other
    (a hand-written "Python 3" for the installed "Python 3 (ipykernel)") is rewritten on opening, and marks the
    notebook modified before anything ran."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(name)
    nb.metadata["kernelspec"] = {"display_name": spec.display_name, "language": spec.language, "name": name}


def solution_markdown(code: str) -> str:
    """An exercise's solution as markdown: its code in a closed <details> block, shown when the learner opens it
    (GitHub, JupyterLab, nbconvert) and never run by Run All. nbval directives are dropped (nothing runs it)."""
    lines = [line for line in code.strip("\n").splitlines() if not line.lstrip().startswith("# NBVAL_")]
    if any(line.lstrip().startswith("```") for line in lines):
        raise ValueError(f"a solution's code holds a ``` fence, which would end its markdown block: {code[:80]!r}")
    return SOLUTION_OPEN + "\n".join(lines) + SOLUTION_CLOSE


def solution_code(cell: Mapping[str, Any]) -> str | None:
    """The code of a hidden solution cell (`solution_markdown`'s block in a markdown cell tagged 'solution'), or
    None when the cell is not one. Takes a cell as nbformat reads it or as raw JSON (source as a list of lines)."""
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    if cell["cell_type"] != "markdown" or "solution" not in cell["metadata"].get("tags", []):
        return None
    if not (source.startswith(SOLUTION_OPEN) and source.endswith(SOLUTION_CLOSE)):
        return None
    return source[len(SOLUTION_OPEN):-len(SOLUTION_CLOSE)]


def hide_solutions(nb: nbformat.NotebookNode) -> int:
    """Turn every code cell tagged 'solution' into a markdown cell tagged 'solution' holding its code in a closed
    <details> block (`solution_markdown`): Run All neither runs a solution, nor shows its output, nor lets it
    change what later cells see. Returns how many cells were turned."""
    turned = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
            markdown = nbformat.v4.new_markdown_cell(solution_markdown(cell.source), metadata={"tags": ["solution"]})
            markdown.id = cell.get("id", markdown.id)
            nb.cells[index] = markdown
            turned += 1
    return turned


def finish(nb: nbformat.NotebookNode) -> int:
    """What every stored notebook gets, run or not: solutions hidden (`hide_solutions`), the kernelspec
    JupyterLab would write (`match_kernelspec`) and PNG fallbacks (`add_fallbacks`; returns how many were
    added)."""
    hide_solutions(nb)
    match_kernelspec(nb)
    return add_fallbacks(nb)


def store(path: Path, timeout: int = 600) -> float:
    """Execute one notebook (quick mode, in its folder; its solutions hidden first, so they never run) and
    write it back compacted and finished; returns seconds taken."""
    from nbclient import NotebookClient

    os.environ["INDISTILL_QUICK"] = "1"
    nb = nbformat.read(path, as_version=4)
    hide_solutions(nb)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nb = compact(nb)
    finish(nb)
    nbformat.write(nb, path)
    return seconds


def store_without_running(path: Path) -> int:
    """`finish` a stored notebook without running it; returns how many PNG fallbacks were added."""
    nb = nbformat.read(path, as_version=4)
    added = finish(nb)
    nbformat.write(nb, path)
    return added


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    parser.add_argument("--no-run", action="store_true",
                        help="run nothing, only finish the stored file: a PNG for every stored figure that lacks one "
                             "(CDN HTML dropped), solutions hidden, the installed kernelspec")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if p.suffix != ".ipynb" or not p.is_file()]
    if missing:
        raise UsageError(f"not a notebook file: {', '.join(missing)} (give paths like notebooks/00_*.ipynb).")
    positive("--timeout", args.timeout)
    for path in args.notebooks:
        before = path.stat().st_size
        if args.no_run:
            added = store_without_running(path)
            print(f"{path}: {added} PNG fallbacks added, {before / 1e6:.2f} -> {path.stat().st_size / 1e6:.2f} MB")
        else:
            seconds = store(path, args.timeout)
            print(f"{path}: ran in {seconds:.0f} s (quick mode), stored {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    cli(main)
