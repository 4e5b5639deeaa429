"""Precomputed files of off-centre crops (``--crop-box``) in the app: found for their view,
shown as the *stored crop*, and the how-to notes name the box that would match a view."""

from __future__ import annotations

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
from vessel_lens.app.layers import LayerContext, discover_layers, layers
from vessel_lens.app.pixel import parse_threshold
from vessel_lens.app.state import AppState
from vessel_lens.interpret import jacobian, load_receptive_field_maps
from vessel_lens.interpret.fields.run import ErfConfig, run_erf
from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians
from vessel_lens.interpret.thresholds import gradient_magnitude

SIZE = 48
BOX = (5, 17, 20, 28)  # off-centre, not square
FRACTIONS = (0.01, 0.05)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store of an off-centre box of the first image and the maps made from it, in one
    folder."""
    root = tmp_path_factory.mktemp("offcentre")
    checkpoint, _, model = tiny_app_files(root, seed=3, size=SIZE, count=2)
    stem = sorted(p.name.split(".")[0] for p in (root / "data" / "images").iterdir())[0]
    grads = root / "grads"
    extract_jacobians(
        ExtractConfig(
            checkpoint=str(checkpoint),
            out=grads,
            data=str(root / "data"),
            split="all",
            images=[stem],
            crop_box=BOX,
            device="cpu",
            progress=False,
        )
    )
    run_erf(
        ErfConfig(
            from_jacobian=grads, out=grads, fractions=FRACTIONS, figures=False, progress=False
        )
    )
    return SimpleNamespace(root=root, checkpoint=checkpoint, data=root / "data", stem=stem,
                           grads=grads, model=model.eval())  # fmt: skip


def make_state(stored, data=None, erf=None) -> AppState:
    discover_layers()
    config = AppConfig(
        checkpoints=[str(stored.checkpoint)],
        data=str(data or stored.data),
        erf=erf or stored.grads,
    )
    return AppState(config)


@pytest.fixture(scope="module")
def state(stored):
    state = make_state(stored)
    yield state
    state.jobs.shutdown(wait=10)


def compute(state, layer, view, fraction=0.05, mode="global"):
    return layers()[layer].compute(LayerContext(state, "m0", view, fraction, mode, None))


def computed(state, view):
    """The significant-pixel layer once the app has computed it for the view."""
    deadline = time.monotonic() + 120
    while (result := compute(state, "significant", view, mode="pixel")).task is not None:
        assert result.task.state in ("waiting", "running") and time.monotonic() < deadline
        time.sleep(0.05)
    return result


def test_the_stored_crop_opens_at_the_box_and_uses_the_stored_rows(stored, state):
    key = f"data/{stored.stem}"
    view, _ = state.view(key, "store")
    assert (view.top, view.left, view.height, view.width) == BOX
    shown = handlers.handle_view(state, key, "store", None, None, None, "m0", None, None)
    assert shown["stored"] and "crop 20x28 at (5, 17)" in shown["note"]
    image = view.crop(state.sample(key).image)
    full = jacobian(stored.model, image)
    for row, col in ((0, 0), (11, 20), (19, 27)):
        gradient, source = state.gradient("m0", view, row, col)
        assert source == "stored"
        torch.testing.assert_close(gradient, full[row * 28 + col], rtol=1e-4, atol=1e-7)
    value, note = state.global_max("m0", view)
    assert note.startswith("from store")
    assert value == pytest.approx(float(gradient_magnitude(full).max()), rel=1e-5)


def test_the_maps_of_the_box_fill_the_map_panel(stored, state):
    view, _ = state.view(f"data/{stored.stem}", "store")
    assert state.maps_for("m0", view) is not None
    maps = load_receptive_field_maps(stored.grads / f"{stored.stem}.erf.npz")
    figure = handlers.map_panel(state, view, "erf_count", parse_threshold(0.05, "global"), "m0")
    counts = decode_typed_array(figure["data"][0]["z"]).reshape(20, 28)
    np.testing.assert_array_equal(counts, maps.count[1].numpy().astype(np.float32))


def test_other_views_do_not_take_the_box_files(stored, state):
    key = f"data/{stored.stem}"
    for view in (
        state.view(key, "crop", 20, 5, 17)[0],  # same corner, square: another crop
        state.view(key, "crop", 28, 5, 17)[0],
        state.view(key, "full")[0],
    ):
        assert state.store_for("m0", view) is None and state.maps_for("m0", view) is None


def test_the_how_to_notes_name_the_box_of_the_view(stored, state):
    """A view that is neither the whole image nor its centred square is made by --crop-box:
    the notes say so, and the file that option makes is then found for the view."""
    key = f"data/{stored.stem}"
    off = state.view(key, "crop", 24, 3, 7)[0]
    centred = state.view(key, "crop", 24)[0]
    full = state.view(key, "full")[0]
    assert "--crop-box 3,7,24,24 " in compute(state, "erf_count", off).note
    assert "--crop 24 " in compute(state, "erf_count", centred).note
    assert "--full " in compute(state, "erf_count", full).note
    # the count map is computed in the app; its status line says how to get every pixel
    assert "--crop-box 3,7,24,24 " in computed(state, off).status
    assert "--full " in computed(state, full).status

    folder = stored.root / "made-from-the-note"
    run_erf(
        ErfConfig(
            out=folder,
            checkpoint=str(stored.checkpoint),
            data=str(stored.data),
            split="all",
            images=[stored.stem],
            crop_box=(3, 7, 24, 24),
            fractions=FRACTIONS,
            device="cpu",
            figures=False,
            progress=False,
        )
    )
    other = make_state(stored, erf=folder)
    try:
        assert other.maps_for("m0", other.view(key, "crop", 24, 3, 7)[0]) is not None
    finally:
        other.jobs.shutdown(wait=10)


def test_a_stored_box_of_an_image_outside_the_dataset_is_its_own_image(stored, make_dataset):
    """With another dataset (other stems), the store is offered as an image of its own: its
    view is the stored crop, matched to the store through the store's box."""
    other_data = make_dataset(count=1, size=(SIZE, SIZE))
    state = make_state(stored, data=other_data)
    try:
        key = f"store/{stored.stem}"
        assert key in [option["value"] for option in state.image_options()]
        view, _ = state.view(key, "store")
        assert (view.top, view.left, view.height, view.width) == (0, 0, 20, 28)
        assert state.view_source(view) == (stored.stem, BOX)
        assert state.store_for("m0", view) is not None
        assert state.gradient("m0", view, 4, 9)[1] == "stored"
        assert state.maps_for("m0", view) is not None
    finally:
        state.jobs.shutdown(wait=10)
