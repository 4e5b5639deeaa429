"""Property-based bad-input tests: whatever files a microscope (or a fuzzer) produces, every
case ends in a documented successful conversion or one ``error:`` line and a non-zero exit —
never a traceback.

Run ``pytest tests/test_fuzz.py --hypothesis-show-statistics`` to see how many cases each
property tried (recorded in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from vessel_lens.cli import main
from vessel_lens.data import io as data_io
from vessel_lens.data.index import index_dataset
from vessel_lens.data.io import MIN_SIDE, read_image, read_mask
from vessel_lens.data.samples import load_samples
from vessel_lens.errors import CheckpointError, DataError, VesselLensError
from vessel_lens.models import create_model, read_checkpoint, save_checkpoint

FUZZ = settings(
    max_examples=int(os.environ.get("VESSEL_LENS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SUFFIXES = [".png", ".tif", ".tiff", ".jpg", ".gif", ".bmp"]


def fresh(tmp_path: Path) -> Path:
    """A new folder per hypothesis example (tmp_path is shared by all examples)."""
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    return folder


def encode(array: np.ndarray, suffix: str) -> bytes:
    buffer = io.BytesIO()
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(buffer, array)
    else:
        fmt = {".png": "PNG", ".jpg": "JPEG", ".gif": "GIF", ".bmp": "BMP"}[suffix]
        Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def one_error_line(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error: ")]


@FUZZ
@given(data=st.binary(min_size=0, max_size=4096), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_are_refused_cleanly(tmp_path, data, suffix):
    path = fresh(tmp_path) / f"x{suffix}"
    path.write_bytes(data)
    try:
        image = read_image(path)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:  # a valid image by chance: it must then be a proper one
        assert image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1


@FUZZ
@given(cut=st.floats(0.0, 0.98), suffix=st.sampled_from([".png", ".tif", ".gif", ".jpg"]))
def test_truncated_files_are_refused_cleanly(tmp_path, cut, suffix):
    rng = np.random.default_rng(0)
    encoded = encode(rng.integers(0, 256, (40, 40), dtype=np.uint8), suffix)
    path = fresh(tmp_path) / f"t{suffix}"
    path.write_bytes(encoded[: int(cut * len(encoded))])
    with pytest.raises(DataError, match="t" + suffix.replace(".", r"\.")):
        read_image(path)


@FUZZ
@given(
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    kind=st.sampled_from(["uint8", "uint16", "float32", "rgb", "rgba", "bool"]),
    suffix=st.sampled_from([".tif", ".png"]),
)
def test_sizes_and_pixel_types(tmp_path, height, width, kind, suffix):
    rng = np.random.default_rng(height * 100 + width)
    array = {
        "uint8": lambda: rng.integers(0, 256, (height, width), dtype=np.uint8),
        "uint16": lambda: rng.integers(0, 65536, (height, width), dtype=np.uint16),
        "float32": lambda: rng.normal(0, 3, (height, width)).astype(np.float32),
        "rgb": lambda: rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "rgba": lambda: rng.integers(0, 256, (height, width, 4), dtype=np.uint8),
        "bool": lambda: rng.random((height, width)) > 0.5,
    }[kind]()
    assume(not (suffix == ".png" and kind == "float32"))  # PNG has no float pixels
    path = fresh(tmp_path) / f"i{suffix}"
    path.write_bytes(encode(array, suffix))
    if min(height, width) < MIN_SIDE:
        with pytest.raises(DataError, match=f"minimum is {MIN_SIDE}x{MIN_SIDE}"):
            read_image(path)
        return
    image = read_image(path)
    assert image.shape == (1, height, width)
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0


def test_huge_image_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "MAX_IMAGE_BYTES", 2**20)
    path = tmp_path / "huge.png"
    Image.new("L", (1000, 1000)).save(path)
    with pytest.raises(DataError, match="the limit is 1 MiB"):
        read_image(path)


@FUZZ
@given(bad=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.integers(0, 16 * 16 - 1))
def test_nan_and_inf_pixels_refused(tmp_path, bad, where):
    array = np.zeros((16, 16), dtype=np.float32)
    array.flat[where] = bad
    path = fresh(tmp_path) / "f.tif"
    tifffile.imwrite(path, array)
    with pytest.raises(DataError, match="NaN or infinite"):
        read_image(path)


@FUZZ
@given(
    values=st.sampled_from([(0, 1), (0, 255), tuple(range(8)), (0,), (255,), (1,)]),
    suffix=st.sampled_from([".png", ".tif", ".gif"]),
)
def test_label_value_sets(tmp_path, values, suffix):
    rng = np.random.default_rng(len(values))
    label = rng.choice(np.array(values, dtype=np.uint8), size=(20, 20))
    path = fresh(tmp_path) / f"l{suffix}"
    path.write_bytes(encode(label, suffix))
    mask, info = read_mask(path)
    assert np.array_equal(mask, label != 0)
    assert info.binary == (len(np.unique(label)) <= 2)


def write_pair(folder: Path, stem: str, image_shape, label_shape, label_values=(0, 255)):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, image_shape, dtype=np.uint8)).save(
        folder / "images" / f"{stem}.png"
    )
    label = rng.choice(np.array(label_values, dtype=np.uint8), size=label_shape)
    Image.fromarray(label).save(folder / "labels" / f"{stem}.png")


@FUZZ
@given(
    image_shape=st.tuples(st.integers(8, 40), st.integers(8, 40)),
    label_shape=st.tuples(st.integers(8, 40), st.integers(8, 40)),
    label_values=st.sampled_from([(0, 255), (0, 1), (0,), tuple(range(8))]),
)
def test_data_check_cli_never_crashes(tmp_path, capsys, image_shape, label_shape, label_values):
    folder = fresh(tmp_path)
    write_pair(folder, "a", image_shape, label_shape, label_values)
    code = main(["data", "check", "--data", str(folder)])
    errors = one_error_line(capsys)
    problems = (
        min(image_shape) < MIN_SIDE or min(label_shape) < MIN_SIDE or (image_shape != label_shape)
    )
    assert (code != 0) == problems
    assert (len(errors) >= 1) == problems


CSV_COLUMNS = st.lists(
    st.sampled_from(["image", "label", "skeleton", "split", "other", "Image", " label "]),
    min_size=0,
    max_size=5,
    unique=True,
)


@FUZZ
@given(
    columns=CSV_COLUMNS,
    bom=st.booleans(),
    duplicate=st.booleans(),
    path_style=st.sampled_from(["relative", "absolute", "dotdot"]),
)
def test_csv_manifests(tmp_path, columns, bom, duplicate, path_style):
    root = fresh(tmp_path)
    write_pair(root / "data", "a", (20, 20), (20, 20))
    write_pair(root / "data", "b", (20, 20), (20, 20))
    manifest_dir = root / "manifests"
    manifest_dir.mkdir()
    base = {
        "relative": Path("../data"),
        "absolute": root / "data",
        "dotdot": Path("..") / "manifests" / ".." / "data",
    }[path_style]
    value = {
        "image": "images/{s}.png",
        "label": "labels/{s}.png",
        "skeleton": "labels/{s}.png",
        "split": "train",
    }
    rows = []
    for stem in ["a", "b"] + (["a"] if duplicate else []):
        cells = []
        for column in columns:
            key = column.strip().lower()
            if key in ("image", "label", "skeleton"):
                cells.append(str(base / value[key].format(s=stem)))
            else:
                cells.append(value.get(key, "x"))
        rows.append(",".join(cells))
    text = ("\ufeff" if bom else "") + ",".join(columns) + "\n" + "\n".join(rows) + "\n"
    csv_path = manifest_dir / "pairs.csv"
    csv_path.write_text(text, encoding="utf-8")
    keys = {c.strip().lower() for c in columns}
    try:
        index = index_dataset(csv_path)
        samples = load_samples(index.samples)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and str(csv_path) in message
        assert not {"image", "label"} <= keys or duplicate or not columns
        return
    assert {"image", "label"} <= keys and not duplicate
    assert [s.stem for s in samples] == ["a", "b"]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    save_checkpoint(path, create_model("resnet_seg", width=2), "resnet_seg", {"width": 2})
    return path.read_bytes()


@FUZZ
@given(cut=st.integers(0, 10_000))
def test_truncated_checkpoints(tmp_path, good_checkpoint, cut):
    cut = cut * len(good_checkpoint) // 10_001
    path = fresh(tmp_path) / "cut.pt"
    path.write_bytes(good_checkpoint[:cut])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path).build()
    assert "\n" not in str(info.value)


class NotAStateDict:
    pass


@pytest.mark.parametrize(
    "payload",
    [
        lambda: {
            "format": "vessel-lens-checkpoint",
            "version": 1,
            "model_name": "resnet_seg",
            "model_kwargs": {"width": 3},
            "state_dict": create_model("unet", width=2).state_dict(),
            "metadata": {},
        },
        lambda: NotAStateDict(),
        lambda: {"weights": NotAStateDict()},
        lambda: [1, 2, 3],
        lambda: create_model("resnet_seg", width=2).state_dict(),
    ],
    ids=["other-architecture", "object", "dict-with-object", "list", "bare-state-dict"],
)
def test_foreign_checkpoints_refused(tmp_path, capsys, payload):
    path = tmp_path / "foreign.pt"
    torch.save(payload(), path)
    with pytest.raises(VesselLensError):
        read_checkpoint(path).build()
    assert main(["evaluate", "--checkpoint", str(path)]) != 0
    assert len(one_error_line(capsys)) == 1
