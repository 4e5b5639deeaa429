"""The map panel's receptive-field count computed on demand: exact counts on the grid, every
threshold mode, drawn as cells, progress, cancel and the hint for full resolution."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("dash")

from tests.helpers import tiny_app_files
from vessel_lens.app import countmap, handlers
from vessel_lens.app.config import AppConfig
from vessel_lens.app.figures import decode_typed_array
from vessel_lens.app.layers import discover_layers
from vessel_lens.app.methods import discover_methods
from vessel_lens.app.pixel import parse_threshold
from vessel_lens.app.state import AppState
from vessel_lens.interpret import jacobian
from vessel_lens.interpret.thresholds import gradient_magnitude, pixel_stats, threshold_value

SIZE = 48


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("countmap")
    checkpoint, _, _ = tiny_app_files(root, seed=3, size=SIZE, count=2)
    discover_methods()
    discover_layers()
    state = AppState(AppConfig(checkpoints=[str(checkpoint)], data=str(root / "data")))
    yield state
    state.shutdown(wait=10)


def wait_for_map(state, view, threshold, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        figure, result = handlers.map_outputs(state, view, "significant", threshold, "m0")
        if result.task is None or result.task.state not in ("waiting", "running"):
            return figure, result
        assert time.monotonic() < deadline, "the count map did not finish"
        time.sleep(0.05)


def test_counts_of_hand_made_rows_are_strictly_above_each_modes_threshold():
    rows = countmap.CountRows(
        height=3,
        width=3,
        stride=2,
        values=np.array([1, 2, 4, 0.5, 0.5, 3, 1, 2, 2, 8], dtype=np.float32),
        offsets=np.array([0, 3, 5, 6, 10]),
        maxima=np.array([4, 0.5, 3, 8], dtype=np.float32),
    )
    assert rows.shape == (2, 2)
    # pixel 0 keeps 1, 2, 4: at half its max only 4 is above 2 (equal is not above)
    np.testing.assert_array_equal(rows.grid_counts(0.5, "pixel", None), [[1, 2], [1, 1]])
    np.testing.assert_array_equal(rows.grid_counts(2.0, "absolute", None), [[1, 0], [1, 1]])
    np.testing.assert_array_equal(rows.grid_counts(0.25, "global", 8.0), [[1, 0], [1, 1]])
    np.testing.assert_array_equal(
        rows.counts(0.5, "pixel", None), [[1, 1, 2], [1, 1, 2], [1, 1, 1]]
    )


@pytest.mark.parametrize(
    ("height", "width", "area", "limit", "stride"),
    [(256, 256, None, None, 8), (48, 48, None, None, 2), (24, 24, None, None, 1),
     (512, 512, None, None, 16), (256, 256, 65536, 32 * 2**20, 24)],
)  # fmt: skip
def test_the_grid_keeps_to_its_pixel_count_and_memory(height, width, area, limit, stride):
    assert countmap.map_stride(height, width, area, limit) == stride
    assert countmap.grid_pixels(height, width, stride) <= countmap.MAP_PIXELS
    if limit is not None:
        assert countmap.result_bytes(height, width, stride, area) <= limit


def test_the_default_map_is_computed_on_demand_and_exact(state):
    view, _ = state.view(state.image_options()[0]["value"], "full")
    threshold = parse_threshold(0.05, "pixel")
    figure, result = handlers.map_outputs(state, view, "significant", threshold, "m0")
    assert result.task is not None and result.values is None  # started, not waited for
    assert "computing receptive-field counts" in result.note
    figure, result = wait_for_map(state, view, threshold)
    stride = countmap.map_stride(SIZE, SIZE)
    assert stride == 2
    full = jacobian(state.model("m0").model, view.crop(state.sample(view.key).image))
    magnitude = gradient_magnitude(full).reshape(SIZE, SIZE, SIZE, SIZE)
    shown = decode_typed_array(figure["data"][0]["z"])
    assert shown.shape == (SIZE, SIZE)
    for mode, fraction, global_max in [
        ("pixel", 0.05, None),
        ("absolute", 1e-4, None),
        ("global", 0.02, float(magnitude.max())),
    ]:
        if mode != "pixel":
            _, result = handlers.map_outputs(
                state, view, "significant", parse_threshold(fraction, mode), "m0"
            )
            if mode == "global":  # the layer waits for the exact maximum; given here
                assert result.values is None and "not known" in result.note
                rows, _ = state.count_rows("m0", view)
                values = rows.counts(fraction, mode, global_max)
            else:
                values = result.values
        else:
            values = shown
        for r in range(0, SIZE, stride):
            for c in range(0, SIZE, stride):
                m = magnitude[r, c]
                expected = pixel_stats(m, threshold_value(m, fraction, mode, global_max)).count
                cell = values[r : r + stride, c : c + stride]
                assert np.all(cell == expected), (mode, r, c)
    assert "one pixel per 2 x 2 cell (stride 2)" in figure["layout"]["title"]["text"]
    assert figure["data"][0]["colorbar"]["title"]["text"] == "count (input px)"
    assert "576 pixels computed" in result.status and "vessel-lens erf" in result.status


def test_the_hint_states_the_store_size_and_suggests_erf(state):
    view, _ = state.view(state.image_options()[0]["value"], "full")
    _, result = wait_for_map(state, view, parse_threshold(0.01, "pixel"))
    channels, height, width = state.sample(view.key).image.shape
    size = height * width * channels * height * width * 4  # float32 rows, one per pixel
    assert f"about {size / 1e6:.0f} MB" in result.status
    assert "vessel-lens erf" in result.status and "--full" in result.status
    assert countmap.store_size_words(256**4 * 4) == "17.2 GB"


def test_a_cancelled_map_stays_cancelled_until_asked_again(state, monkeypatch):
    view, _ = state.view(state.image_options()[1]["value"], "crop", 40)
    started = threading.Event()
    release = threading.Event()
    original = countmap.compute_count_rows

    def slow(engine, stride, between, progress, lock=None, chunk=countmap.CHUNK):
        def held():
            started.set()
            release.wait(30)
            between()

        return original(engine, stride, held, progress, lock, chunk)

    monkeypatch.setattr(countmap, "compute_count_rows", slow)
    threshold = parse_threshold(0.01, "pixel")
    _, result = handlers.map_outputs(state, view, "significant", threshold, "m0")
    task = result.task
    assert started.wait(30)
    state.tasks.cancel(task.id)
    release.set()
    deadline = time.monotonic() + 30
    while task.state in ("waiting", "running") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert task.state == "cancelled"
    _, again = handlers.map_outputs(state, view, "significant", threshold, "m0")
    assert again.task is task and "cancelled" in again.note
    monkeypatch.setattr(countmap, "compute_count_rows", original)
    _, restarted = handlers.map_outputs(state, view, "significant", threshold, "m0", restart=True)
    assert restarted.task is not task
    _, finished = wait_for_map(state, view, threshold)
    assert finished.values is not None and finished.values.shape == (40, 40)


def test_the_computed_rows_count_against_the_memory_budget(state):
    view, _ = state.view(state.image_options()[0]["value"], "full")
    wait_for_map(state, view, parse_threshold(0.01, "pixel"))
    rows, _ = state.count_rows("m0", view)
    assert state.count_maps.bytes >= rows.nbytes > 0
    assert state.count_maps in state.work._caches
