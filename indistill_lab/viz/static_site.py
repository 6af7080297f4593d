"""The course as a static website, built from the stored notebooks without running them (`make book`).

    python -m indistill_lab.viz.static_site            # -> book/_build/html/index.html
    python -m indistill_lab.viz.static_site --out DIR --notebooks notebooks/00_*.ipynb --no-sliders

Sphinx with MyST-NB (`nb_execution_mode = "off"`, configuration in book/conf.py) renders staged copies of the
notebooks (the stored files are only read). In each copy every stored plotly figure becomes a block that the
site's own `indistill.js` draws with a local plotly.js (the one bundled with the `plotly` package), showing the
stored PNG until then and wherever plotly.js cannot run; and after each explorer cell listed in
`site_explorers.SITE_EXPLORERS` comes a client-side slider over the explorer's states, computed here. No file
of the site is fetched from the network: plotly.js, MathJax (one file, from the `sphinx-mathjax-offline` package)
and the sliders' states are in the site's _static folder.
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import nbformat

from ..config import REPO_ROOT
from ..errors import UsageError, cli
from .site_explorers import SITE_EXPLORERS, SiteSlider
from .sliders import explorer_states, slider_markup, slider_script
from .common import setup_notebook
from .snapshot import plotly_js

BOOK_DIR = REPO_ROOT / "book"
DEFAULT_OUT = BOOK_DIR / "_build"
PLOTLY = "application/vnd.plotly.v1+json"
PNG = "image/png"
STAMP = ".indistill-built"
"""Touched in the html folder at the end of each build (Sphinx rewrites only changed pages): tests/test_book.py
rebuilds a site older than its sources."""


def figure_html(bundle: dict[str, Any]) -> str:
    """One stored figure as the site shows it: its PNG (if stored) and its plotly JSON, which indistill.js draws
    over the PNG once plotly.js has drawn it."""
    figure = bundle[PLOTLY]
    title = ((figure.get("layout") or {}).get("title") or {})
    title = title.get("text", "") if isinstance(title, dict) else str(title)
    alt = html.escape(title or "figure", quote=True)
    png = bundle.get(PNG)
    image = (f'<img class="indistill-png" alt="{alt}" src="data:image/png;base64,{"".join(png).strip()}">'
             if png else "")
    spec = json.dumps(figure, separators=(",", ":")).replace("</", "<\\/")
    return (f'<div class="indistill-figure">{image}'
            f'<script type="application/json" class="indistill-plotly">{spec}</script></div>')


def _explorer_cell(nb: nbformat.NotebookNode, explorer: SiteSlider) -> int:
    """Index of the code cell that shows `explorer` (its source holds the marker); ValueError when none does."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and explorer.marker in cell.source:
            return index
    raise ValueError(f"notebook {explorer.notebook} has no code cell with {explorer.marker!r}: update "
                     f"'{explorer.name}' in indistill_lab/viz/site_explorers.py to the notebook's explorer cell.")


def stage_notebook(nb: nbformat.NotebookNode, explorers: Sequence[SiteSlider] = ()) -> nbformat.NotebookNode:
    """The copy of a stored notebook that the site renders: each plotly figure as `figure_html` (its CDN HTML and
    PNG dropped from the bundle) and, after each explorer's cell, a cell holding its slider."""
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            if PLOTLY in data:
                output["data"] = {"text/html": figure_html(data), "text/plain": data.get("text/plain", "figure")}
    for explorer in sorted(explorers, key=lambda e: -_explorer_cell(nb, e)):  # from the end: indices stay valid
        source = f"{explorer.intro}\n\n```{{raw}} html\n{slider_markup(explorer.name)}```\n"
        cell = nbformat.v4.new_markdown_cell(source, metadata={"tags": ["site-slider"]})
        cell.id = f"site-slider-{explorer.name}"  # the same staged file every build (Sphinx skips unchanged pages)
        nb.cells.insert(_explorer_cell(nb, explorer) + 1, cell)
    return nb


def _write_if_changed(path: Path, text: str) -> None:
    """Write `text` unless `path` already holds it (Sphinx then rebuilds only the pages that changed)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def mathjax_js() -> Path:
    """MathJax 3's tex-svg.js (one file: TeX input, SVG output with its fonts inside) as the `sphinx-mathjax-offline`
    package ships it."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        found = [f.locate() for f in files("sphinx-mathjax-offline") or () if f.name == "tex-svg.js"]
    except PackageNotFoundError:
        found = []
    if not found:
        raise FileNotFoundError("MathJax for the site (the sphinx-mathjax-offline package, in the `book` extra) is "
                                "not installed: pip install -e '.[book]' (or make book).")
    return Path(found[0])


def build(out: Path = DEFAULT_OUT, notebooks: Sequence[Path] | None = None, sliders: bool = True) -> Path:
    """Build the site into `out`/html (staged sources in `out`/src) and return the html folder."""
    from sphinx.cmd.build import build_main

    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb")) if notebooks is None else list(notebooks)
    src, site = Path(out) / "src", Path(out) / "html"
    for stale in set(src.glob("*.ipynb")) - {src / p.name for p in notebooks}:
        stale.unlink()
    _write_if_changed(src / "index.md", (BOOK_DIR / "index.md").read_text(encoding="utf-8"))
    states = {}
    setup_notebook()  # the explorers draw with the notebooks' template and seed
    for path in notebooks:
        mine = [e for e in SITE_EXPLORERS if e.notebook == path.stem] if sliders else []
        nb = stage_notebook(nbformat.read(path, as_version=4), mine)
        _write_if_changed(src / path.name, nbformat.writes(nb))
        for explorer in mine:
            built, controls, start = explorer.build()
            states[explorer.name] = explorer_states(built, controls, start)
    status = build_main(["-b", "html", "-q", "-c", str(BOOK_DIR), str(src), str(site)])
    if status:
        raise RuntimeError(f"sphinx-build failed (status {status}); its messages are above.")
    static = site / "_static"
    shutil.copy2(plotly_js(), static / "plotly.min.js")
    (static / "mathjax").mkdir(exist_ok=True)
    shutil.copy2(mathjax_js(), static / "mathjax" / "tex-svg.js")
    for name, state in states.items():
        _write_if_changed(static / "sliders" / f"{name}.js", slider_script(name, state))
    (site / STAMP).touch()
    return site


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build folder (default book/_build)")
    parser.add_argument("--notebooks", nargs="+", type=Path, help="these notebooks only (default: all)")
    parser.add_argument("--no-sliders", action="store_true", help="skip the client-side sliders (no models loaded)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks or () if p.suffix != ".ipynb" or not p.is_file()]
    if missing:
        raise UsageError(f"--notebooks: not a notebook file: {', '.join(missing)} (give paths like "
                         "notebooks/00_*.ipynb).")
    start = time.perf_counter()
    site = build(args.out, args.notebooks, not args.no_sliders)
    print(f"built {site / 'index.html'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    cli(main)
