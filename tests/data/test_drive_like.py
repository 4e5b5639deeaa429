"""End to end on a dataset laid out like DRIVE, as the manual's worked example (docs/data.md): a CSV manifest
over LZW-compressed RGB TIFF images, palette GIF labels with other stems and GIF field-of-view
masks. Loads, trains, evaluates inside the masks, and runs jacobian, erf, erf-stats, report and
the app. Tiny images (sides not multiples of 16), a width-4 model, two epochs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from vessel_lens.cli import main
from vessel_lens.data.source import open_dataset

HEIGHT, WIDTH = 58, 53
STEMS = ("21", "22", "23", "24")


@pytest.fixture(scope="module")
def drive(tmp_path_factory, sample_arrays, fov_mask, write_palette_gif):
    root = tmp_path_factory.mktemp("drive")
    rows = ["image,label,mask"]
    for i, number in enumerate(STEMS):
        grey, label, _ = sample_arrays(HEIGHT, WIDTH, seed=i)
        rgb = np.stack([grey, grey // 2, grey // 4], axis=-1)  # fundus photographs are red
        image = f"images/{number}_training.tif"
        (root / "images").mkdir(exist_ok=True)
        tifffile.imwrite(root / image, rgb, photometric="rgb", compression="lzw")
        manual = f"1st_manual/{number}_manual1.gif"
        write_palette_gif(root / manual, label > 0, [(0, 0, 0), (255, 255, 255)])
        mask = f"mask/{number}_training_mask.gif"
        write_palette_gif(root / mask, fov_mask(HEIGHT, WIDTH) > 0, [(0, 0, 0), (255, 255, 255)])
        rows.append(f"{image},{manual},{mask}")
    (root / "drive.csv").write_text("\n".join(rows) + "\n")
    return root


def run(*args: str) -> None:
    assert main(list(args)) == 0, args


def test_the_drive_like_layout_end_to_end(drive, tmp_path, capsys):
    manifest = str(drive / "drive.csv")
    assert tifffile.TiffFile(drive / "images" / "21_training.tif").pages[0].compression == 5
    run("data", "check", "--data", manifest)
    assert "masks            yes" in capsys.readouterr().out
    dataset = open_dataset(manifest)
    assert sorted(dataset.samples) == [f"{n}_training" for n in STEMS]
    assert dataset.has_masks and dataset.samples["21_training"].size == (HEIGHT, WIDTH)

    runs = tmp_path / "run"
    run("train", "--data", manifest, "--out", str(runs), "--width", "4", "--epochs", "2",
        "--crop-size", "32", "--crops-per-image", "2", "--batch-size", "2",
        "--max-minutes", "2", "--device", "cpu", "--no-progress")  # fmt: skip
    assert "mask_loss: true" in (runs / "config.yaml").read_text()

    evaluation = tmp_path / "eval"
    run("evaluate", "--checkpoint", str(runs), "--data", manifest, "--split", "all",
        "--out", str(evaluation))  # fmt: skip
    printed = capsys.readouterr().out.split("checkpoints in")[-1]  # after train's line
    assert "inside the field-of-view masks" in printed and "auc" in printed
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["masks"] is True and metrics["images"] == len(STEMS)

    common = ["--checkpoint", str(runs), "--data", manifest, "--split", "all", "--crop", "24",
              "--device", "cpu", "--no-progress"]  # fmt: skip
    run("jacobian", *common, "--out", str(tmp_path / "grads"), "--images", "21_training")
    assert (tmp_path / "grads" / "21_training.zarr").is_dir()
    maps = tmp_path / "maps"
    run("erf", *common, "--out", str(maps), "--images", "21_training,22_training")
    run("erf-stats", str(maps), "--data", manifest)
    answer = list(csv.DictReader((maps / "stats" / "stats_answer.csv").open()))
    assert answer and int(answer[0]["images"]) == 2

    report = tmp_path / "report"
    run("report", "--checkpoint", str(runs), "--data", manifest, "--split", "all",
        "--max-images", "1", "--methods", "saliency,integrated_gradients", "--erf", str(maps),
        "--out", str(report), "--device", "cpu", "--threads", "1", "--no-progress")  # fmt: skip
    html = (report / "report.html").read_text()
    assert f"({HEIGHT}x{WIDTH})" in html and "field of view" in html


def test_the_app_on_the_drive_like_layout(drive, tmp_path):
    pytest.importorskip("dash")
    from vessel_lens.app import create_app, handlers, testing
    from vessel_lens.app.config import AppConfig
    from vessel_lens.app.figures import decode_typed_array
    from vessel_lens.app.pixel import parse_threshold
    from vessel_lens.models import create_model, save_checkpoint

    checkpoint = save_checkpoint(
        tmp_path / "tiny.pt", create_model("resnet_seg", width=4), "resnet_seg", {"width": 4}
    )
    app = create_app(AppConfig(checkpoints=[str(checkpoint)], data=str(drive / "drive.csv")))
    state = app.vessel_lens_state
    try:
        client = app.server.test_client()
        assert client.get("/").status_code == 200
        view, note = state.view("data/21_training", "full")
        assert (view.height, view.width) == (HEIGHT, WIDTH) and note == ""
        dependencies = client.get(testing.DEPENDENCIES).get_json()
        body = testing.pixel_request(dependencies, {"view": view.as_dict()}, (30, 26))
        response = client.post("/_dash-update-component", json=body)
        assert response.status_code == 200
        assert response.get_json()["response"]["message"]["children"] == ""
        errors = handlers.map_panel(state, view, "errors", parse_threshold(0.05, "pixel"), "m0")
        values = decode_typed_array(errors["data"][0]["z"]).reshape(HEIGHT, WIDTH)
        inside = state.sample("data/21_training").mask.numpy()
        assert np.isnan(values[~inside]).all() and not np.isnan(values[inside]).any()
    finally:
        state.jobs.shutdown(wait=10)
