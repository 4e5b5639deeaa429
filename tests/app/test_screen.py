"""What the first screen shows in Debian's Chromium (Playwright), in a 1500x1000 window: a test
image, the receptive-field count map computed on demand (with progress and cancel), titles
that fit their panels with a comparison and with an attribution, the threshold value of mode
global, and controls that scroll without moving the panels."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

pytest.importorskip("dash")
pytest.importorskip("playwright")

from tests.helpers import tiny_app_files
from vessel_lens.app import AppConfig, Server, countmap, create_app
from vessel_lens.app.testing import CHROMIUM_ARGS

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SIZE = 48
WAIT_MS = 60_000
GRAPHS = ("input", "map", "mask", "gradient", "zoom", "gradient-b", "zoom-b")

TITLES_INSIDE = """(graphs) => graphs.map(id => {
    const graph = document.getElementById(id);
    const title = graph.querySelector('.gtitle');
    if (!title || graph.offsetParent === null) { return null; }
    const outer = graph.getBoundingClientRect(), inner = title.getBoundingClientRect();
    const lines = Array.from(title.querySelectorAll('tspan.line')).map(l => l.textContent);
    const text = lines.length ? lines.join(' ') : title.textContent;
    return {id: id, text: text, right: inner.right, limit: outer.right,
            left: inner.left, start: outer.left};
}).filter(found => found !== null)"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; CI is set, so browser tests must run")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("app-screen")
    checkpoint, _, _ = tiny_app_files(root, seed=11, size=SIZE, count=3)
    config = AppConfig(checkpoints=[str(checkpoint)], data=str(root / "data"), compare="random")
    app = create_app(config)
    server = Server(app, "127.0.0.1", 0).start()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(server.url)
        page.wait_for_selector("#stats table")
        yield page, app.vessel_lens_state
        browser.close()
    server.stop()


TITLE_TEXT = """(graph) => {
    const title = document.querySelector('#' + graph + ' .gtitle');
    if (!title) { return ''; }
    const lines = Array.from(title.querySelectorAll('tspan.line'));
    return lines.length ? lines.map(line => line.textContent).join(' ') : title.textContent;
}"""
"""A panel's title as one line (plotly draws each line of a wrapped title as a tspan)."""


def wait_for_title(page, graph: str, part: str) -> None:
    page.wait_for_function(
        f"([graph, part]) => ({TITLE_TEXT})(graph).includes(part)", arg=[graph, part]
    )


def map_title(page) -> str:
    return page.evaluate(TITLE_TEXT, "graph-map")


def wait_for_count_map(page) -> None:
    page.wait_for_function(
        """() => {
            const plot = document.querySelector('#graph-map .js-plotly-plot');
            return plot && plot.data && plot.data.length && plot.data[0].type === 'heatmap'
                && document.querySelector('#map-status').innerText.includes('pixels computed');
        }"""
    )


def assert_titles_fit(page) -> list[str]:
    found = page.evaluate(TITLES_INSIDE, [f"graph-{g}" for g in GRAPHS])
    for title in found:
        assert title["right"] <= title["limit"] + 1, f"{title['id']}: {title['text']!r} is cut"
    return [title["text"] for title in found]


def test_the_first_screen_computes_the_count_map_of_a_test_image(served):
    page, state = served
    test_stem = state.dataset.splits["test"][0]
    assert page.locator("#image").inner_text().strip().startswith(f"{test_stem} · test")
    wait_for_count_map(page)
    assert "Receptive-field count: |g| > 1 % of each pixel's max |g|" in map_title(page)
    assert "one pixel per 2 x 2 cell (stride 2)" in map_title(page)
    status = page.locator("#map-status").inner_text()
    assert "576 pixels computed" in status and "vessel-lens erf" in status
    assert not page.locator("#map-cancel").is_visible()


def test_titles_fit_their_panels_with_a_comparison_and_an_attribution(served, tmp_path):
    page, _ = served
    page.wait_for_selector("#stats-b table")
    texts = assert_titles_fit(page)
    assert any(text.startswith("B: d p(") for text in texts)
    page.screenshot(path=str(tmp_path / "comparison.png"))
    page.locator("#follow input[value=click]").click()
    page.locator("#method").click()
    page.get_by_role("option", name="Saliency (Captum, on click)").click()
    box = page.locator("#graph-input .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
    wait_for_title(page, "graph-gradient-b", "B: saliency of")
    page.wait_for_function(
        "() => !document.querySelector('#pixel-panels').classList.contains('stale')"
    )
    texts = assert_titles_fit(page)
    assert any(text.startswith("A: saliency of pixel") for text in texts)
    page.locator("#method").click()
    page.get_by_role("option", name="Gradient (exact Jacobian row)").click()
    page.locator("#follow input[value=hover]").click()


def test_the_controls_scroll_without_moving_the_panels(served):
    page, _ = served
    page.locator("#export-png").scroll_into_view_if_needed()
    assert page.locator("#export-png").is_visible()
    assert page.evaluate("() => window.scrollY") == 0
    top = page.evaluate("() => document.getElementById('graph-input').getBoundingClientRect().top")
    assert 0 <= top < 100
    page.locator("#threshold-mode").scroll_into_view_if_needed()


def test_global_mode_states_its_threshold_value(served):
    page, state = served
    page.locator("#threshold-mode input[value=global]").click()
    page.locator("#global-compute").click()
    page.wait_for_function(
        "() => document.querySelector('#global-status').innerText.includes('threshold t = 1 %')",
        timeout=180_000,
    )
    view, _ = state.view(state.image_options()[0]["value"], "full")
    value = state.global_max("m0", view)[0]
    status = page.locator("#global-status").inner_text()
    assert f"threshold t = 1 % of it = {0.01 * value:.4g}" in status
    wait_for_title(page, "graph-map", "of the global max =")
    assert f"= {0.01 * value:.3g}" in map_title(page)
    page.locator("#threshold-mode input[value=pixel]").click()


def test_a_map_being_computed_shows_progress_and_can_be_cancelled(served, monkeypatch):
    page, _ = served
    release = threading.Event()
    original = countmap.compute_count_rows

    def held(engine, stride, between, progress, lock=None, chunk=countmap.CHUNK):
        def wait_then_go_on():
            release.wait(60)
            between()

        return original(engine, stride, wait_then_go_on, progress, lock, chunk)

    monkeypatch.setattr(countmap, "compute_count_rows", held)
    try:
        page.locator("#view-mode input[value=crop]").click()
        page.locator("#crop-size").fill("40")
        page.locator("#crop-size").press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#map-status').innerText.includes('computing')"
        )
        assert page.locator("#map-cancel").is_visible()
        assert "computing receptive-field counts" in page.locator("#graph-map").text_content()
        page.locator("#map-cancel").click()
        release.set()
        page.wait_for_function(
            "() => document.querySelector('#map-status').innerText.includes('cancelled')"
        )
        assert page.locator("#map-retry").is_visible()
        assert not page.locator("#map-cancel").is_visible()
    finally:
        release.set()
        monkeypatch.setattr(countmap, "compute_count_rows", original)
    page.locator("#map-retry").click()
    wait_for_count_map(page)
    assert "40x40" in page.locator("#graph-input .gtitle").text_content()
