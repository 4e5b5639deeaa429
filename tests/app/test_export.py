"""The PNG export holds what the page shows: the panels' titles in full, a colour bar on every
map, and a "|g| > t" panel that shows the thresholded map it names."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest

pytest.importorskip("dash")

from PIL import Image

from tests.helpers import tiny_app_files
from vessel_lens.app import export, handlers
from vessel_lens.app.config import AppConfig
from vessel_lens.app.figures import zoom_window
from vessel_lens.app.layers import discover_layers
from vessel_lens.app.methods import discover_methods
from vessel_lens.app.pixel import gradient_title, parse_threshold, stats_rows, zoom_title
from vessel_lens.app.state import AppState

SIZE = 40


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """A state, a view, both models' analyses of one pixel and the computed map panel."""
    root = tmp_path_factory.mktemp("export")
    checkpoint, _, _ = tiny_app_files(root, seed=5, size=SIZE, count=1)
    discover_methods()
    discover_layers()
    config = AppConfig(checkpoints=[str(checkpoint)], data=str(root / "data"), compare="random")
    state = AppState(config)
    view, _ = state.view(state.image_options()[0]["value"], "full")
    threshold = parse_threshold(0.05, "pixel")
    deadline = time.monotonic() + 120
    while (result := handlers.map_outputs(state, view, "significant", threshold, "m0")[1]).task:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    outputs = handlers.pixel_outputs(
        state, view, (17, 22), "m0", "random", threshold, "gradient", "pixel", ["field", "bbox"]
    )
    yield state, view, outputs.analyses, result
    state.shutdown(wait=10)


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_the_png_has_the_pages_panels_titles_and_colour_bars(shown):
    state, view, analyses, result = shown
    figure = export.panels_figure(
        np.zeros((SIZE, SIZE, 3), np.uint8),
        state.probability("m0", view),
        analyses,
        handlers.export_map(result),
        input_title="the input",
        overlays={"field", "bbox"},
        numbers=[(a.model_label, stats_rows(a)) for a in analyses],
    )
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    titles = [one_line(ax.get_title(loc="left")) for ax in panels]
    prefixes = ("A: ", "B: ")
    for analysis, prefix in zip(analyses, prefixes, strict=True):
        assert one_line(gradient_title(analysis.description, prefix)) in titles
        assert one_line(zoom_title(analysis, prefix)) in titles
    assert one_line(result.title) in titles
    # the map panel and, per model, the gradient and the thresholded map: five colour bars,
    # each naming its quantity
    assert len(bars) == 5 and all(bar.get_ylabel() for bar in bars)
    assert "count (input px)" in [bar.get_ylabel() for bar in bars]
    for analysis, prefix in zip(analyses, prefixes, strict=True):
        ax = next(a for a in panels if a.get_title(loc="left").startswith(f"{prefix}|g| >"))
        drawn = ax.images[0].get_array()
        t, le, b, r = zoom_window(analysis.bbox, analysis.row, analysis.col, (SIZE, SIZE))
        window = analysis.magnitude[t : b + 1, le : r + 1]
        above = window > analysis.threshold_value
        assert above.any() and not above.all()
        np.testing.assert_array_equal(~np.ma.getmaskarray(drawn) & np.isfinite(drawn), above)
        np.testing.assert_array_equal(np.asarray(drawn)[above], window[above])
        assert ax.images[0].norm.vmin == pytest.approx(analysis.threshold_value)


def test_the_png_download_decodes_and_has_one_row_per_model(shown):
    state, view, analyses, result = shown
    payload = handlers.export_payload("png", analyses, state, view, result, ["label"], True)
    image = Image.open(io.BytesIO(base64.b64decode(payload["content"])))
    width, height = image.size
    assert payload["filename"].endswith("_17-22.png") and width > 900
    single = handlers.export_payload("png", analyses[:1], state, view, None, [], False)
    single_height = Image.open(io.BytesIO(base64.b64decode(single["content"]))).size[1]
    assert single_height < height  # one row fewer
