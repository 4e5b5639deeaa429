"""The zero-shot sanity line: training records statistics of its data, and evaluate warns when
the evaluated data lies far outside them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vessel_lens.cli import main
from vessel_lens.data.samples import Sample
from vessel_lens.data.source import open_dataset
from vessel_lens.data.statistics import data_statistics, distribution_warnings
from vessel_lens.models import read_checkpoint
from vessel_lens.training import TrainConfig, train


def test_statistics_of_samples_by_hand():
    image = torch.zeros(1, 4, 6)
    image[0, :, :3] = 0.5  # mean 0.25
    label = torch.zeros(4, 6, dtype=torch.bool)
    label[0] = True  # 6 of 24
    other = Sample("b", torch.full((1, 8, 5), 0.75), torch.ones(8, 5, dtype=torch.bool))
    stats = data_statistics([Sample("a", image, label), other])
    assert stats["images"] == 2
    assert stats["intensity_mean"] == pytest.approx(0.5)
    assert stats["intensity_image_mean_std"] == pytest.approx(0.25)
    assert stats["vessel_fraction"] == pytest.approx((6 + 40) / (24 + 40))
    assert (stats["vessel_fraction_min"], stats["vessel_fraction_max"]) == (0.25, 1.0)
    assert (stats["size_min"], stats["size_max"]) == ([4, 5], [8, 6])
    pooled = torch.cat([image.flatten(), other.image.flatten()])
    assert stats["intensity_std"] == pytest.approx(float(pooled.std(unbiased=False)), abs=1e-6)
    assert stats["masks"] is False


def test_statistics_count_pixels_inside_the_masks_only():
    image = torch.zeros(1, 4, 4)
    image[0, :, 2:] = 1.0
    label = torch.zeros(4, 4, dtype=torch.bool)
    label[:, 3] = True
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 1:3] = True  # one dark and one bright column, no vessel
    stats = data_statistics([Sample("a", image, label, mask=mask)])
    assert stats["intensity_mean"] == pytest.approx(0.5)
    assert stats["vessel_fraction"] == 0.0 and stats["masks"] is True


RECORD = {"images": 40, "intensity_mean": 0.13, "intensity_image_mean_std": 0.02,
          "vessel_fraction": 0.26}  # fmt: skip


def test_close_data_gives_no_warning():
    close = {"images": 5, "intensity_mean": 0.15, "vessel_fraction": 0.2}
    assert distribution_warnings(RECORD, close, predicted_fraction=0.3) == []


def test_each_far_statistic_is_one_line_naming_the_numbers():
    far = {"images": 5, "intensity_mean": 0.62, "vessel_fraction": 0.05}
    lines = distribution_warnings(RECORD, far, predicted_fraction=0.9)
    assert len(lines) == 3
    assert "mean intensity 0.620" in lines[0] and "24.5 std" in lines[0]
    assert "0.130" in lines[0] and "40 images" in lines[0]
    assert "labels 0.050" in lines[1] and "0.260" in lines[1] and "factor 3" in lines[1]
    assert "predictions 0.900" in lines[2]
    assert all("\n" not in line for line in lines)


def test_nearly_constant_training_brightness_uses_the_floor():
    record = dict(RECORD, intensity_image_mean_std=0.0)
    assert distribution_warnings(record, {"images": 1, "intensity_mean": 0.155}) == []
    assert len(distribution_warnings(record, {"images": 1, "intensity_mean": 0.2})) == 1


@pytest.mark.parametrize("recorded", [None, {}, {"epoch": 3}])
def test_no_record_means_no_check(recorded):
    far = {"images": 5, "intensity_mean": 0.99, "vessel_fraction": 0.9}
    assert distribution_warnings(recorded, far, 0.99) == []


def test_training_records_and_evaluate_warns_on_far_data(make_dataset, tmp_path, capsys):
    data = make_dataset(count=3, size=(32, 40), masks=True)
    config = TrainConfig(data=str(data), width=4, epochs=1, crops_per_image=2, batch_size=2,
                         crop_size=32, schedule="constant", device="cpu")  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    recorded = read_checkpoint(tmp_path / "run" / "last.pt").metadata["training_data"]
    dataset = open_dataset(data, checkpoint=read_checkpoint(tmp_path / "run" / "last.pt"))
    assert recorded == data_statistics(dataset.subset("train"))
    assert recorded["masks"] is True and recorded["size_min"] == [32, 40]

    def evaluate(folder, out) -> list[str]:
        args = ["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data",
                str(folder), "--split", "all", "--out", str(out), "--no-panels"]  # fmt: skip
        assert main(args) == 0
        err = capsys.readouterr().err
        return [line for line in err.splitlines() if line.startswith("warning:")]

    # the training data itself: its intensity and labels are in range (an epoch-old model's
    # predictions may not be)
    assert not [line for line in evaluate(data, tmp_path / "same") if "predictions" not in line]
    for path in (data / "images").iterdir():  # a far brighter dataset with the same labels
        bright = 255 - np.asarray(Image.open(path)) // 4
        Image.fromarray(bright.astype(np.uint8)).save(path)
    lines = evaluate(data, tmp_path / "bright")
    assert "mean intensity" in lines[0] and "std from the training images'" in lines[0]
    assert not any("of the labels" in line for line in lines)
    metrics = json.loads((tmp_path / "bright" / "metrics.json").read_text())
    assert metrics["warnings"] == [line.removeprefix("warning: ") for line in lines]
    assert metrics["training_data"] == recorded


def test_the_shipped_checkpoint_is_evaluated_without_a_check(make_dataset, tmp_path, capsys):
    data = make_dataset(count=2)
    args = ["evaluate", "--checkpoint", "vessmap-w16", "--data", str(data), "--split", "all",
            "--out", str(tmp_path / "e"), "--no-panels"]  # fmt: skip
    assert main(args) == 0
    assert "warning:" not in capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["warnings"] == []
