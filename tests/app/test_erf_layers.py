"""The map panel's receptive-field layers: maps written by ``vessel-lens erf`` in ``--erf``."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("dash")

from vessel_lens.app import create_app, handlers, testing
from vessel_lens.app.config import AppConfig
from vessel_lens.app.figures import decode_typed_array
from vessel_lens.app.layers import LayerContext, discover_layers, layers
from vessel_lens.app.pixel import parse_threshold
from vessel_lens.app.state import AppState
from vessel_lens.data import write_synthetic_dataset
from vessel_lens.interpret import load_receptive_field_maps
from vessel_lens.interpret.fields.run import ErfConfig, run_erf
from vessel_lens.models import create_model, save_checkpoint

SIZE = 32
CROP = 16
FRACTIONS = (0.01, 0.05, 0.25)


def tiny_checkpoint(path, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("resnet_seg", width=4, in_channels=1)
    return save_checkpoint(path, model, "resnet_seg", {"width": 4, "in_channels": 1})


@pytest.fixture(scope="module")
def erf(tmp_path_factory):
    """Two checkpoints, two synthetic images, and a folder of maps for both images made with
    the first checkpoint: the first image's centred crop with every pixel, the second's with
    every other pixel (so half its map is blank); plus two corrupt map files."""
    root = tmp_path_factory.mktemp("app-erf")
    checkpoint = tiny_checkpoint(root / "tiny.pt", 11)
    other = tiny_checkpoint(root / "other.pt", 12)
    write_synthetic_dataset(root / "data", count=2, size=SIZE, progress=False)
    stems = sorted(p.name.split(".")[0] for p in (root / "data" / "images").iterdir())
    maps = root / "maps"
    common = dict(
        checkpoint=str(checkpoint),
        out=maps,
        data=str(root / "data"),
        split="all",
        crop=CROP,
        fractions=FRACTIONS,
        mode="global",
        device="cpu",
        figures=False,
        progress=False,
    )
    run_erf(ErfConfig(images=[stems[0]], **common))
    run_erf(ErfConfig(images=[stems[1]], pixel_stride=2, mass_fractions=(0.5, 0.99), **common))
    good = (maps / f"{stems[0]}.erf.npz").read_bytes()
    (maps / "truncated.erf.npz").write_bytes(good[: len(good) // 2])
    (maps / "junk.erf.npz").write_bytes(b"not a zip file at all")
    return SimpleNamespace(
        root=root, checkpoint=checkpoint, other=other, data=root / "data", stems=stems, maps=maps
    )


def make_state(erf, folder, checkpoints=None) -> AppState:
    discover_layers()
    config = AppConfig(
        checkpoints=[str(c) for c in checkpoints or [erf.checkpoint]],
        data=str(erf.data),
        compare="random",
        erf=folder,
    )
    return AppState(config)


@pytest.fixture(scope="module")
def state(erf):
    state = make_state(erf, erf.maps, [erf.checkpoint, erf.other])
    yield state
    state.jobs.shutdown(wait=10)


def stored_view(state, stem):
    return state.view(f"data/{stem}", "store")[0]


def compute(state, layer, view, fraction=0.05, mode="global", model="m0"):
    """The layer's result as the map panel computes it."""
    context = LayerContext(state, model, view, fraction, mode, None)
    return layers()[layer].compute(context)


def shown(state, layer, view, fraction=0.05, mode="global", model="m0") -> np.ndarray:
    figure = handlers.map_panel(state, view, layer, parse_threshold(fraction, mode), model)
    return decode_typed_array(figure["data"][0]["z"]).reshape(view.height, view.width)


def saved(erf, stem):
    return load_receptive_field_maps(erf.maps / f"{stem}.erf.npz")


def test_the_layers_are_offered_through_the_registry():
    names = discover_layers()
    for name in ("erf_count", "erf_fulfillment", "erf_mass_radius"):
        assert name in names
    assert layers()["erf_count"].label == "Receptive-field count (erf)"
    assert layers()["erf_fulfillment"].label == "Fulfillment (erf)"


def test_corrupt_map_files_are_skipped_with_a_warning(erf, caplog):
    with caplog.at_level(logging.WARNING, logger="vessel_lens.app.stores"):
        state = make_state(erf, erf.maps)
    try:
        assert sorted(m.stem for m in state.erf_maps.maps) == erf.stems
        assert sorted(p.split(":")[0] for p in state.erf_maps.problems) == [
            "junk.erf.npz",
            "truncated.erf.npz",
        ]
        skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(skipped) == 2 and any("junk.erf.npz" in m for m in skipped)
        assert state.stores.stores == []
    finally:
        state.jobs.shutdown(wait=10)


def test_count_is_the_stored_map_at_the_nearest_fraction(erf, state):
    stem = erf.stems[0]
    maps = saved(erf, stem)
    view = stored_view(state, stem)
    top, left, height, width = maps.metadata["crop_box"]
    assert (view.top, view.left, view.height, view.width) == (top, left, height, width)
    assert (height, width) == (CROP, CROP) and (top, left) == ((SIZE - CROP) // 2,) * 2
    assert bool(maps.computed.all())
    counts = maps.count.numpy().astype(np.float32)
    assert not np.array_equal(counts[0], counts[1])  # the fraction chosen matters
    for fraction, index in ((0.04, 1), (0.012, 0), (0.9, 2), (0.05, 1)):
        np.testing.assert_array_equal(shown(state, "erf_count", view, fraction), counts[index])
    result = compute(state, "erf_count", view, 0.04)
    assert "5 %" in result.title
    assert result.note == "stored fractions: 1 %, 5 %, 25 %; showing 5 %"
    assert compute(state, "erf_count", view, 0.05).note == ""
    mode_note = compute(state, "erf_count", view, 0.05, "pixel").note
    assert "threshold mode global" in mode_note and "pixel" in mode_note
    assert "stored fractions" not in mode_note


def test_fulfillment_and_mass_radius_are_the_stored_maps(erf, state):
    stem = erf.stems[0]
    maps = saved(erf, stem)
    view = stored_view(state, stem)
    fulfillment = maps.fulfillment.numpy().astype(np.float32)
    np.testing.assert_array_equal(shown(state, "erf_fulfillment", view, 0.3), fulfillment[2])
    assert maps.mass_fractions == (0.5, 0.9)
    radius = maps.mass_radius.numpy().astype(np.float32)
    np.testing.assert_array_equal(shown(state, "erf_mass_radius", view), radius[1])
    assert compute(state, "erf_mass_radius", view).note == ""


def test_pixels_not_computed_are_blank(erf, state):
    stem = erf.stems[1]
    maps = saved(erf, stem)
    view = stored_view(state, stem)
    computed = maps.computed.numpy()
    assert computed.sum() == (CROP // 2) ** 2
    counts = shown(state, "erf_count", view, 0.01)
    assert np.isnan(counts[~computed]).all()
    np.testing.assert_array_equal(counts[computed], maps.count[0].numpy()[computed])
    assert "not computed are blank" in compute(state, "erf_count", view, 0.01).note
    radius = shown(state, "erf_mass_radius", view)
    np.testing.assert_array_equal(radius[computed], maps.mass_radius[1].numpy()[computed])
    note = compute(state, "erf_mass_radius", view).note
    assert "stored mass fractions: 50 %, 99 %; showing 99 %" in note


def test_other_crops_and_checkpoints_get_the_how_to_note(erf, state):
    stem = erf.stems[0]
    matching = stored_view(state, stem)
    assert state.maps_for("m0", matching) is not None
    other_crop = state.view(f"data/{stem}", "crop", CROP, 0, 0)[0]
    full = state.view(f"data/{stem}", "full")[0]
    for model, view in (("m0", other_crop), ("m0", full), ("m1", matching)):
        assert state.maps_for(model, view) is None
        for layer in ("erf_count", "erf_fulfillment", "erf_mass_radius"):
            result = compute(state, layer, view, model=model)
            assert result.values is None
            assert "vessel-lens erf" in result.note and f"--images {stem}" in result.note
            assert "--erf" in result.note
    # the view at (0, 0) is not the centred crop: only a box makes its file
    assert f"--crop-box 0,0,{CROP},{CROP} " in compute(state, "erf_count", other_crop).note
    assert "--full" in compute(state, "erf_count", full).note
    assert str(erf.other) in compute(state, "erf_count", matching, model="m1").note
    random = compute(state, "erf_count", matching, model="random")
    assert random.values is None and "random" in random.note
    figure = handlers.map_panel(
        state, other_crop, "erf_count", parse_threshold(0.05, "global"), "m0"
    )
    assert figure["data"] == []


def test_maps_and_jacobian_stores_share_a_folder(erf):
    """A folder with a Jacobian store and the maps made from it: both are used, and the count
    map equals the one the app counts from the stored rows (global mode)."""
    from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians

    stem = erf.stems[0]
    mixed = erf.root / "mixed"
    extract_jacobians(
        ExtractConfig(
            checkpoint=str(erf.checkpoint),
            out=mixed,
            data=str(erf.data),
            split="all",
            crop=CROP,
            images=[stem],
            device="cpu",
            progress=False,
        )
    )
    run_erf(
        ErfConfig(
            from_jacobian=mixed, out=mixed, fractions=FRACTIONS, figures=False, progress=False
        )
    )
    state = make_state(erf, mixed)
    try:
        view = stored_view(state, stem)
        assert state.store_for("m0", view) is not None
        assert state.maps_for("m0", view) is not None
        maps = load_receptive_field_maps(mixed / f"{stem}.erf.npz")
        stored = shown(state, "erf_count", view, 0.05)
        np.testing.assert_array_equal(stored, maps.count[1].numpy().astype(np.float32))
        assert state.global_max("m0", view)[0] == pytest.approx(maps.global_max, rel=1e-5)
        np.testing.assert_array_equal(stored, shown(state, "significant", view, 0.05))
    finally:
        state.jobs.shutdown(wait=10)


def test_the_map_panel_request_shows_the_stored_count(erf):
    config = AppConfig(checkpoints=[str(erf.checkpoint)], data=str(erf.data), erf=erf.maps)
    app = create_app(config)
    try:
        client = app.server.test_client()
        dependencies = client.get(testing.DEPENDENCIES).get_json()
        values = testing.layout_values(client.get(testing.LAYOUT).get_json())
        assert {"label": "Fulfillment (erf)", "value": "erf_fulfillment"} in values["layer.options"]
        state = app.vessel_lens_state
        stem = erf.stems[0]
        view = stored_view(state, stem)
        values.update(
            {
                "view-store.data": {"view": view.as_dict(), "pixel": {"row": 3, "col": 4}},
                "layer.value": "erf_count",
                "threshold-store.data": {"fraction": 0.04},
                "threshold-mode.value": "global",
                "model.value": "m0",
            }
        )
        body = testing.callback_request(dependencies, "graph-map.figure", values, "layer.value")
        response = client.post(testing.UPDATE, json=body)
        assert response.status_code == 200
        figure = response.get_json()["response"]["graph-map"]["figure"]
        z = decode_typed_array(figure["data"][0]["z"]).reshape(CROP, CROP)
        np.testing.assert_array_equal(z, saved(erf, stem).count[1].numpy().astype(np.float32))
        assert "showing 5 %" in figure["layout"]["title"]["text"]
    finally:
        app.vessel_lens_state.jobs.shutdown(wait=10)


def test_files_of_another_image_with_the_same_name_are_not_used(erf, tmp_path):
    """Map files and Jacobian stores match a view by its pixels, not only by the image name:
    another synthetic dataset has the same stems but different images."""
    from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians

    stem = erf.stems[0]
    extract_jacobians(
        ExtractConfig(
            checkpoint=str(erf.checkpoint),
            out=erf.maps.parent / "grads-same",
            data=str(erf.data),
            split="all",
            images=[stem],
            crop=CROP,
            device="cpu",
            progress=False,
        )
    )
    other_data = tmp_path / "other"
    write_synthetic_dataset(other_data, count=2, size=SIZE, seed=5, progress=False)
    for folder in (erf.maps, erf.maps.parent / "grads-same"):
        config = AppConfig(checkpoints=[str(erf.checkpoint)], data=str(other_data), erf=folder)
        other = AppState(config)
        try:
            view = other.view(f"data/{stem}", "crop", CROP)[0]
            assert (view.top, view.left) == ((SIZE - CROP) // 2,) * 2
            assert other.maps_for("m0", view) is None and other.store_for("m0", view) is None
        finally:
            other.jobs.shutdown(wait=10)
    same = make_state(erf, erf.maps.parent / "grads-same")
    try:
        view = same.view(f"data/{stem}", "crop", CROP)[0]
        assert same.store_for("m0", view) is not None
    finally:
        same.jobs.shutdown(wait=10)
