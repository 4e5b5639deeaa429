"""Indexing datasets: VessMAP-like folders paired by stem and CSV manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vessel_lens.data import index_dataset, load_samples
from vessel_lens.data.source import open_dataset
from vessel_lens.errors import DataError

# --- folders --------------------------------------------------------------------------------


def test_folder_pairs_files_by_stem_across_formats(tmp_path, write_image, sample_arrays):
    root = tmp_path / "ds"
    image, label, skeleton = sample_arrays(32, 32, seed=0)
    write_image(root / "images" / "b.tif", image)
    write_image(root / "images" / "a.png", image)
    write_image(root / "labels" / "a.gif", label)
    write_image(root / "labels" / "b.png", label)
    write_image(root / "skeletons" / "b.png", skeleton)
    write_image(root / "skeletons" / "a.png", skeleton)
    (root / "images" / "README.txt").write_text("not an image")
    write_image(root / "labels" / ".hidden.png", label)

    index = index_dataset(root)

    assert index.kind == "folder"
    assert index.stems == ["a", "b"]
    a, b = index.samples
    assert (a.image.name, a.label.name, a.skeleton.name) == ("a.png", "a.gif", "a.png")
    assert (b.image.name, b.label.name, b.skeleton.name) == ("b.tif", "b.png", "b.png")
    assert index.has_labels and index.has_skeletons
    assert index.splits == {}
    assert index.get("b") is b
    with pytest.raises(DataError, match="no sample named 'c'"):
        index.get("c")


def test_folder_without_labels_indexes_images_only(make_dataset):
    root = make_dataset(count=2)
    for path in (root / "labels").iterdir():
        path.unlink()
    (root / "labels").rmdir()
    index = index_dataset(root)
    assert [s.label for s in index.samples] == [None, None]
    assert not index.has_labels


def test_image_without_label_is_named(make_dataset):
    root = make_dataset(count=3)
    (root / "labels" / "s01.png").unlink()
    with pytest.raises(DataError, match="image has no label") as info:
        index_dataset(root)
    assert str(root / "images" / "s01.png") in str(info.value)


def test_image_without_skeleton_is_named(make_dataset):
    root = make_dataset(count=3)
    (root / "skeletons" / "s02.png").unlink()
    with pytest.raises(DataError, match="no skeleton") as info:
        index_dataset(root)
    assert str(root / "images" / "s02.png") in str(info.value)


@pytest.mark.parametrize("kind", ["labels", "skeletons"])
def test_orphan_label_or_skeleton_is_named(make_dataset, write_image, kind):
    root = make_dataset(count=2)
    orphan = write_image(root / kind / "zz.png", np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="has no image with stem 'zz'") as info:
        index_dataset(root)
    assert str(orphan) in str(info.value)


def test_duplicate_stems_are_refused(make_dataset, write_image):
    root = make_dataset(count=2)
    write_image(root / "images" / "s00.tif", np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="duplicate stem 's00'") as info:
        index_dataset(root)
    assert "s00.png" in str(info.value) and "s00.tif" in str(info.value)


def test_empty_images_folder_is_refused(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "notes.txt").write_text("nothing")
    with pytest.raises(DataError, match="holds no images"):
        index_dataset(tmp_path / "ds")


def test_folder_without_images_folder_is_refused(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="no images/ folder"):
        index_dataset(tmp_path / "ds")


def test_missing_path_and_wrong_file_kind_are_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        index_dataset(tmp_path / "absent")
    other = tmp_path / "list.txt"
    other.write_text("a\n")
    with pytest.raises(DataError, match="not a dataset folder"):
        index_dataset(other)


def test_split_files_are_read(make_dataset):
    root = make_dataset(count=4, splits={"train": ["s02", "s00"], "test": ["s01"]})
    (root / "splits" / "val.txt").write_text("\n  s03  \n\n")
    index = index_dataset(root)
    assert index.splits == {"train": ["s02", "s00"], "val": ["s03"], "test": ["s01"]}


def test_split_file_naming_a_missing_stem_is_refused(make_dataset):
    root = make_dataset(count=3, splits={"train": ["s00", "s01"], "val": ["s02", "ghost"]})
    with pytest.raises(DataError, match="'ghost'") as info:
        index_dataset(root)
    assert str(root / "splits" / "val.txt") in str(info.value)


def test_stem_twice_in_one_split_is_refused(make_dataset):
    root = make_dataset(count=3, splits={"train": ["s00", "s01", "s00"], "val": ["s02"]})
    with pytest.raises(DataError, match="lists stem 's00' more than once") as info:
        index_dataset(root)
    assert str(root / "splits" / "train.txt") in str(info.value)


def test_unreadable_split_file_is_refused(make_dataset):
    root = make_dataset(count=2, splits={"train": ["s00"]})
    (root / "splits" / "test.txt").write_bytes(b"\xff\xfe\x81 binary")
    with pytest.raises(DataError, match="cannot read split file") as info:
        index_dataset(root)
    assert str(root / "splits" / "test.txt") in str(info.value)


def test_stem_in_two_splits_is_refused(make_dataset):
    root = make_dataset(count=3, splits={"train": ["s00", "s01"], "test": ["s01", "s02"]})
    with pytest.raises(DataError, match="'s01' is in both train and test"):
        index_dataset(root)


# --- CSV manifests --------------------------------------------------------------------------


def write_drive_like(root, write_image, write_palette_gif, sample_arrays, count=2):
    """DRIVE-style names: ``NN_test.tif`` images, ``NN_manual1.gif`` palette labels."""
    for i in range(1, count + 1):
        image, label, _ = sample_arrays(32, 40, seed=i)
        write_image(root / "images" / f"{i:02d}_test.tif", image)
        write_palette_gif(
            root / "manual" / f"{i:02d}_manual1.gif", label > 0, [(0, 0, 0), (255, 255, 255)]
        )


def test_manifest_pairs_files_with_different_stems(
    tmp_path, write_image, write_palette_gif, sample_arrays
):
    write_drive_like(tmp_path, write_image, write_palette_gif, sample_arrays)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "image,label,split\n"
        "images/01_test.tif,manual/01_manual1.gif,train\n"
        "images/02_test.tif,manual/02_manual1.gif,test\n"
    )
    index = index_dataset(manifest)
    assert index.kind == "manifest"
    assert index.stems == ["01_test", "02_test"]
    assert index.samples[0].label == tmp_path / "manual" / "01_manual1.gif"
    assert index.splits == {"train": ["01_test"], "test": ["02_test"]}

    samples = load_samples(index.samples)
    for i, sample in enumerate(samples, start=1):
        image, label, _ = sample_arrays(32, 40, seed=i)
        np.testing.assert_allclose(sample.image[0].numpy(), image / 255.0, atol=1e-6)
        np.testing.assert_array_equal(sample.label.numpy(), label > 0)

    dataset = open_dataset(manifest)
    assert set(dataset.samples) == {"01_test", "02_test"}
    assert dataset.split_source == "dataset"


def test_manifest_paths_are_relative_to_the_csv_not_the_cwd(make_dataset, tmp_path, monkeypatch):
    root = make_dataset(count=2)
    manifest = root / "m.csv"
    manifest.write_text(
        "image,label,skeleton\n"
        "images/s00.png,labels/s00.png,skeletons/s00.png\n"
        f"{root / 'images' / 's01.png'},{root / 'labels' / 's01.png'},skeletons/s01.png\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    index = index_dataset(Path("..") / root.name / "m.csv")
    assert [s.image.resolve() for s in index.samples] == [
        root / "images" / "s00.png",
        root / "images" / "s01.png",
    ]
    assert index.has_skeletons
    assert len(load_samples(index.samples)) == 2


def test_manifest_with_bom_and_loose_header(make_dataset):
    root = make_dataset(count=2)
    manifest = root / "m.csv"
    manifest.write_text(
        " Image , LABEL \nimages/s00.png,labels/s00.png\n\nimages/s01.png,labels/s01.png\n",
        encoding="utf-8-sig",
    )
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    assert index_dataset(manifest).stems == ["s00", "s01"]


@pytest.mark.parametrize(
    ("header", "missing"), [("image,mask", "label"), ("img,label", "image"), ("", "image")]
)
def test_manifest_missing_column_is_named(tmp_path, header, missing):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{header}\n" + ("a.png,b.png\n" if header else ""))
    with pytest.raises(DataError, match=f"no '{missing}' column") as info:
        index_dataset(manifest)
    assert str(manifest) in str(info.value)


def test_manifest_duplicate_rows_are_refused(make_dataset):
    root = make_dataset(count=2)
    manifest = root / "m.csv"
    manifest.write_text(
        "image,label\nimages/s00.png,labels/s00.png\n"
        "images/s01.png,labels/s01.png\n./images/s00.png,labels/s00.png\n"
    )
    with pytest.raises(DataError, match="row 4 repeats image"):
        index_dataset(manifest)


def test_manifest_duplicate_stems_are_refused(make_dataset):
    root = make_dataset(count=1)
    manifest = root / "m.csv"
    manifest.write_text(
        "image,label\nimages/s00.png,labels/s00.png\nlabels/s00.png,labels/s00.png\n"
    )
    with pytest.raises(DataError, match="duplicate stem 's00'"):
        index_dataset(manifest)


def test_manifest_empty_entry_is_named(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\na.png,\n")
    with pytest.raises(DataError, match="row 2 has an empty 'label' entry"):
        index_dataset(manifest)


@pytest.mark.parametrize("row", ["a.png,b.png,c.png", ",,c.png"])
def test_manifest_row_with_more_fields_than_the_header_is_refused(tmp_path, row):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,label\n{row}\n")
    with pytest.raises(DataError, match="row 2 has 3 fields but the header names 2") as info:
        index_dataset(manifest)
    assert str(manifest) in str(info.value)


def test_manifest_trailing_empty_fields_are_ignored(make_dataset):
    root = make_dataset(count=1)
    manifest = root / "m.csv"
    manifest.write_text("image,label\nimages/s00.png,labels/s00.png,,\n,,\n")
    assert index_dataset(manifest).stems == ["s00"]


def test_manifest_without_rows_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\n\n")
    with pytest.raises(DataError, match="lists no samples"):
        index_dataset(manifest)


def test_manifest_that_is_not_text_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match="cannot read manifest"):
        index_dataset(manifest)


def test_manifest_split_column_accepts_any_case(make_dataset):
    root = make_dataset(count=3)
    manifest = root / "m.csv"
    manifest.write_text(
        "image,label,split\n"
        "images/s00.png,labels/s00.png,Train\n"
        "images/s01.png,labels/s01.png, val \n"
        "images/s02.png,labels/s02.png,TEST\n"
    )
    assert index_dataset(manifest).splits == {"train": ["s00"], "val": ["s01"], "test": ["s02"]}


def test_manifest_unknown_split_name_is_refused(make_dataset):
    root = make_dataset(count=2)
    manifest = root / "m.csv"
    manifest.write_text(
        "image,label,split\nimages/s00.png,labels/s00.png,train\n"
        "images/s01.png,labels/s01.png,validation\n"
    )
    with pytest.raises(DataError, match="row 3 has split 'validation'"):
        index_dataset(manifest)


@pytest.mark.parametrize("column", ["split", "skeleton"])
def test_manifest_partly_filled_optional_column_is_refused(make_dataset, column):
    root = make_dataset(count=2)
    value = "train" if column == "split" else "skeletons/s00.png"
    manifest = root / "m.csv"
    manifest.write_text(
        f"image,label,{column}\nimages/s00.png,labels/s00.png,{value}\n"
        "images/s01.png,labels/s01.png,\n"
    )
    with pytest.raises(DataError, match=f"the {column} column is empty on some rows"):
        index_dataset(manifest)


def test_manifest_pointing_at_a_missing_file_fails_on_load(make_dataset):
    root = make_dataset(count=1)
    manifest = root / "m.csv"
    manifest.write_text("image,label\nimages/s00.png,labels/gone.png\n")
    index = index_dataset(manifest)
    with pytest.raises(DataError, match="not found") as info:
        load_samples(index.samples)
    assert str(root / "labels" / "gone.png") in str(info.value)
