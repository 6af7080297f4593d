"""Static PNG images of plotly figures, drawn offline by the system chromium.

A stored notebook shows these where no script runs (GitHub, nbconvert's HTML, a viewer without plotly):
`png_images` opens one headless chromium page (driven by Playwright), loads plotly.js from the `plotly`
package's own bundled file, refuses every network request, and asks plotly.js for each figure's PNG; each PNG
is then stored with a 256-colour palette where that changes no pixel visibly (`compact_png`): about a third of
the bytes, so that a notebook with its images is no larger than it was with plotly's CDN HTML.
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly
from PIL import Image

CHROMIUM = Path(os.environ.get("INDISTILL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DEFAULT_WIDTH = 900
"""Pixels across for a figure without a layout width (it fills its output area live): about a notebook's
output width in JupyterLab and on GitHub, so the image shows at the size the live figure has."""
DEFAULT_HEIGHT = 450
"""Pixels down for a figure without a layout height (plotly.js's own default)."""
PALETTE_MEAN_ERROR = 1.0
PALETTE_FAR_ERROR = 24
PALETTE_FAR_PIXELS = 0.005
"""A palette image is kept when its pixels differ from the full-colour one by under PALETTE_MEAN_ERROR (of 255)
on average and fewer than PALETTE_FAR_PIXELS of them by more than PALETTE_FAR_ERROR: plotly's figures have a
few hundred colours, and the pixels the palette moves are single anti-aliased edge pixels (measured on notebooks
00-07: mean error 0.00-0.22, at most 0.12% of pixels over 24). A photo-like figure keeps its full colours."""

# One figure to a PNG data URL, at its layout size (or the defaults above), one image pixel per CSS pixel so
# that the image shows at the live figure's size (as JupyterLab's plotly renderer stores its own).
TO_PNG_JS = """async ([figure, width, height]) => {
  const layout = figure.layout || {};
  return await Plotly.toImage({data: figure.data || [], layout, config: {}},
      {format: 'png', width: layout.width || width, height: layout.height || height, scale: 1});
}"""


def plotly_js() -> Path:
    """The plotly.js file bundled with the installed `plotly` package (the version its figures are written for)."""
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise FileNotFoundError(f"plotly.js is not at {path}: reinstall plotly (pip install --force-reinstall plotly).")
    return path


def png_images(figures: Sequence[dict[str, Any]], chromium: Path = CHROMIUM) -> list[str]:
    """Each plotly figure (plain JSON: {data, layout}) as a base64 PNG, drawn in one offline chromium page.

    Raises FileNotFoundError when chromium or Playwright is missing, saying how to install it.
    """
    if not figures:
        return []
    if not chromium.exists():
        raise FileNotFoundError(f"no chromium at {chromium}: install Debian's (`make chromium`, or `apt-get install "
                                "chromium` as root) or set INDISTILL_CHROMIUM to a chromium binary.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise FileNotFoundError("Playwright is not installed: pip install -e '.[dev]' (it drives the system "
                                "chromium; no browser is downloaded).") from exc
    images = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.abort())  # offline: nothing is fetched, from a CDN or elsewhere
            page.set_content("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body></body></html>")
            page.add_script_tag(content=plotly_js().read_text(encoding="utf-8"))
            for figure in figures:
                url = page.evaluate(TO_PNG_JS, [figure, DEFAULT_WIDTH, DEFAULT_HEIGHT])
                prefix = "data:image/png;base64,"
                if not url.startswith(prefix):
                    raise RuntimeError(f"plotly.js returned no PNG for the figure {_title(figure)!r}: {url[:80]!r}")
                images.append(compact_png(url[len(prefix):]))
        finally:
            browser.close()
    return images


def compact_png(image: str) -> str:
    """A base64 PNG on white, with a 256-colour palette when that is faithful (see PALETTE_MEAN_ERROR), else
    losslessly re-compressed."""
    decoded = Image.open(io.BytesIO(base64.b64decode(image))).convert("RGBA")
    on_white = Image.new("RGBA", decoded.size, "white")
    on_white.alpha_composite(decoded)
    full = on_white.convert("RGB")
    palette = full.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    error = np.abs(np.asarray(palette.convert("RGB"), dtype=int) - np.asarray(full, dtype=int)).max(axis=2)
    faithful = error.mean() < PALETTE_MEAN_ERROR and (error > PALETTE_FAR_ERROR).mean() < PALETTE_FAR_PIXELS
    out = io.BytesIO()
    (palette if faithful else full).save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def _title(figure: dict[str, Any]) -> str:
    title = figure.get("layout", {}).get("title", "")
    return title.get("text", "") if isinstance(title, dict) else str(title)
