"""The app's pure pieces: bounded caches, upload decoding, views, thresholds, figures, payloads."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

pytest.importorskip("dash")

from vessel_lens.app import figures
from vessel_lens.app.cache import LRUCache, held_bytes
from vessel_lens.app.config import AppConfig
from vessel_lens.app.handlers import parse_point
from vessel_lens.app.images import decode_upload, resolve_view, safe_name
from vessel_lens.app.pixel import (
    fraction_to_slider,
    parse_threshold,
    slider_to_fraction,
)
from vessel_lens.app.server import payload_problem
from vessel_lens.errors import ConfigError, DataError

MIB = 2**20


# -- bounded caches -------------------------------------------------------------------------


def test_cache_drops_the_least_recently_used_entry_beyond_its_count():
    cache = LRUCache(max_items=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert len(cache) == 2


def test_cache_is_bounded_by_memory():
    cache = LRUCache(max_items=100, max_bytes=3000)
    for i in range(5):
        cache.put(i, torch.zeros(250))  # 1000 bytes each
    assert len(cache) == 3 and cache.bytes == 3000
    assert [k for k, _ in cache.snapshot()] == [2, 3, 4]
    # a value over the whole budget is kept alone (not rebuilt on every use)
    cache.put("huge", torch.zeros(10_000))
    assert [k for k, _ in cache.snapshot()] == ["huge"] and cache.bytes == 40_000
    cache.put(5, torch.zeros(250))
    assert [k for k, _ in cache.snapshot()] == [5] and cache.bytes == 1000


def test_cache_builds_a_missing_value_once_for_concurrent_callers():
    cache = LRUCache(max_items=4)
    calls = []
    gate = threading.Event()

    def build():
        calls.append(1)
        gate.wait(5)
        return "value"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_create("k", build)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert results == ["value"] * 6 and len(calls) == 1


def test_cache_does_not_keep_a_failed_build():
    cache = LRUCache(max_items=4)

    def fail():
        raise DataError("broken")

    with pytest.raises(DataError):
        cache.get_or_create("k", fail)
    assert cache.get_or_create("k", lambda: 5) == 5


def test_held_bytes_counts_each_storage_once_and_skips_models():
    shared = torch.zeros(1000)
    holder = SimpleHolder(a=shared, b=[shared[:10], {"c": torch.zeros(10, dtype=torch.float64)}])
    assert held_bytes(holder) == 4000 + 80
    holder.model = torch.nn.Linear(100, 100)
    assert held_bytes(holder) == 4080


class SimpleHolder:
    def __init__(self, **values):
        self.__dict__.update(values)


# -- uploads ---------------------------------------------------------------------------------


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_png_is_decoded_in_memory_like_read_image():
    array = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) % 256
    sample = decode_upload(data_url(png_bytes(array.astype(np.uint8))), "cells.png", MIB)
    assert sample.image.shape == (1, 32, 40) and sample.image.dtype == torch.float32
    assert torch.allclose(sample.image[0], torch.from_numpy(array / 255).float())
    assert sample.stem.startswith("cells-")


def test_upload_16_bit_tiff_is_scaled_by_its_dtype_range():
    array = np.full((20, 24), 65535, dtype=np.uint16)
    array[0, 0] = 0
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    sample = decode_upload(data_url(buffer.getvalue(), "image/tiff"), "stack.tif", MIB)
    assert float(sample.image.max()) == 1.0 and float(sample.image[0, 0, 0]) == 0.0


def test_upload_rgb_becomes_luminance_unless_channels_are_kept():
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    grey = decode_upload(data_url(png_bytes(rgb)), "red.png", MIB)
    kept = decode_upload(data_url(png_bytes(rgb)), "red.png", MIB, keep_channels=True)
    assert grey.image.shape == (1, 16, 16)
    assert torch.allclose(grey.image, torch.full((1, 16, 16), 0.299))
    assert kept.image.shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("contents", "name", "expected"),
    [
        (None, "a.png", "no file content"),
        ("hello", "a.png", "not a base64 data URL"),
        ("data:image/png;base64,@@@@", "a.png", "invalid base64"),
        (data_url(b"not an image at all"), "a.png", "cannot read image"),
        (data_url(b"II*\x00garbage"), "a.tif", "TIFF"),
        (data_url(png_bytes(np.zeros((8, 8), np.uint8))), "a.png", "minimum is 16x16"),
        (data_url(png_bytes(np.zeros((16, 16), np.uint8))), "a.exe", "unsupported file type"),
        (data_url(b"x" * (2 * MIB)), "a.png", "upload limit"),
    ],
)
def test_bad_uploads_are_refused_with_one_line(contents, name, expected):
    with pytest.raises(DataError) as caught:
        decode_upload(contents, name, MIB)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert message.startswith(safe_name(name))


def test_upload_names_never_carry_a_path():
    assert safe_name("../../etc/passwd.png") == "passwd.png"
    assert safe_name("C:\\Users\\x\\img.tif") == "img.tif"
    assert safe_name("bad\x00name.png") == "badname.png"
    assert safe_name(None) == "upload"


# -- views -----------------------------------------------------------------------------------


def test_full_view_of_a_small_image_is_the_whole_image():
    view, note = resolve_view("data/a", (64, 80))
    assert (view.top, view.left, view.height, view.width) == (0, 0, 64, 80) and note == ""


def test_full_view_of_a_large_image_is_a_centred_crop_with_a_note():
    view, note = resolve_view("data/a", (1000, 600), max_side=512)
    assert (view.top, view.left, view.height, view.width) == (244, 44, 512, 512)
    assert "centred 512x512 crop" in note


def test_crop_is_clipped_into_the_image():
    view, note = resolve_view("data/a", (64, 64), "crop", 32, 50, -3)
    assert (view.top, view.left, view.height, view.width) == (32, 0, 32, 32) and note == ""
    view, note = resolve_view("data/a", (64, 64), "crop", 500, None, None)
    assert view.height == 64 and "using 64" in note
    view, _ = resolve_view("data/a", (64, 64), "crop", "24", None, None)
    assert (view.top, view.height) == (20, 24)


def test_stored_crop_view_uses_the_store_box():
    view, _ = resolve_view("data/a", (64, 64), "store", box=(16, 8, 32, 32))
    assert (view.top, view.left, view.height, view.width) == (16, 8, 32, 32)


@pytest.mark.parametrize(
    ("mode", "size"), [("crop", "12abc"), ("crop", 3.5), ("crop", True), ("zoom", None)]
)
def test_malformed_view_requests_are_config_errors(mode, size):
    with pytest.raises(ConfigError):
        resolve_view("data/a", (64, 64), mode, size)


# -- thresholds ------------------------------------------------------------------------------


def test_threshold_is_a_fraction_in_every_mode():
    assert parse_threshold(0.01, "pixel").fraction == 0.01
    assert parse_threshold("0.05", "global").fraction == 0.05
    assert parse_threshold(3.0, "absolute").fraction == 3.0
    for fraction, mode in ((1.5, "pixel"), (0, "pixel"), (-1, "absolute"), ("x", "pixel")):
        with pytest.raises(ConfigError):
            parse_threshold(fraction, mode)
    with pytest.raises(ConfigError):
        parse_threshold(0.01, "percent")
    with pytest.raises(ConfigError):
        parse_threshold(float("nan"), "pixel")


def test_slider_is_log10_of_the_fraction():
    assert slider_to_fraction(-2) == pytest.approx(0.01)
    assert fraction_to_slider(0.01) == -2
    assert slider_to_fraction(-99) == pytest.approx(1e-5)
    for bad in ("-2", None, float("inf"), True):
        with pytest.raises(ConfigError):
            slider_to_fraction(bad)


# -- figures and payloads --------------------------------------------------------------------


def test_typed_arrays_round_trip_and_keep_their_shape():
    values = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    spec = figures.typed_array(values)
    assert spec["dtype"] == "f4" and spec["shape"] == "5, 7"
    assert np.array_equal(figures.decode_typed_array(spec), values)


def test_gradient_figure_is_centred_on_zero():
    gradient = np.array([[0.0, -0.5], [0.2, 0.1]], dtype=np.float32)
    trace = figures.gradient_figure(gradient, "g")["data"][0]
    assert trace["zmid"] == 0 and trace["zmin"] == -0.5 and trace["zmax"] == 0.5
    assert trace["colorscale"][0][1] == "#053061" and trace["colorscale"][5] == [0.5, "#f7f7f7"]


def test_clipping_saturates_the_colours_at_a_percentile_of_the_magnitude():
    gradient = np.zeros((10, 10), dtype=np.float32)
    gradient[0, :5] = [-1.0, 2.0, 3.0, -4.0, 100.0]
    assert figures.symmetric_limit(gradient) == 100.0
    assert figures.symmetric_limit(gradient, 96) == pytest.approx(
        np.percentile(np.abs(gradient), 96)
    )
    assert figures.symmetric_limit(np.zeros((3, 3)), 99) == 1.0


def test_zoom_blanks_pixels_at_or_below_the_threshold_and_draws_the_box():
    gradient = np.zeros((20, 20), dtype=np.float32)
    gradient[5, 6], gradient[9, 12], gradient[7, 7] = 2.0, -3.0, 1.0
    figure = figures.zoom_figure(np.abs(gradient), 1.0, (5, 6, 9, 12), 7, 8, "z")
    trace = figure["data"][0]
    window = figures.decode_typed_array(trace["z"])
    top, left = trace["y0"], trace["x0"]
    assert window[5 - top, 6 - left] == 2.0 and window[9 - top, 12 - left] == 3.0
    assert np.isnan(window).sum() == window.size - 2
    assert trace["zmin"] == 1.0 and trace["zmax"] == 3.0
    box = figure["layout"]["shapes"][0]
    assert (box["x0"], box["x1"], box["y0"], box["y1"]) == (5.5, 12.5, 4.5, 9.5)


def test_hover_payloads_are_parsed_defensively():
    assert parse_point({"points": [{"x": 3, "y": 7.0}]}) == (7, 3)
    for bad in (
        None,
        "x",
        {},
        {"points": []},
        {"points": "nope"},
        {"points": [{"x": "3", "y": 1}]},
        {"points": [{"x": True, "y": 1}]},
        {"points": [{"x": float("nan"), "y": 1}]},
        {"points": [17]},
    ):
        assert parse_point(bad) is None


def test_payload_problems_name_the_bad_part():
    callbacks = {"out.figure": {"inputs": [{"id": "a", "property": "value"}], "state": []}}
    good = {
        "output": "out.figure",
        "outputs": {"id": "out", "property": "figure"},
        "inputs": [{"id": "a", "property": "value", "value": 1}],
        "changedPropIds": ["a.value"],
    }
    assert payload_problem(good, callbacks) is None
    assert payload_problem([], callbacks) == "body is not a JSON object"
    assert payload_problem({**good, "output": "nope"}, callbacks) == "unknown output"
    assert "inputs" in payload_problem({**good, "inputs": []}, callbacks)
    assert "inputs" in payload_problem({**good, "inputs": [5]}, callbacks)
    assert "outputs" in payload_problem({**good, "outputs": None}, callbacks)
    assert "changedPropIds" in payload_problem({**good, "changedPropIds": "a"}, callbacks)


# -- configuration ---------------------------------------------------------------------------


def test_config_defaults_are_local_and_safe(tmp_path):
    config = AppConfig()
    assert config.host == "127.0.0.1" and config.is_local and not config.debug
    assert config.checkpoints == ["vessmap-w16"] and config.upload_bytes == 20 * MIB
    assert not AppConfig(host="0.0.0.0").is_local
    for bad in (
        {"port": 70000},
        {"threads": 0},
        {"max_side": 8},
        {"upload_mb": 0},
        {"erf": tmp_path / "missing"},
    ):
        with pytest.raises(ConfigError):
            AppConfig(**bad)


def test_a_stored_crop_larger_than_max_side_is_refused_when_chosen():
    view, _ = resolve_view("data/a", (64, 64), "store", max_side=32, box=(8, 8, 24, 24))
    assert (view.top, view.height) == (8, 24)
    with pytest.raises(ConfigError, match="larger than --max-side 32"):
        resolve_view("data/a", (64, 64), "store", max_side=32, box=(0, 0, 48, 48))


def test_the_chosen_pixel_stays_on_its_image_pixel_when_the_crop_moves():
    from vessel_lens.app.handlers import _in_new_view
    from vessel_lens.app.images import View

    old = View("data/a", 0, 0, 24, 24)
    new = View("data/a", 20, 10, 24, 24)
    pixel = {"row": 25, "col": 15, "view": old.as_dict()}
    assert _in_new_view((25, 15), pixel, new) == (5, 5)  # image pixel (25, 15) in both
    other_image = {"row": 5, "col": 5, "view": View("data/b", 0, 0, 24, 24).as_dict()}
    assert _in_new_view((5, 5), other_image, new) == (5, 5)  # another image: as given
    assert _in_new_view((5, 5), {"row": 5, "col": 5, "view": {"top": "x"}}, new) == (5, 5)
