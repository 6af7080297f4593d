"""Every stored notebook as GitHub shows it: nbconvert's HTML of the file, opened in chromium with JavaScript
off and no network, shows each figure output as an image that loaded (a figure stored as plotly JSON or CDN
HTML alone shows as an empty box). Skipped, saying why, without chromium or Playwright."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from indistill_lab.viz.snapshot import CHROMIUM, CHROMIUM_ARGS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SHOTS = REPO / "test-artifacts" / "static"
FIGURE_KEYS = ("application/vnd.plotly.v1+json", "image/png", "image/svg+xml", "image/jpeg")
# Per output area: how many images it holds and how many of them loaded with a size.
IMAGES_JS = """() => [...document.querySelectorAll('.jp-OutputArea-output')].map(o => {
  const images = [...o.querySelectorAll('img, svg')];
  return images.filter(i => i.tagName === 'svg' || (i.complete && i.naturalWidth > 0)).length; })"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """A chromium page with JavaScript off that fetches nothing but data: URLs."""
    if not CHROMIUM.exists():
        pytest.skip(f"static rendering test SKIPPED: no chromium at {CHROMIUM} (make chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="static rendering test SKIPPED: no Playwright "
                                                                 "(pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(java_script_enabled=False, viewport={"width": 1100, "height": 900}).new_page()
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("data:") else route.abort())
        yield page
        browser.close()


def _figure_outputs(path: Path) -> int:
    cells = json.loads(path.read_text())["cells"]
    return sum(any(key in output.get("data", {}) for key in FIGURE_KEYS)
               for cell in cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_every_figure_shows_without_scripts(page: Any, path: Path) -> None:
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_filename(str(path))
    page.set_content(html, wait_until="load")
    assert page.evaluate("() => typeof window.require") == "undefined", "a page script ran: JavaScript is not off"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{path.stem}.png", full_page=True)
    shown = sum(count > 0 for count in page.evaluate(IMAGES_JS))
    expected = _figure_outputs(path)
    assert expected > 0, f"{path.name} stores no figure"
    assert shown == expected, (f"{path.name}: {expected - shown} of {expected} figure outputs show nothing without "
                               f"scripts (see {SHOTS.relative_to(REPO)}); python -m indistill_lab.viz.store "
                               f"--no-run {path.relative_to(REPO)} adds their PNGs")
