"""The app's callback logic on a tiny real model: gradients, thresholds, stores, exports."""

from __future__ import annotations

import csv
import io
import itertools
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("dash")

from tests.helpers import tiny_app_files
from vessel_lens.app import handlers
from vessel_lens.app.config import AppConfig
from vessel_lens.app.figures import decode_typed_array
from vessel_lens.app.layers import discover_layers
from vessel_lens.app.methods import _METHODS, Method, discover_methods
from vessel_lens.app.pixel import analyse_pixel, parse_threshold, stats_rows
from vessel_lens.app.state import AppState
from vessel_lens.errors import ConfigError, DataError, VesselLensError
from vessel_lens.interpret import jacobian
from vessel_lens.interpret.thresholds import (
    gradient_magnitude,
    pixel_stats,
    threshold_value,
)
from vessel_lens.training import vessel_probability

SIZE = 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A width-4 reference model (seeded, not trained) and three synthetic 48x48 samples."""
    root = tmp_path_factory.mktemp("app")
    checkpoint, _, _ = tiny_app_files(root, seed=7, size=SIZE, count=3)
    return SimpleNamespace(root=root, checkpoint=checkpoint, data=root / "data")


def make_state(tiny, **options) -> AppState:
    discover_methods()
    discover_layers()
    config = AppConfig(
        checkpoints=[str(tiny.checkpoint)], data=str(tiny.data), compare="random", **options
    )
    return AppState(config)


@pytest.fixture(scope="module")
def state(tiny):
    state = make_state(tiny)
    yield state
    state.jobs.shutdown(wait=10)


def first_view(state, mode="full", size=None, top=None, left=None):
    key = state.image_options()[0]["value"]
    return state.view(key, mode, size, top, left)[0]


def view_image(state, view) -> torch.Tensor:
    return view.crop(state.sample(view.key).image)


@pytest.mark.parametrize("crop", [False, True])
def test_gradient_is_the_exact_jacobian_row(state, crop):
    view = first_view(state, "crop", 32, 4, 10) if crop else first_view(state)
    model = state.model("m0").model
    for row, col in ((0, 0), (view.height // 2, 5), (view.height - 1, view.width - 1)):
        gradient, source = state.gradient("m0", view, row, col)
        expected = jacobian(model, view_image(state, view), pixels=[[row, col]])[0]
        assert source == "computed"
        torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-7)
        again, _ = state.gradient("m0", view, row, col)
        assert again is gradient


def test_concurrent_requests_for_a_pixel_share_one_backward_pass(state, monkeypatch):
    """The paint route and the pixel callback ask for the same pixel at once."""
    import threading

    view = first_view(state)
    with state.pinned_engine("m0", view) as engine:
        calls, started = [], threading.Event()
        rows = engine.rows

        def slow_rows(flat):
            calls.append(flat.tolist())
            started.set()
            time.sleep(0.3)
            return rows(flat)

        monkeypatch.setattr(engine, "rows", slow_rows)
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(state.gradient("m0", view, 31, 2)))
            for _ in range(2)
        ]
        threads[0].start()
        started.wait(10)
        threads[1].start()
        for thread in threads:
            thread.join(30)
    assert len(calls) == 1 and len(results) == 2
    assert results[0][0] is results[1][0]


@pytest.mark.parametrize(
    ("mode", "fraction"), [("pixel", 0.01), ("pixel", 0.3), ("absolute", 1e-4)]
)
def test_numbers_follow_the_shared_threshold_definitions(state, mode, fraction):
    view = first_view(state)
    row, col = 20, 17
    analysis = analyse_pixel(state, "m0", view, row, col, parse_threshold(fraction, mode))
    magnitude = gradient_magnitude(state.gradient("m0", view, row, col)[0])
    threshold = threshold_value(magnitude, fraction, mode)
    assert analysis.threshold_value == threshold
    assert analysis.stats == pixel_stats(magnitude, threshold)
    numbers = analysis.numbers()
    assert numbers["count"] == int((magnitude > threshold).sum())
    assert numbers["area"] == numbers["x_extent"] * numbers["y_extent"]
    probability = vessel_probability(state.model("m0").model, view_image(state, view))
    assert numbers["probability"] == pytest.approx(float(probability[row, col]), abs=1e-5)


def test_a_known_map_gives_the_numbers_worked_out_by_hand(state, monkeypatch):
    known = torch.full((1, SIZE, SIZE), 0.1)
    known[0, 2, 3], known[0, 4, 7], known[0, 5, 3] = 1.0, -0.6, 0.8

    def compute(state, model_key, view, row, col, target):
        return known, "hand-made map"

    monkeypatch.setitem(_METHODS, "known", Method("known", "known", True, compute))
    view = first_view(state)
    analysis = analyse_pixel(state, "m0", view, 4, 4, parse_threshold(0.5, "pixel"), "known")
    numbers = analysis.numbers()
    # t = 0.5 * 1.0; above: (2, 3), (4, 7) by magnitude, (5, 3): rows 2-5, cols 3-7
    assert numbers["threshold"] == 0.5 and numbers["count"] == 3
    assert (numbers["bbox_top"], numbers["bbox_left"]) == (2, 3)
    assert (numbers["bbox_bottom"], numbers["bbox_right"]) == (5, 7)
    assert (numbers["y_extent"], numbers["x_extent"], numbers["area"]) == (4, 5, 20)
    assert numbers["fulfillment"] == pytest.approx(3 / 20)
    rows = dict(handlers_rows(analysis))
    assert rows["pixel count"] == "3" and rows["area"] == "20" and rows["fulfillment"] == "0.15"


def handlers_rows(analysis):
    from vessel_lens.app.pixel import stats_rows

    return stats_rows(analysis)


def test_global_mode_waits_for_the_exact_maximum_then_uses_it(tiny):
    state = make_state(tiny)
    try:
        view = first_view(state, "crop", 24)
        threshold = parse_threshold(0.05, "global")
        before = analyse_pixel(state, "m0", view, 10, 11, threshold)
        assert before.stats is None and "not computed" in before.global_note
        handlers.global_status(state, view, "m0", start=True)
        deadline = time.monotonic() + 120
        while state.global_max("m0", view)[0] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        full = jacobian(state.model("m0").model, view_image(state, view))
        expected = float(gradient_magnitude(full).max())
        value, note = state.global_max("m0", view)
        assert value == pytest.approx(expected, rel=1e-5) and note == "from the whole Jacobian"
        after = analyse_pixel(state, "m0", view, 10, 11, threshold)
        magnitude = gradient_magnitude(full[10 * view.width + 11])
        assert after.stats == pixel_stats(magnitude, 0.05 * value)
        text, stop, known = handlers.global_status(state, view, "m0", start=False)
        assert stop and known == value and "global max" in text
        text, _, _ = handlers.global_status(state, view, "m0", False, threshold)
        assert text.endswith(f"threshold t = 5 % of it = {0.05 * value:.4g}")
        assert dict(stats_rows(before))["threshold"].startswith("unknown until the global max")
    finally:
        state.jobs.shutdown(wait=10)


@pytest.fixture(scope="module")
def stored(tiny):
    """A Jacobian store of the centred 24x24 crop of the first image, and a state using it."""
    from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians

    out = tiny.root / "erf"
    probe = make_state(tiny)
    stem = probe.image_options()[0]["value"].split("/", 1)[1]
    extract_jacobians(
        ExtractConfig(
            checkpoint=str(tiny.checkpoint),
            out=out,
            data=str(tiny.data),
            split="all",
            crop=24,
            images=[stem],
            device="cpu",
            progress=False,
        )
    )
    state = make_state(tiny, erf=out)
    yield SimpleNamespace(state=state, stem=stem)
    state.jobs.shutdown(wait=10)


def test_a_matching_store_supplies_rows_global_max_and_the_count_map(stored):
    state = stored.state
    key = f"data/{stored.stem}"
    view, _ = state.view(key, "store")
    assert (view.top, view.left, view.height, view.width) == (12, 12, 24, 24)
    full = jacobian(state.model("m0").model, view_image(state, view))
    gradient, source = state.gradient("m0", view, 5, 9)
    assert source == "stored"
    torch.testing.assert_close(gradient, full[5 * 24 + 9], rtol=1e-4, atol=1e-7)
    value, note = state.global_max("m0", view)
    assert value == pytest.approx(float(gradient_magnitude(full).max()), rel=1e-5)
    assert note.startswith("from store")
    figure = handlers.map_panel(state, view, "significant", parse_threshold(0.1, "pixel"), "m0")
    counts = decode_typed_array(figure["data"][0]["z"])
    magnitude = gradient_magnitude(full)
    expected = [pixel_stats(m, threshold_value(m, 0.1, "pixel")).count for m in magnitude]
    assert np.array_equal(counts.reshape(-1), np.array(expected, dtype=np.float32))
    figure = handlers.map_panel(state, view, "significant", parse_threshold(0.1, "global"), "m0")
    counts = decode_typed_array(figure["data"][0]["z"]).reshape(-1)
    limit = 0.1 * value
    assert np.array_equal(counts, (magnitude > limit).flatten(1).sum(1).float().numpy())


def test_stores_of_other_weights_or_crops_are_not_used(stored):
    state = stored.state
    key = f"data/{stored.stem}"
    store_view, _ = state.view(key, "store")
    assert state.store_for("random", store_view) is None
    other, _ = state.view(key, "crop", 24, 0, 0)
    assert state.store_for("m0", other) is None
    figure, result = handlers.map_outputs(
        state, other, "significant", parse_threshold(0.1, "pixel"), "m0"
    )
    assert figure["data"] == [] and result.task is not None  # computed by the app instead
    note = figure["layout"]["annotations"][0]["text"].replace("<br>", " ")
    assert "computing receptive-field counts" in note


def test_random_init_is_another_model_and_leaves_the_global_rng_alone(tiny):
    before = torch.random.get_rng_state()
    state = make_state(tiny)
    assert torch.equal(torch.random.get_rng_state(), before)
    view = first_view(state)
    trained = state.gradient("m0", view, 10, 10)[0]
    random = state.gradient("random", view, 10, 10)[0]
    assert not torch.allclose(trained, random)
    assert state.models["random"].label.startswith("random init of resnet_seg")


def test_comparison_shows_both_models_side_by_side(state):
    view = first_view(state)
    threshold = parse_threshold(0.02, "pixel")
    outputs = handlers.pixel_outputs(
        state, view, (12, 30), "m0", "random", threshold, "gradient", "pixel", ["field", "bbox"]
    )
    assert [a.model_key for a in outputs.analyses] == ["m0", "random"]
    assert len(outputs.gradient) == 2 and len(outputs.zoom) == 2 and len(outputs.tables) == 2
    shown = decode_typed_array(outputs.gradient[1]["data"][0]["z"])
    expected = state.gradient("random", view, 12, 30)[0].sum(0).numpy()
    np.testing.assert_allclose(shown, expected, rtol=1e-6)
    trace = outputs.gradient[0]["data"][0]
    assert trace["zmid"] == 0 and trace["zmin"] == -trace["zmax"]
    kinds = [shape["line"]["color"] for shape in outputs.shapes]
    assert "#ff9900" in kinds and kinds[-1] == "#00e5ff"
    alone = handlers.pixel_outputs(
        state, view, (12, 30), "m0", "none", threshold, "gradient", "pixel", []
    )
    assert len(alone.analyses) == 1 and alone.shapes == [alone.shapes[-1]]


def test_exports_hold_the_numbers_shown(state):
    view = first_view(state)
    threshold = parse_threshold(0.01, "pixel")
    outputs = handlers.pixel_outputs(
        state, view, (7, 8), "m0", "random", threshold, "gradient", "pixel", []
    )
    csv_payload = handlers.export_payload("csv", outputs.analyses, state, view)
    rows = list(csv.DictReader(io.StringIO(csv_payload["content"])))
    assert len(rows) == 2 and rows[0]["row"] == "7" and rows[0]["col"] == "8"
    assert int(rows[0]["count"]) == outputs.analyses[0].stats.count
    assert csv_payload["filename"].endswith("_7-8.csv")
    parsed = json.loads(handlers.export_payload("json", outputs.analyses, state, view)["content"])
    assert parsed["pixels"][1]["model"].startswith("random init")
    assert parsed["pixels"][0]["fulfillment"] == pytest.approx(
        outputs.analyses[0].stats.fulfillment
    )
    png = handlers.export_payload("png", outputs.analyses, state, view)
    import base64

    assert png["base64"] and base64.b64decode(png["content"]).startswith(b"\x89PNG\r\n\x1a\n")


def test_probability_and_error_layers(state):
    view = first_view(state)
    threshold = parse_threshold(0.01, "pixel")
    figure = handlers.map_panel(state, view, "probability", threshold, "m0")
    shown = decode_typed_array(figure["data"][0]["z"])
    expected = vessel_probability(state.model("m0").model, view_image(state, view)).numpy()
    np.testing.assert_allclose(shown, expected, atol=1e-5)
    errors = decode_typed_array(
        handlers.map_panel(state, view, "errors", threshold, "m0")["data"][0]["z"]
    )
    label = view.crop(state.sample(view.key).label).numpy()
    predicted = expected > 0.5
    assert np.array_equal(errors == 2, predicted & ~label)
    assert np.array_equal(errors == 3, ~predicted & label)


def colour_at(scale: list, zmin: float, zmax: float, value: float) -> str:
    """The colour a stepped plotly colour scale gives ``value`` (inside a constant segment)."""
    position = (value - zmin) / (zmax - zmin)
    for (start, colour), (end, colour_end) in itertools.pairwise(scale):
        if start < position < end and colour == colour_end:
            return colour
    raise AssertionError(f"value {value} falls on a colour boundary")


def test_categorical_maps_paint_each_category_in_its_colour(state):
    from vessel_lens.app.figures import MASK_SCALE
    from vessel_lens.app.layers import ERROR_COLOURS

    view = first_view(state)
    threshold = parse_threshold(0.01, "pixel")
    trace = handlers.map_panel(state, view, "errors", threshold, "m0")["data"][0]
    for value, colour in enumerate(ERROR_COLOURS):
        assert colour_at(trace["colorscale"], trace["zmin"], trace["zmax"], value) == colour
    mask = handlers.input_panels(state, view, [], "m0", None)[1]["data"][0]
    dark, light = MASK_SCALE[0][1], MASK_SCALE[-1][1]
    assert colour_at(mask["colorscale"], mask["zmin"], mask["zmax"], 0.3) == dark
    assert colour_at(mask["colorscale"], mask["zmin"], mask["zmax"], 0.7) == light


def test_captum_saliency_of_a_pixel_agrees_with_the_gradient(state):
    pytest.importorskip("captum")
    view = first_view(state)
    threshold = parse_threshold(0.05, "pixel")
    gradient = analyse_pixel(state, "m0", view, 15, 16, threshold, "gradient")
    saliency = analyse_pixel(state, "m0", view, 15, 16, threshold, "saliency")
    np.testing.assert_allclose(saliency.signed, gradient.signed, rtol=1e-4, atol=1e-7)
    assert saliency.threshold_value == pytest.approx(gradient.threshold_value, rel=1e-5)
    assert saliency.bbox == gradient.bbox
    assert saliency.stats.count == pytest.approx(gradient.stats.count, abs=2)
    predicted = state.probability("m0", view) > 0.5
    row, col = (int(v) for v in np.argwhere(predicted)[0])
    segment = analyse_pixel(state, "m0", view, row, col, threshold, "saliency", "segment")
    assert "segment" in segment.description
    row, col = (int(v) for v in np.argwhere(~predicted)[0])
    with pytest.raises(ConfigError, match="not on a vessel"):
        analyse_pixel(state, "m0", view, row, col, threshold, "saliency", "segment")


def test_values_from_the_browser_are_validated(state):
    good = first_view(state).as_dict()
    for bad in (
        None,
        "view",
        {**good, "key": "/etc/passwd"},
        {**good, "key": "data/../../etc/passwd"},
        {**good, "top": "x"},
        {**good, "height": 10**6},
        {**good, "top": SIZE - 2},
        {**good, "left": -1},
    ):
        with pytest.raises(VesselLensError):
            handlers.view_from_data(state, bad)
    with pytest.raises(ConfigError):
        state.model("m9")
    with pytest.raises(DataError):
        state.sample("upload/never-uploaded")
    view = first_view(state)
    with pytest.raises(ConfigError):
        handlers.pixel_outputs(
            state,
            view,
            (SIZE, 0),
            "m0",
            "none",
            parse_threshold(0.01, "pixel"),
            "gradient",
            "pixel",
            [],
        )
    with pytest.raises(ConfigError):
        handlers.map_panel(state, view, "no-such-layer", parse_threshold(0.01, "pixel"), "m0")


def test_uploads_are_selectable_by_key_and_bounded(tiny):
    import base64

    from PIL import Image

    state = make_state(tiny, uploads=2)
    keys = []
    for i in range(3):
        buffer = io.BytesIO()
        Image.fromarray(np.full((20, 20), 40 * i, dtype=np.uint8)).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        options, key, message = handlers.handle_upload(state, url, f"up{i}.png")
        assert key in [o["value"] for o in options] and "20x20" in message
        keys.append(key)
    assert len(state.uploads) == 2
    with pytest.raises(DataError, match="upload it again"):
        state.sample(keys[0])
    view, _ = state.view(keys[2], "full")
    assert state.gradient("m0", view, 3, 4)[0].shape == (1, 20, 20)


def test_engine_cache_is_bounded_by_count(tiny):
    state = make_state(tiny, engines=2)
    key = state.image_options()[0]["value"]
    for left in (0, 4, 8):
        view, _ = state.view(key, "crop", 32, 0, left)
        state.gradient("m0", view, 1, 1)
    assert len(state.engines) == 2


def test_the_first_image_offered_is_from_the_test_split(state):
    options = [o for o in state.image_options() if o["value"].startswith("data/")]
    test_stems = state.dataset.splits["test"]
    assert options[0]["value"] == f"data/{test_stems[0]}"
    assert options[0]["label"].endswith("· test")
    splits = [o["label"].rsplit("· ", 1)[1] for o in options]
    assert splits == sorted(splits, key=["test", "val", "train"].index)
    assert sorted(o["value"] for o in options) == sorted(f"data/{s}" for s in state.dataset.samples)
