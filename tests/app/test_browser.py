"""The app in Debian's Chromium, driven by Playwright: hover, click, threshold, image switch,
uploads and exports, checked against what the server computes for the same pixel."""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("dash")
pytest.importorskip("playwright")

from tests.helpers import tiny_app_files
from vessel_lens.app import AppConfig, Server, create_app
from vessel_lens.app.pixel import analyse_pixel, parse_threshold
from vessel_lens.app.testing import CHROMIUM_ARGS

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SIZE = 48
WAIT_MS = 60_000


def require_chromium() -> None:
    if not CHROMIUM.exists():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the browser tests must run")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    require_chromium()
    root = tmp_path_factory.mktemp("app-browser")
    checkpoint, _, _ = tiny_app_files(root, seed=11, size=SIZE, count=3)
    config = AppConfig(checkpoints=[str(checkpoint)], data=str(root / "data"), port=0)
    app = create_app(config)
    server = Server(app, "127.0.0.1", 0).start()
    yield SimpleNamespace(server=server, state=app.vessel_lens_state, root=root)
    server.stop()


@pytest.fixture(scope="module")
def page(app_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
        )
        context = browser.new_context(
            viewport={"width": 1500, "height": 1100}, accept_downloads=True
        )
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(app_server.server.url)
        page.wait_for_selector("#stats table")
        yield page
        context.close()
        browser.close()


def plot_area(page, graph: str) -> dict:
    return page.locator(f"#{graph} .nsewdrag").first.bounding_box()


def pixel_position(page, graph: str, row: int, col: int, size: int = SIZE) -> tuple[float, float]:
    """Screen position of pixel (row, col) of a size x size panel (axes span -0.5..size-0.5)."""
    box = plot_area(page, graph)
    return (
        box["x"] + (col + 0.5) / size * box["width"],
        box["y"] + (row + 0.5) / size * box["height"],
    )


def stats(page, table: str = "#stats") -> dict[str, str]:
    rows = page.locator(f"{table} tr")
    return {
        rows.nth(i).locator("th").inner_text(): rows.nth(i).locator("td").inner_text()
        for i in range(rows.count())
    }


def wait_for_stat(page, name: str, pattern: str, table: str = "#stats") -> dict[str, str]:
    page.wait_for_function(
        """([table, name, pattern]) => {
            for (const row of document.querySelectorAll(table + ' tr')) {
                if (row.querySelector('th').innerText === name) {
                    return new RegExp(pattern).test(row.querySelector('td').innerText);
                }
            }
            return false;
        }""",
        arg=[table, name, pattern],
    )
    return stats(page, table)


def expected_numbers(app_server, key: str, row: int, col: int, fraction: float) -> dict:
    state = app_server.state
    view, _ = state.view(key, "full")
    return analyse_pixel(state, "m0", view, row, col, parse_threshold(fraction, "pixel")).numbers()


def test_hover_threshold_click_switch_upload_and_export(page, app_server, tmp_path):
    first = app_server.state.image_options()[0]
    second = app_server.state.image_options()[1]

    # hover a pixel: its numbers and its gradient map appear
    x, y = pixel_position(page, "graph-input", 10, 30)
    page.mouse.move(x, y)
    shown = wait_for_stat(page, "pixel (row, col)", r"^\(10, 30\)")
    expected = expected_numbers(app_server, first["value"], 10, 30, 0.01)
    assert shown["pixel count"] == str(expected["count"])
    assert shown["area"] == str(expected["area"])
    assert shown["x extent"] == str(expected["x_extent"])
    title = page.locator("#graph-gradient .gtitle").text_content()
    assert "d p(10, 30) / d input" in title
    shape, value = page.evaluate(
        """() => {
            const z = document.querySelector('#graph-gradient .js-plotly-plot')._fullData[0].z;
            return [[z.length, z[0].length], z[10][30]];
        }"""
    )
    view, _ = app_server.state.view(first["value"], "full")
    gradient = app_server.state.gradient("m0", view, 10, 30)[0].sum(0)
    assert shape == [SIZE, SIZE] and value == pytest.approx(float(gradient[10, 30]), rel=1e-6)

    # move the threshold: the count follows
    page.fill("#threshold-input", "0.2")
    page.press("#threshold-input", "Enter")
    shown = wait_for_stat(page, "threshold", r"20 % of the max")
    expected = expected_numbers(app_server, first["value"], 10, 30, 0.2)
    assert shown["pixel count"] == str(expected["count"])
    slider = page.locator("#threshold-slider [role=slider]").first
    assert float(slider.get_attribute("aria-valuenow")) == pytest.approx(np.log10(0.2), abs=0.01)

    # click mode: hovering no longer moves the pixel, clicking does
    page.get_by_text("click", exact=True).click()
    x, y = pixel_position(page, "graph-input", 40, 5)
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    assert stats(page)["pixel (row, col)"].startswith("(10, 30)")
    page.mouse.click(x, y)
    wait_for_stat(page, "pixel (row, col)", r"^\(40, 5\)")

    # switch image: the input title and the numbers follow, the pixel is kept
    page.locator("#image").click()
    page.get_by_role("option", name=second["label"]).click()
    stem = second["value"].split("/", 1)[1]
    page.wait_for_function(
        "stem => document.querySelector('#graph-input .gtitle')?.textContent.startsWith(stem)",
        arg=stem,
    )
    expected = expected_numbers(app_server, second["value"], 40, 5, 0.2)
    shown = wait_for_stat(page, "vessel probability", re.escape(f"{expected['probability']:.3f}"))
    assert shown["pixel count"] == str(expected["count"])

    # a bad upload is reported in the page, a good one becomes the current image
    page.set_input_files(
        "#upload input[type=file]",
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}],
    )
    page.wait_for_function(
        "() => document.querySelector('#upload-message').innerText.includes('cannot read image')"
    )
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(buffer, format="PNG")
    page.set_input_files(
        "#upload input[type=file]",
        files=[{"name": "ramp.png", "mimeType": "image/png", "buffer": buffer.getvalue()}],
    )
    page.wait_for_function(
        "() => document.querySelector('#graph-input .gtitle')?.textContent.startsWith('ramp-')"
    )

    # export the current pixel's numbers
    with page.expect_download() as download:
        page.click("#export-csv")
    saved = tmp_path / "pixel.csv"
    download.value.save_as(saved)
    row = next(csv.DictReader(saved.open()))
    assert row["image"].startswith("ramp-") and row["mode"] == "pixel"
    assert int(row["count"]) > 0 and float(row["fraction"]) == pytest.approx(0.2)

    shot = Path(os.environ.get("VESSEL_LENS_SCREENSHOTS", tmp_path)) / "app-browser-test.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def expected_colours(values: np.ndarray, limit: float) -> np.ndarray:
    """RGB of each value on the gradient panel's scale (linear between the stops in RGB)."""
    from vessel_lens.app.figures import DIVERGING

    stops = np.array([f for f, _ in DIVERGING])
    rgb = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for _, c in DIVERGING], float)
    where = np.clip((values + limit) / (2 * limit), 0, 1).ravel()
    return np.stack([np.interp(where, stops, rgb[:, ch]) for ch in range(3)], axis=1)


def painted_canvas(page, row: int, col: int) -> tuple[np.ndarray, dict, str]:
    """Wait for the overlay of pixel (row, col): its RGBA pixels, its box on screen, title."""
    page.wait_for_function(
        "pixel => document.querySelector('#graph-gradient canvas.vl-painted')"
        "?.dataset.pixel === pixel",
        arg=f"{row},{col}",
        timeout=20_000,
    )
    data, shape, title = page.evaluate(
        """() => {
            const canvas = document.querySelector('#graph-gradient canvas.vl-painted');
            const image = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
            return [Array.from(image.data), [canvas.height, canvas.width], canvas.dataset.title];
        }"""
    )
    # where it was laid (its style stays when Dash's redraw has hidden it since)
    box = page.locator("#graph-gradient canvas.vl-painted").evaluate(
        """c => {
            const r = c.parentNode.getBoundingClientRect(), s = c.style;
            return {x: r.x + parseFloat(s.left), y: r.y + parseFloat(s.top),
                    width: parseFloat(s.width), height: parseFloat(s.height)};
        }"""
    )
    return np.array(data, dtype=float).reshape(*shape, 4), box, title


def test_a_hover_paints_the_gradient_at_once_as_the_server_computes_it(page, app_server):
    from vessel_lens.app.figures import symmetric_limit
    from vessel_lens.app.pixel import CLIP

    page.goto(app_server.server.url)
    page.wait_for_selector("#stats table")
    page.wait_for_selector("#graph-gradient .gtitle")
    key = app_server.state.image_options()[0]["value"]
    view, _ = app_server.state.view(key, "full")
    for row, col in ((7, 40), (33, 12)):
        page.mouse.move(*pixel_position(page, "graph-input", row, col))
        rgba, box, title = painted_canvas(page, row, col)
        values = app_server.state.gradient("m0", view, row, col)[0].float().sum(0).numpy()
        assert rgba.shape[:2] == values.shape
        expected = expected_colours(values, symmetric_limit(values, CLIP))
        assert np.abs(rgba[..., :3].reshape(-1, 3) - expected).max() <= 3
        assert (rgba[..., 3] == 255).all()
        assert np.abs(values).max() > 0  # a map with colours, not only the zero white
        # laid exactly over the panel's plot area
        area = plot_area(page, "graph-gradient")
        for name in ("x", "y", "width", "height"):
            assert abs(box[name] - area[name]) <= 1.5, (name, box, area)
        assert title.startswith(f"d p({row}, {col}) / d input")
        # Dash's figure of the same pixel follows, with the same title, and the overlay hides
        page.wait_for_function(
            "title => document.querySelector('#graph-gradient .gtitle')?.textContent"
            ".replace(/\\s/g, '') === title.replace(/\\s/g, '')"
            " && document.querySelector('#graph-gradient canvas.vl-painted')"
            ".style.display === 'none'",
            arg=title,
        )
        wait_for_stat(page, "pixel (row, col)", rf"^\({row}, {col}\)")


def test_comparison_with_a_random_initialisation(page):
    page.locator("#compare").click()
    page.get_by_role("option", name=re.compile("^random init")).click()
    page.wait_for_selector("#compare-row", state="visible")
    shown = wait_for_stat(page, "pixel count", r"^\d+$", table="#stats-b")
    assert "random init" in page.locator("#stats-b").inner_text()
    assert int(shown["pixel count"]) >= 0


class HeldWorkers:
    """Every worker of the app's queue busy with a long computation until the block ends."""

    def __init__(self, state):
        self.queue, self.release, self.threads = state.work, threading.Event(), []

    def _hold(self) -> None:
        with self.queue.slot(0, "a long computation", patient=True):
            self.release.wait(WAIT_MS / 1000)

    def __enter__(self) -> HeldWorkers:
        for _ in range(self.queue.workers):
            self.threads.append(threading.Thread(target=self._hold))
            self.threads[-1].start()
        deadline = time.monotonic() + 10
        while self.queue.running < self.queue.workers and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(10)


def test_a_slow_method_shows_it_is_running_and_can_be_cancelled(page, app_server):
    first = app_server.state.image_options()[0]
    page.locator("#image").click()
    page.get_by_role("option", name=first["label"]).click()
    page.wait_for_function(
        "stem => document.querySelector('#graph-input .gtitle')?.textContent.startsWith(stem)",
        arg=first["value"].split("/", 1)[1],
    )
    page.get_by_text("hover", exact=True).click()  # a click then also moves the mouse there
    page.locator("#method").click()
    page.get_by_role("option", name=re.compile("^Integrated gradients")).click()
    x, y = pixel_position(page, "graph-input", 20, 21)
    with HeldWorkers(app_server.state):
        page.mouse.click(x, y)
        bar = page.locator("#task-bar")
        bar.wait_for(state="visible")
        assert "running" in bar.get_attribute("class")
        assert page.locator("#task-bar .spinner").is_visible()
        page.wait_for_function(
            "() => /computing integrated gradients .* [1-9][0-9]* s/"
            ".test(document.querySelector('#task-status').innerText)"
        )  # the elapsed time counts up while it waits
        assert "stale" in page.locator("#pixel-panels").get_attribute("class")
        page.click("#task-cancel")
        page.wait_for_function(
            "() => /^integrated gradients( for 2 models)?: cancelled after/"
            ".test(document.querySelector('#task-status').innerText)"
        )
        assert not page.locator("#task-cancel").is_visible()
        assert "stale" in page.locator("#pixel-panels").get_attribute("class")
    # the workers are free again: trying again computes it, and the result replaces the grey
    page.click("#task-retry")
    page.wait_for_function(
        "() => (document.querySelector('#graph-gradient .gtitle')?.textContent || '')"
        ".includes('integrated_gradients of pixel (20, 21)')"
    )
    page.wait_for_function(
        "() => !document.querySelector('#pixel-panels').classList.contains('stale')"
    )
    assert not page.locator("#task-bar").is_visible()
    assert page.locator("#message").inner_text() == ""
