"""Dataset validation: every problem becomes one error or warning line naming its file."""

from __future__ import annotations

import numpy as np

from vessel_lens.data.check import check_dataset


def rows(report) -> dict[str, str]:
    return dict(report.summary_rows())


def test_good_dataset_has_no_problems(make_dataset):
    root = make_dataset(count=4, splits={"train": ["s00", "s01"], "val": ["s02"], "test": ["s03"]})
    report = check_dataset(root, crop_size=32, progress=False)
    assert report.ok and report.errors == [] and report.warnings == []
    assert len(report.samples) == 4
    summary = rows(report)
    assert summary["samples"] == "4"
    assert summary["sizes"] == "32x32 (4)"
    assert summary["split"] == "train 2, val 1, test 1 (dataset's own)"
    # every label of the fixture is a 5-row band across 32 columns
    assert summary["vessel fraction"].startswith(f"mean {5 / 32:.3f}")


def test_dataset_without_split_reports_a_seeded_one(make_dataset):
    report = check_dataset(make_dataset(count=5), progress=False)
    assert report.split_source == "none shipped; seeded"
    assert sum(report.split_sizes.values()) == 5


def test_non_binary_label_warns_and_names_the_file(make_dataset, write_image, sample_arrays):
    root = make_dataset(count=3)
    _, label, _ = sample_arrays(32, 32, seed=1)
    label[label > 0] = 200
    label[0, :4] = 100
    write_image(root / "labels" / "s01.png", label)
    report = check_dataset(root, progress=False)
    assert report.ok
    assert len(report.warnings) == 1
    assert str(root / "labels" / "s01.png") in report.warnings[0]
    assert "3 distinct values" in report.warnings[0]


def test_label_without_vessel_warns(make_dataset, write_image):
    root = make_dataset(count=2)
    write_image(root / "labels" / "s00.png", np.zeros((32, 32), dtype=np.uint8))
    write_image(root / "skeletons" / "s00.png", np.zeros((32, 32), dtype=np.uint8))
    report = check_dataset(root, progress=False)
    assert report.ok
    assert report.warnings == [f"{root / 'labels' / 's00.png'}: label has no vessel pixel"]


def test_skeleton_outside_label_warns(make_dataset, write_image):
    root = make_dataset(count=2)
    skeleton = np.zeros((32, 32), dtype=np.uint8)
    skeleton[0, :3] = 255  # the fixture's bands never touch row 0
    write_image(root / "skeletons" / "s01.png", skeleton)
    report = check_dataset(root, progress=False)
    assert report.ok
    assert len(report.warnings) == 1 and "3 skeleton pixel(s)" in report.warnings[0]


def test_size_mismatch_is_an_error_naming_the_label(make_dataset, write_image):
    root = make_dataset(count=3)
    write_image(root / "labels" / "s02.png", np.full((32, 40), 255, dtype=np.uint8))
    report = check_dataset(root, progress=False)
    assert not report.ok
    assert len(report.errors) == 1
    assert report.errors[0].startswith(f"{root / 'labels' / 's02.png'}: label is 32x40")
    assert len(report.samples) == 2


def test_crop_size_larger_than_images_is_one_error_per_image(make_dataset):
    root = make_dataset(count=3)
    report = check_dataset(root, crop_size=48, progress=False)
    assert len(report.errors) == 3
    for i, line in enumerate(report.errors):
        assert line.startswith(str(root / "images" / f"s{i:02d}.png"))
        assert "smaller than the crop size 48" in line


def test_corrupt_image_is_one_error_and_the_rest_still_loads(make_dataset):
    root = make_dataset(count=3)
    (root / "images" / "s01.png").write_bytes(b"not a png at all")
    report = check_dataset(root, progress=False)
    assert len(report.errors) == 1 and str(root / "images" / "s01.png") in report.errors[0]
    assert [s.stem for s in report.samples] == ["s00", "s02"]


def test_unindexable_dataset_is_one_error(make_dataset):
    root = make_dataset(count=2)
    (root / "labels" / "s00.png").unlink()
    report = check_dataset(root, progress=False)
    assert report.index is None and report.samples == []
    assert len(report.errors) == 1 and "image has no label" in report.errors[0]
    assert report.summary_rows() == []


def test_missing_dataset_is_one_error(tmp_path):
    report = check_dataset(tmp_path / "absent", progress=False)
    assert report.errors == [f"{tmp_path / 'absent'}: dataset not found"]
