"""Non-square images whose sides are not multiples of 16 (100x75, 75x100, 565x584, the size of
DRIVE's fundus photographs) through every command: training crops, evaluate, predict, jacobian
--crop, erf, erf-stats, report and the app."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vessel_lens.cli import main
from vessel_lens.training import TrainConfig, train

SIZES = {"s00": (100, 75), "s01": (565, 584), "s02": (75, 100)}


@pytest.fixture(scope="module")
def odd(tmp_path_factory, sample_arrays, fov_mask, write_image):
    """A dataset of the three sizes with field-of-view masks, and a width-4 model trained on
    it for one epoch of 48x48 crops."""
    root = tmp_path_factory.mktemp("odd")
    data = root / "data"
    for i, (stem, (height, width)) in enumerate(SIZES.items()):
        image, label, _ = sample_arrays(height, width, seed=i)
        write_image(data / "images" / f"{stem}.png", image)
        write_image(data / "labels" / f"{stem}.png", label)
        write_image(data / "masks" / f"{stem}.png", fov_mask(height, width))
    config = TrainConfig(data=str(data), width=4, epochs=1, crops_per_image=2, batch_size=2,
                         crop_size=48, schedule="constant", device="cpu")  # fmt: skip
    summary = train(config, root / "run", progress=False)
    return SimpleNamespace(root=root, data=data, run=root / "run", summary=summary)


def test_training_crops_come_from_every_size(odd):
    assert odd.summary.epochs_done == 1
    assert (odd.run / "best.pt").is_file()
    rows = list(csv.DictReader((odd.run / "metrics.csv").open()))
    assert np.isfinite(float(rows[0]["val_dice"]))


@pytest.mark.parametrize("tile", ["0", "64"])
def test_evaluate_every_size(odd, tile, capsys):
    out = odd.root / f"eval-{tile}"
    assert main(["evaluate", "--checkpoint", str(odd.run), "--data", str(odd.data), "--split",
                 "all", "--out", str(out), "--tile", tile, "--device", "cpu"]) == 0  # fmt: skip
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert sorted(r["stem"] for r in rows) == sorted(SIZES)
    assert all(np.isfinite(float(r["dice"])) for r in rows)
    assert sorted(p.stem for p in (out / "panels").glob("*.png")) == sorted(SIZES)
    assert json.loads((out / "metrics.json").read_text())["masks"] is True


def test_predict_every_size_with_and_without_windows(odd):
    for tile in ("0", "48"):
        out = odd.root / f"pred-{tile}"
        assert main(["predict", "--checkpoint", str(odd.run), "--images",
                     str(odd.data / "images"), "--out", str(out), "--tile", tile]) == 0  # fmt: skip
        for stem, (height, width) in SIZES.items():
            for kind in ("probability", "mask"):
                with Image.open(out / f"{stem}_{kind}.png") as image:
                    assert image.size == (width, height)


def test_jacobian_crop_erf_and_erf_stats_on_every_size(odd):
    common = ["--checkpoint", str(odd.run), "--data", str(odd.data), "--split", "all",
              "--crop", "24", "--device", "cpu", "--no-progress"]  # fmt: skip
    grads = odd.root / "grads"
    assert main(["jacobian", *common, "--out", str(grads)]) == 0
    assert sorted(p.name for p in grads.glob("*.zarr")) == [f"{s}.zarr" for s in sorted(SIZES)]
    maps = odd.root / "maps"
    assert main(["erf", *common, "--out", str(maps), "--no-figures"]) == 0
    from vessel_lens.interpret import load_receptive_field_maps

    for stem, (height, width) in SIZES.items():
        stored = load_receptive_field_maps(maps / f"{stem}.erf.npz")
        top, left, h, w = stored.metadata["crop_box"]
        assert (h, w) == (24, 24)
        assert (top, left) == ((height - 24) // 2, (width - 24) // 2)
    assert main(["erf-stats", str(maps), "--data", str(odd.data)]) == 0
    assert (maps / "stats" / "stats_answer.csv").is_file()


def test_report_on_whole_non_square_images(odd):
    out = odd.root / "report"
    assert main(["report", "--checkpoint", str(odd.run), "--data", str(odd.data), "--split",
                 "all", "--images", "s00,s01", "--methods", "saliency", "--sanity-images", "0",
                 "--tile", "256", "--out", str(out), "--device", "cpu", "--threads", "1",
                 "--no-progress"]) == 0  # fmt: skip
    html = (out / "report.html").read_text()
    assert "s00 (100x75)" in html and "s01 (565x584)" in html
    rows = list(csv.DictReader((out / "tables" / "pixels.csv").open()))
    masks = {stem: torch.from_numpy(np.asarray(Image.open(odd.data / "masks" / f"{stem}.png")) > 0)
             for stem in ("s00", "s01")}  # fmt: skip
    assert rows and all(bool(masks[r["image"]][int(r["row"]), int(r["col"])]) for r in rows)


def test_app_on_non_square_images(odd):
    pytest.importorskip("dash")
    from vessel_lens.app import handlers
    from vessel_lens.app.config import AppConfig
    from vessel_lens.app.figures import decode_typed_array
    from vessel_lens.app.layers import discover_layers
    from vessel_lens.app.methods import discover_methods
    from vessel_lens.app.pixel import analyse_pixel, parse_threshold
    from vessel_lens.app.state import AppState

    discover_methods()
    discover_layers()
    state = AppState(AppConfig(checkpoints=[str(odd.run / "best.pt")], data=str(odd.data)))
    try:
        threshold = parse_threshold(0.05, "pixel")
        view, note = state.view("data/s00", "full")
        assert (view.height, view.width) == (100, 75) and note == ""
        errors = handlers.map_panel(state, view, "errors", threshold, "m0")
        values = decode_typed_array(errors["data"][0]["z"]).reshape(100, 75)
        mask = state.sample("data/s00").mask.numpy()
        assert np.isnan(values[~mask]).all() and not np.isnan(values[mask]).any()
        analysis = analyse_pixel(state, "m0", view, 99, 74, threshold)
        assert analysis.numbers()["count"] >= 1
        large, note = state.view("data/s01", "full")
        assert (large.height, large.width) == (512, 512) and "565x584" in note
        probability = handlers.map_panel(state, large, "probability", threshold, "m0")
        assert decode_typed_array(probability["data"][0]["z"]).size == 512 * 512
        crop, _ = state.view("data/s02", "crop", 40, 30, 55)
        assert (crop.top, crop.left, crop.height) == (30, 55, 40)
        assert analyse_pixel(state, "m0", crop, 0, 39, threshold).numbers()["count"] >= 1
    finally:
        state.jobs.shutdown(wait=10)
