"""Integration tests on the real VessMAP data at ``../shared/data/vessmap`` (read-only)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from vessel_lens.cli import main
from vessel_lens.data import index_dataset
from vessel_lens.data.datasets import CropDataset
from vessel_lens.data.source import LoadedDataset, open_dataset
from vessel_lens.data.transforms import paired_crop_flip
from vessel_lens.models import create_model, load_model, save_checkpoint

pytestmark = pytest.mark.vessmap


@pytest.fixture(scope="module")
def vessmap(vessmap_root) -> LoadedDataset:
    return open_dataset(vessmap_root)


def own_split(root, name: str) -> list[str]:
    """The authors' split file, read without vessel-lens."""
    return (root / "splits" / f"{name}.txt").read_text().split()


def test_all_100_images_load_as_256x256_with_labels_and_skeletons(vessmap, vessmap_root):
    stems = sorted(p.stem for p in (vessmap_root / "images").glob("*.tiff"))
    assert len(stems) == 100
    assert sorted(vessmap.samples) == stems
    assert vessmap.has_skeletons
    for sample in vessmap.samples.values():
        assert sample.image.shape == (1, 256, 256) and sample.image.dtype == torch.float32
        assert sample.label.shape == (256, 256) and sample.label.dtype == torch.bool
        assert sample.label.any() and not sample.label.all()
        assert not (sample.skeleton & ~sample.label).any(), sample.stem


def test_images_and_labels_match_the_files(vessmap, vessmap_root):
    for stem in ("10084", sorted(vessmap.samples)[-1]):
        raw = tifffile.imread(vessmap_root / "images" / f"{stem}.tiff")
        assert raw.dtype == np.uint8
        np.testing.assert_allclose(vessmap.samples[stem].image[0].numpy(), raw / 255.0, atol=1e-7)
        label = np.asarray(Image.open(vessmap_root / "labels" / f"{stem}.png"))
        np.testing.assert_array_equal(vessmap.samples[stem].label.numpy(), label > 0)


def test_the_authors_split_is_used(vessmap, vessmap_root):
    assert vessmap.split_source == "dataset"
    sizes = {name: len(stems) for name, stems in vessmap.splits.items()}
    assert sizes == {"train": 40, "val": 10, "test": 50}
    for name in ("train", "val", "test"):
        assert vessmap.splits[name] == own_split(vessmap_root, name)
    assert len(vessmap.subset("test")) == 50


def test_skeleton_stays_inside_the_label_after_cropping(vessmap):
    samples = [vessmap.samples[s] for s in vessmap.splits["train"][:8]]
    generator = torch.Generator().manual_seed(0)
    for sample in samples:
        for _ in range(4):
            image, label, skeleton = paired_crop_flip(
                [sample.image, sample.label, sample.skeleton], 96, generator
            )
            assert image.shape == (1, 96, 96)
            assert label.shape == skeleton.shape == (96, 96)
            assert not (skeleton & ~label).any()
    dataset = CropDataset(samples, 64, crops_per_image=2, seed=3)
    for i in range(len(dataset)):
        item = dataset[i]
        assert not (item["skeleton"] & (item["label"] == 0)).any()


def test_crop_label_follows_the_image_on_real_data(vessmap):
    """Crop an index map with the same draw: it tells where every cropped pixel came from."""
    sample = vessmap.samples[vessmap.splits["train"][0]]
    where = torch.arange(256 * 256).reshape(1, 256, 256)
    for seed in range(6):
        image, label, skeleton, origin = paired_crop_flip(
            [sample.image, sample.label, sample.skeleton, where],
            80,
            torch.Generator().manual_seed(seed),
        )
        flat = origin.flatten()
        assert torch.equal(image.flatten(), sample.image.flatten()[flat])
        assert torch.equal(label.flatten(), sample.label.flatten()[flat])
        assert torch.equal(skeleton.flatten(), sample.skeleton.flatten()[flat])


@pytest.mark.parametrize("width", [8, 64])
def test_model_forward_on_a_whole_image(vessmap, width):
    image = vessmap.samples[vessmap.splits["test"][0]].image[None]
    model = create_model("resnet_seg", width=width).eval()
    with torch.no_grad():
        logits = model(image)
    assert logits.shape == (1, 2, 256, 256)
    assert torch.isfinite(logits).all()


def test_checkpoint_round_trip_on_a_real_image(vessmap, tmp_path):
    image = vessmap.samples[vessmap.splits["val"][0]].image[None]
    model = create_model("resnet_seg", width=8)
    model.train()
    with torch.no_grad():
        model(image)  # moves the BatchNorm running statistics off their defaults
    model.eval()
    path = save_checkpoint(tmp_path / "best.pt", model, "resnet_seg", {"width": 8})
    loaded, checkpoint = load_model(tmp_path)
    assert checkpoint.path == path
    with torch.no_grad():
        assert torch.equal(loaded(image), model(image))


def test_manifest_over_the_real_files(vessmap_root, tmp_path):
    stems = own_split(vessmap_root, "val")[:3]
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "image,label,split\n"
        + "".join(
            f"{vessmap_root / 'images' / f'{s}.tiff'},{vessmap_root / 'labels' / f'{s}.png'},val\n"
            for s in stems
        )
    )
    assert index_dataset(manifest).stems == stems
    dataset = open_dataset(manifest)
    assert dataset.splits["val"] == stems


def test_cli_data_check(capsys, vessmap_root, tmp_path):
    assert main(["data", "check", "--data", str(vessmap_root)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^\s+samples\s+100$", captured.out, flags=re.MULTILINE)
    assert "256x256 (100)" in captured.out
    assert "train 40, val 10, test 50" in captured.out
    assert re.search(r"^\s+vessel fraction\s+mean 0\.\d{3}", captured.out, flags=re.MULTILINE)
    assert not re.search(r"^error:", captured.err, flags=re.MULTILINE)

    preview = tmp_path / "preview.png"
    assert main(["data", "check", "--data", str(vessmap_root), "--preview", str(preview)]) == 0
    assert preview.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(preview) as img:
        assert min(img.size) > 200


@pytest.mark.vessmap
def test_shipped_checkpoint_beats_the_authors_unet_on_their_test_split(vessmap_root, tmp_path):
    """The documented command on the shipped model; the authors' U-Net reached Dice 0.900,
    AUC 0.986, accuracy 0.949 and MCC 0.866 on these 50 images."""
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", "vessmap-w16", "--data", str(vessmap_root),
            "--split", "test", "--out", str(out), "--no-panels", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 50
    mean = metrics["mean_over_images"]
    assert mean["dice"] >= 0.91
    assert mean["auc"] > 0.986 and mean["accuracy"] > 0.949 and mean["mcc"] > 0.866


@pytest.mark.vessmap
def test_receptive_field_maps_and_statistics_on_real_images(vessmap_root, tmp_path):
    """The documented erf / erf-stats commands on two test images' centred 32x32 crops with
    the shipped model: every pixel is computed, the statistics cover both classes."""
    stems = own_split(vessmap_root, "test")[:2]
    out = tmp_path / "erf"
    args = ["erf", "--checkpoint", "vessmap-w16", "--data", str(vessmap_root), "--split", "test",
            "--crop", "32", "--images", ",".join(stems), "--fractions", "0.01,0.1",
            "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    from vessel_lens.interpret import load_receptive_field_maps

    for stem in stems:
        maps = load_receptive_field_maps(out / f"{stem}.erf.npz")
        assert bool(maps.computed.all()) and maps.metadata["crop_box"] == [112, 112, 32, 32]
        assert bool((maps.count[0] >= maps.count[1]).all())  # a lower threshold keeps more
        assert (out / f"{stem}_erf.png").stat().st_size > 10_000
    assert main(["erf-stats", str(out), "--data", str(vessmap_root), "--split", "test"]) == 0
    with open(out / "stats" / "stats_by_class.csv") as handle:
        rows = list(csv.DictReader(handle))
    for grouping in ("predicted", "label", "outcome"):
        groups = {r["group"]: int(r["pixels"]) for r in rows if r["grouping"] == grouping}
        assert sum(groups.values()) == 2 * 32 * 32, grouping
    assert {r["group"] for r in rows if r["grouping"] == "predicted"} == {"background", "vessel"}
    assert (out / "stats" / "stats_by_distance.png").exists()
