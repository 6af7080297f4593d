"""The course website (`make book`) opened offline in chromium, page by page: every figure draws (a plotly
figure with traces, or its stored PNG), every client-side slider redraws when each of its controls moves, no
console errors, every formula typeset by MathJax, no request leaves the machine (everything that is not file:// is aborted and counted), and every
internal link points at a page (and anchor) of the site.

Uses the built site when it is newer than the notebooks and the site's sources (`make book-test` builds it
first), or the one named by INDISTILL_BOOK_SITE, and builds it into a temporary folder otherwise. Skipped, with the reason, without the `book` extra,
Playwright or chromium.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

from indistill_lab.viz.site_explorers import SITE_EXPLORERS

PLOTLY = "application/vnd.plotly.v1+json"

REPO = Path(__file__).resolve().parents[1]
BUILT = REPO / "book" / "_build" / "html"
GIVEN = os.environ.get("INDISTILL_BOOK_SITE")  # a built site's html folder to test as it is
SOURCES = [*(REPO / "notebooks").glob("*.ipynb"), *(REPO / "book").glob("*.*"), *(REPO / "book" / "_static").glob("*"),
           *(REPO / "indistill_lab" / "viz").glob("s*.py")]
CHROMIUM = Path(os.environ.get("INDISTILL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# What a page shows once its scripts ran: each stored figure drawn by plotly.js with traces, or failing that
# its PNG loaded; each slider's state index and traces.
FIGURES_JS = """() => [...document.querySelectorAll('.indistill-figure')].map((holder, i) => {
  const gd = holder.querySelector('.js-plotly-plot');
  const img = holder.querySelector('img.indistill-png');
  return {i, plotly: !!(gd && gd.data && gd.data.length && holder.classList.contains('drawn')
                        && gd.querySelector('.main-svg')),
          png: !!(img && img.complete && img.naturalWidth > 0)};
})"""
SLIDER_JS = """(holder) => ({frame: holder.dataset.frame,
  plots: [...holder.querySelectorAll('.js-plotly-plot')].map(gd => JSON.stringify(gd.data)),
  status: holder.querySelector('.indistill-status').innerHTML})"""


def _stale(site: Path) -> bool:
    from indistill_lab.viz.static_site import STAMP

    stamp = site / STAMP
    return not stamp.is_file() or any(p.stat().st_mtime > stamp.stat().st_mtime for p in SOURCES)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinx", reason="book test SKIPPED: the `book` extra is not installed (make book installs "
                                         "it; or pip install -e '.[book]')")
    pytest.importorskip("myst_nb", reason="book test SKIPPED: myst-nb (the `book` extra) is not installed (make book)")
    if GIVEN:
        return Path(GIVEN)
    if not _stale(BUILT):
        return BUILT
    from indistill_lab.viz.static_site import build

    return build(tmp_path_factory.mktemp("book"))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"book test SKIPPED: no chromium at {CHROMIUM} (make chromium installs Debian's package; or set "
                    "INDISTILL_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="book test SKIPPED: Playwright is not installed "
                                                                 "(the `dev` extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _ids(page_file: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page_file.read_text(encoding="utf-8")))


def test_every_page_draws_offline_its_sliders_redraw_and_its_links_resolve(browser, site: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    pages = sorted(site.glob("*.html"))
    lessons = {p.stem for p in pages}
    missing = [nb.stem for nb in (REPO / "notebooks").glob("*.ipynb") if nb.stem not in lessons]
    assert not missing, f"notebooks without a page: {missing}"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside, errors = [], []

    def offline(route) -> None:
        url = urlparse(route.request.url)
        if url.scheme == "file" or url.hostname in ("localhost", "127.0.0.1"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    problems, figures, sliders, links = [], 0, 0, 0
    for path in pages:
        errors.clear()
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_function("() => [...document.querySelectorAll('.indistill-figure')].every(h => "
                               "h.classList.contains('drawn') || h.querySelector('img')) && [...document"
                               ".querySelectorAll('.indistill-slider')].every(h => h.dataset.frame !== undefined)",
                               timeout=30_000)
        try:  # MathJax typesets each formula (span.math, div.math) into an mjx-container, after the page loaded
            page.wait_for_function("() => !document.querySelector('.math:not(:has(mjx-container))')", timeout=20_000)
        except PlaywrightTimeout:
            problems.append(f"{path.name}: math left as TeX source (MathJax did not typeset it)")
        for figure in page.evaluate(FIGURES_JS):
            figures += 1
            if not (figure["plotly"] or figure["png"]):
                problems.append(f"{path.name}: figure {figure['i'] + 1} drew nothing (no traces, no PNG)")
        for holder in page.query_selector_all(".indistill-slider"):
            sliders += 1
            name = holder.get_attribute("data-slider")
            for k, control in enumerate(holder.query_selector_all("input[type=range], select")):
                before = holder.evaluate(SLIDER_JS)
                if control.evaluate("e => e.tagName") == "SELECT":
                    options = control.evaluate("e => [...e.options].map(o => o.value)")
                    control.select_option(next(v for v in options if v != control.input_value()))
                else:
                    control.evaluate("e => { e.value = String(Number(e.value) === Number(e.max) ? 0 : Number(e.max));"
                                     " e.dispatchEvent(new Event('input')); }")
                page.wait_for_function("([h, f]) => h.dataset.frame !== f", arg=[holder, before["frame"]],
                                       timeout=10_000)
                after = holder.evaluate(SLIDER_JS)
                if after["plots"] == before["plots"] or not all(after["plots"]):
                    problems.append(f"{path.name}: slider {name}, control {k + 1} moved but its figures did not change")
        for href in page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)"):
            url, fragment = urldefrag(href)
            if urlparse(url).scheme != "file":
                continue
            links += 1
            target = Path(unquote(urlparse(url).path))
            if not target.is_file():
                problems.append(f"{path.name}: link to missing {target.name}")
            elif fragment and target.suffix == ".html" and unquote(fragment) not in _ids(target):
                problems.append(f"{path.name}: link to missing anchor {target.name}#{fragment}")
        problems += [f"{path.name}: console {e}" for e in errors]
    page.close()
    problems += [f"request to the network: {url}" for url in sorted(set(outside))]
    assert not problems, "\n".join(problems)
    stored = sum(PLOTLY in output.get("data", {}) for nb in (REPO / "notebooks").glob("*.ipynb")
                 for cell in json.loads(nb.read_text())["cells"] for output in cell.get("outputs", []))
    assert figures == stored, f"{figures} figures on the pages, {stored} stored in the notebooks"
    assert sliders == len([e for e in SITE_EXPLORERS if (REPO / "notebooks" / f"{e.notebook}.ipynb").is_file()])
    assert links > len(pages)
