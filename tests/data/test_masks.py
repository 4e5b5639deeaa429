"""Field-of-view masks: found in folders and manifests, validated, and carried with the crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vessel_lens.cli import main
from vessel_lens.data.check import check_dataset
from vessel_lens.data.datasets import CropDataset, WholeImageDataset
from vessel_lens.data.index import index_dataset
from vessel_lens.data.samples import load_sample, load_samples
from vessel_lens.data.source import open_dataset
from vessel_lens.data.transforms import paired_crop_flip
from vessel_lens.errors import DataError


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_folder_masks_are_matched_by_stem(make_dataset, fov_mask):
    root = make_dataset(count=2, size=(20, 28), masks=True)
    index = index_dataset(root)
    assert index.has_masks
    assert [s.mask.name for s in index.samples] == ["s00.png", "s01.png"]
    sample = load_sample(index.samples[0])
    assert sample.mask.dtype == torch.bool
    assert torch.equal(sample.mask, torch.from_numpy(fov_mask(20, 28) > 0))
    assert open_dataset(root).has_masks


def test_folder_without_masks_has_none(make_dataset):
    root = make_dataset(count=1)
    assert not index_dataset(root).has_masks
    assert load_samples(index_dataset(root).samples)[0].mask is None
    assert not open_dataset(root).has_masks


def test_image_without_mask_is_named(make_dataset, capsys):
    root = make_dataset(count=2, masks=True)
    (root / "masks" / "s01.png").unlink()
    with pytest.raises(DataError, match=r"s01.png: image has no mask in .*masks"):
        index_dataset(root)
    assert main(["data", "check", "--data", str(root)]) != 0
    [line] = error_lines(capsys)
    assert "s01" in line and "no mask" in line


def test_orphan_mask_is_named(make_dataset, write_image, fov_mask):
    root = make_dataset(count=1, masks=True)
    write_image(root / "masks" / "zz.png", fov_mask(32, 32))
    with pytest.raises(DataError, match=r"zz\.png: mask has no image with stem 'zz'"):
        index_dataset(root)


def write_manifest(root, rows: list[str], header: str = "image,label,mask") -> str:
    path = root / "pairs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_manifest_mask_column_with_other_stems(make_dataset, write_image, fov_mask):
    root = make_dataset(count=2, size=(20, 24))
    for i in range(2):
        write_image(root / "fov" / f"{i}_field.gif", fov_mask(20, 24))
    csv = write_manifest(
        root, [f"images/s0{i}.png,labels/s0{i}.png,fov/{i}_field.gif" for i in range(2)]
    )
    samples = open_dataset(csv).samples
    assert all(
        torch.equal(s.mask, torch.from_numpy(fov_mask(20, 24) > 0)) for s in samples.values()
    )


def test_manifest_mask_column_filled_on_some_rows_is_refused(make_dataset):
    root = make_dataset(count=2, masks=True)
    csv = write_manifest(
        root, ["images/s00.png,labels/s00.png,masks/s00.png", "images/s01.png,labels/s01.png,"]
    )
    with pytest.raises(DataError, match="the mask column is empty on some rows"):
        index_dataset(csv)


def test_manifest_missing_mask_file_is_one_line(make_dataset, capsys):
    root = make_dataset(count=1)
    csv = write_manifest(root, ["images/s00.png,labels/s00.png,masks/gone.png"])
    assert main(["data", "check", "--data", csv]) != 0
    [line] = error_lines(capsys)
    assert "gone.png" in line and "not found" in line
    assert main(["evaluate", "--checkpoint", "vessmap-w16", "--data", csv]) != 0
    [line] = error_lines(capsys)
    assert "gone.png" in line and "not found" in line


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("size", "mask is 20x24 but image s00.png is 32x32"),
        ("grey", "mask has 3 distinct values; a field-of-view mask must be binary"),
        ("empty", "mask is empty"),
    ],
)
def test_bad_masks_are_one_clear_line_everywhere(
    make_dataset, write_image, fov_mask, capsys, problem, expected
):
    root = make_dataset(count=2, masks=True)
    bad = {
        "size": fov_mask(20, 24),
        "grey": np.where(fov_mask(32, 32) > 0, 255, np.eye(32, dtype=np.uint8) * 7),
        "empty": np.zeros((32, 32), np.uint8),
    }[problem].astype(np.uint8)
    write_image(root / "masks" / "s00.png", bad)
    with pytest.raises(DataError, match=expected):
        load_samples(index_dataset(root).samples)
    assert main(["data", "check", "--data", str(root)]) == 1
    [line] = error_lines(capsys)
    assert expected in line and "masks/s00.png" in line
    for command in (["evaluate", "--checkpoint", "vessmap-w16"], ["train", "--epochs", "1"]):
        out = ["--out", str(root.parent / f"out-{command[0]}")]
        assert main([*command, "--data", str(root), *out]) == 2
        [line] = error_lines(capsys)
        assert expected in line


def test_check_gives_each_problem_of_a_mask_its_own_line(make_dataset, write_image):
    root = make_dataset(count=2, masks=True)
    write_image(root / "masks" / "s01.png", np.zeros((20, 24), np.uint8))
    report = check_dataset(root, progress=False)
    assert len(report.errors) == 2
    assert "mask is 20x24" in report.errors[0] and "mask is empty" in report.errors[1]
    assert all("s01.png" in e for e in report.errors)


def test_check_summarises_masks_and_warns_about_vessels_outside(make_dataset, write_image):
    root = make_dataset(count=2, masks=True)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    write_image(root / "masks" / "s00.png", mask)
    report = check_dataset(root, progress=False)
    assert report.ok
    rows = dict(report.summary_rows())
    assert rows["masks"].startswith("yes (field of view: mean")
    [warning] = [w for w in report.warnings if "s00" in w]
    assert "vessel pixel(s) lie outside the mask" in warning and "masks/s00.png" in warning
    assert (
        "no (every pixel counts)"
        in dict(check_dataset(make_dataset("plain"), progress=False).summary_rows())["masks"]
    )


@pytest.mark.parametrize("seed", range(6))
def test_mask_travels_with_image_and_label_through_crops_flips_and_turns(seed):
    image = torch.arange(30 * 40, dtype=torch.float32).reshape(1, 30, 40)
    label = (image[0] % 7) == 0
    mask = (image[0] % 5) < 2
    generator = torch.Generator().manual_seed(seed)
    crop_image, crop_label, crop_mask = paired_crop_flip([image, label, mask], 16, generator)
    # each output pixel holds the index of the input pixel it came from
    source = crop_image[0].long()
    assert torch.equal(crop_label, label.flatten()[source])
    assert torch.equal(crop_mask, mask.flatten()[source])


def test_crop_and_whole_image_items_carry_the_mask(make_dataset):
    samples = list(open_dataset(make_dataset(count=2, masks=True, size=(30, 40))).samples.values())
    crops = CropDataset(samples, 16, crops_per_image=3, seed=1)
    for i in range(len(crops)):
        item = crops[i]
        assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.bool
    whole = WholeImageDataset(samples)[1]
    assert torch.equal(whole["mask"], samples[1].mask)
    plain = list(open_dataset(make_dataset("plain", count=1)).samples.values())
    assert bool(CropDataset(plain, 16)[0]["mask"].all())
    assert bool(WholeImageDataset(plain)[0]["mask"].all())
