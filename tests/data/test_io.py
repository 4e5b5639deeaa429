"""Reading images and masks: scaling by dtype range, colour handling and every refused file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from vessel_lens.data import io
from vessel_lens.data.io import read_image, read_mask, scale_to_unit
from vessel_lens.errors import DataError

LUMA = (0.299, 0.587, 0.114)


def ramp(dtype: type, high: int, shape: tuple[int, int] = (16, 20)) -> np.ndarray:
    """Values 0..high spread over an array, both ends present."""
    values = np.linspace(0, high, shape[0] * shape[1]).round().astype(dtype)
    return values.reshape(shape)


# --- scaling by dtype range -----------------------------------------------------------------


def test_uint8_png_is_divided_by_255(tmp_path, write_image):
    raw = ramp(np.uint8, 255)
    image = read_image(write_image(tmp_path / "a.png", raw))
    assert image.dtype == np.float32
    assert image.shape == (1, 16, 20)
    np.testing.assert_allclose(image[0], raw / 255.0, rtol=0, atol=1e-7)
    assert image.min() == 0.0 and image.max() == 1.0


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".png"])
def test_uint16_is_divided_by_65535(tmp_path, write_image, suffix):
    raw = ramp(np.uint16, 65535)
    raw[0, 0] = 257  # 257 / 65535 = 1 / 255: would read as 1.0 if scaled as 8-bit
    image = read_image(write_image(tmp_path / f"a{suffix}", raw))
    np.testing.assert_allclose(image[0], raw / 65535.0, rtol=0, atol=1e-7)
    assert image[0, 0, 0] == pytest.approx(1 / 255)


def test_uint16_dark_image_is_not_stretched(tmp_path, write_image):
    raw = np.full((16, 16), 1000, dtype=np.uint16)
    raw[0] = 2000
    image = read_image(write_image(tmp_path / "dark.tif", raw))
    assert image.max() == pytest.approx(2000 / 65535)
    assert image.min() == pytest.approx(1000 / 65535)


def test_uint8_tiff(tmp_path, write_image):
    raw = ramp(np.uint8, 200)
    image = read_image(write_image(tmp_path / "a.tif", raw))
    np.testing.assert_allclose(image[0], raw / 255.0, rtol=0, atol=1e-7)


def test_bool_maps_to_zero_and_one():
    raw = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(scale_to_unit(raw), [[1.0, 0.0], [0.0, 1.0]])
    assert scale_to_unit(raw).dtype == np.float32


def test_signed_integers_use_their_dtype_range():
    raw = np.array([[-128, 0, 127]], dtype=np.int8)
    np.testing.assert_allclose(scale_to_unit(raw), [[0.0, 128 / 255, 1.0]], atol=1e-7)


def test_float_in_unit_range_is_kept(tmp_path, write_image):
    raw = np.linspace(0.2, 0.7, 16 * 16, dtype=np.float32).reshape(16, 16)
    image = read_image(write_image(tmp_path / "f.tif", raw))
    np.testing.assert_array_equal(image[0], raw)


def test_float_out_of_range_is_min_max_scaled(tmp_path, write_image):
    raw = np.linspace(-3.0, 5.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    image = read_image(write_image(tmp_path / "f.tif", raw))
    np.testing.assert_allclose(image[0], (raw + 3.0) / 8.0, atol=1e-6)


def test_constant_float_out_of_range_becomes_zero():
    assert not scale_to_unit(np.full((4, 4), 7.5)).any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_images_are_refused(tmp_path, write_image, bad):
    raw = np.zeros((16, 16), dtype=np.float32)
    raw[3, 4] = bad
    path = write_image(tmp_path / "bad.tif", raw)
    with pytest.raises(DataError, match="NaN or infinite") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_nan_masks_are_refused(tmp_path, write_image):
    raw = np.ones((16, 16), dtype=np.float32)
    raw[0, 0] = np.nan
    path = write_image(tmp_path / "bad.tif", raw)
    with pytest.raises(DataError, match="NaN or infinite"):
        read_mask(path)


# --- colour ---------------------------------------------------------------------------------


def colour_blocks() -> np.ndarray:
    """A 16x16 RGB image of four 8x8 blocks: red, green, blue, white."""
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:8, :8, 0] = 255
    rgb[:8, 8:, 1] = 255
    rgb[8:, :8, 2] = 255
    rgb[8:, 8:] = 255
    return rgb


def expected_grey_blocks() -> np.ndarray:
    grey = np.zeros((16, 16), dtype=np.float64)
    grey[:8, :8], grey[:8, 8:], grey[8:, :8], grey[8:, 8:] = (*LUMA, 1.0)
    return grey


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_rgb_becomes_one_luminance_channel(tmp_path, write_image, suffix):
    image = read_image(write_image(tmp_path / f"rgb{suffix}", colour_blocks()))
    assert image.shape == (1, 16, 16)
    np.testing.assert_allclose(image[0], expected_grey_blocks(), atol=1e-6)


def test_keep_channels_returns_channels_first(tmp_path, write_image):
    rgb = colour_blocks()
    image = read_image(write_image(tmp_path / "rgb.png", rgb), keep_channels=True)
    assert image.shape == (3, 16, 16)
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0) / 255.0)


def test_planar_rgb_tiff_is_read_as_colour(tmp_path, write_image):
    planar = np.moveaxis(colour_blocks(), -1, 0).copy()
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(read_image(path)[0], expected_grey_blocks(), atol=1e-6)


def test_rgba_drops_alpha(tmp_path, write_image):
    rgba = np.concatenate([colour_blocks(), np.zeros((16, 16, 1), dtype=np.uint8)], axis=-1)
    rgba[..., 3] = 7
    path = write_image(tmp_path / "rgba.png", rgba)
    np.testing.assert_allclose(read_image(path)[0], expected_grey_blocks(), atol=1e-6)
    assert read_image(path, keep_channels=True).shape == (3, 16, 16)


def test_palette_gif_is_read_through_its_palette(tmp_path, write_palette_gif):
    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 128), (255, 255, 255)]
    indices = np.zeros((16, 16), dtype=np.uint8)
    indices[:, 4:8], indices[:, 8:12], indices[:, 12:] = 1, 2, 3
    path = write_palette_gif(tmp_path / "p.gif", indices, palette)
    grey = read_image(path)[0]
    for column, value in ((0, 0.0), (4, LUMA[0]), (8, LUMA[2] * 128 / 255), (12, 1.0)):
        np.testing.assert_allclose(grey[:, column], value, atol=1 / 255)
    mask, info = read_mask(path)
    np.testing.assert_array_equal(mask, indices > 0)
    assert info.distinct_values == 3  # per-pixel channel maxima 0, 128 and 255


def test_grey_jpeg_is_close_to_what_was_written(tmp_path, write_image):
    raw = np.full((16, 16), 128, dtype=np.uint8)
    image = read_image(write_image(tmp_path / "g.jpg", raw))
    np.testing.assert_allclose(image, 128 / 255, atol=2 / 255)


def test_two_channel_tiff_is_refused(tmp_path):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 2), dtype=np.uint8), photometric="minisblack")
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("pages", [2, 5])
def test_stack_tiff_is_refused_not_cut_to_its_first_page(tmp_path, write_image, pages):
    stack = np.zeros((pages, 16, 16), dtype=np.uint8)
    stack[1:] = 200
    path = write_image(tmp_path / "stack.tif", stack)
    with pytest.raises(DataError, match=f"stack of {pages}") as info:
        read_image(path)
    assert str(path) in str(info.value)


# --- masks ----------------------------------------------------------------------------------


def test_mask_non_zero_is_vessel_and_counts_values(tmp_path, write_image):
    raw = np.zeros((16, 16), dtype=np.uint8)
    raw[2:5] = 255
    mask, info = read_mask(write_image(tmp_path / "m.png", raw))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, raw > 0)
    assert info.binary and info.distinct_values == 2

    raw[10:12] = 128
    mask, info = read_mask(write_image(tmp_path / "grey.png", raw))
    assert mask.sum() == 5 * 16
    assert not info.binary and info.distinct_values == 3


def test_rgb_mask_counts_any_channel(tmp_path, write_image):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[0, :, 0] = 255
    rgb[1, :, 2] = 1
    mask, _ = read_mask(write_image(tmp_path / "m.png", rgb))
    assert mask[:2].all() and not mask[2:].any()


# --- refused files --------------------------------------------------------------------------


def valid_bytes(tmp_path, write_image, suffix: str) -> bytes:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    return write_image(tmp_path / f"valid{suffix}", raw).read_bytes()


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".gif"])
def test_empty_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".jpg", ".gif", ".bmp"])
def test_random_bytes_are_refused(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".gif"])
@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_file_is_refused(tmp_path, write_image, suffix, keep):
    data = valid_bytes(tmp_path, write_image, suffix)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_corrupt_mask_is_refused(tmp_path):
    path = tmp_path / "label.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DataError) as info:
        read_mask(path)
    assert str(path) in str(info.value)


def png_claiming(path, height: int, width: int, mode: str = "L"):
    """A tiny PNG whose header claims ``height`` x ``width`` pixels (it holds far fewer)."""
    Image.new(mode, (16, 16)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("shape", [(20, 4100), (4500, 16)])
def test_sides_beyond_the_old_4096_limit_read(tmp_path, write_image, shape):
    for suffix in (".png", ".tif"):
        image = read_image(write_image(tmp_path / f"long{suffix}", np.zeros(shape, np.uint8)))
        assert image.shape == (1, *shape)


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_too_large_png_is_refused_before_decoding_naming_the_limit(tmp_path, mode, channels):
    # just over the budget as float32 pixels of every stored channel
    side = int((io.MAX_IMAGE_BYTES / (4 * channels)) ** 0.5) + 1
    path = png_claiming(tmp_path / "huge.png", side, side, mode)
    assert path.stat().st_size < 1_000
    with pytest.raises(DataError, match=f"the limit is {io.MAX_IMAGE_BYTES // 2**20} MiB") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert f"{side}x{side}" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_png_beyond_pillows_own_limit_is_refused_naming_ours(tmp_path):
    path = png_claiming(tmp_path / "bomb.png", 20_000, 20_000)
    with pytest.raises(DataError, match=f"the limit is {io.MAX_IMAGE_BYTES // 2**20} MiB"):
        read_image(path)


def test_just_under_the_budget_is_not_refused_for_its_size(tmp_path, monkeypatch, write_image):
    monkeypatch.setattr(io, "MAX_IMAGE_BYTES", 40 * 50 * 3 * 4)
    assert read_image(write_image(tmp_path / "ok.tif", np.zeros((40, 50, 3), np.uint8))).shape
    path = write_image(tmp_path / "big.tif", np.zeros((40, 51, 3), np.uint8))
    with pytest.raises(DataError, match=r"40x51x3 .* the limit is"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("shape", [(io.MIN_SIDE - 1, 40), (40, 4), (8, 8)])
def test_too_small_image_is_refused(tmp_path, write_image, suffix, shape):
    path = write_image(tmp_path / f"small{suffix}", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DataError, match="minimum") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_smallest_accepted_image_reads(tmp_path, write_image):
    side = io.MIN_SIDE
    image = read_image(write_image(tmp_path / "ok.png", np.zeros((side, side), np.uint8)))
    assert image.shape == (1, side, side)


@pytest.mark.parametrize("name", ["notes.txt", "image.npy", "noext"])
def test_unsupported_suffix_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"some bytes")
    with pytest.raises(DataError, match="unsupported file type") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "absent.png")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(DataError, match="not a file"):
        read_image(folder)


# --- wide integers and two-channel pages ---------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_wide_integer_tiff_is_refused_not_flattened(tmp_path, write_image, dtype):
    raw = (np.arange(32 * 32).reshape(32, 32) * 50).astype(dtype)
    path = write_image(tmp_path / "wide.tif", raw)
    with pytest.raises(DataError, match="convert the image to 8- or 16-bit") as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert f"{np.dtype(dtype).itemsize * 8}-bit integer" in message


def test_wide_integer_mask_still_reads(tmp_path, write_image):
    raw = np.zeros((16, 16), dtype=np.int32)
    raw[3:6] = 70_000
    mask, info = read_mask(write_image(tmp_path / "m.tif", raw))
    np.testing.assert_array_equal(mask, raw != 0)
    assert info.binary


@pytest.mark.parametrize(
    ("shape", "planarconfig"), [((64, 64, 2), "contig"), ((2, 64, 64), "separate")]
)
def test_two_channel_page_reports_its_channels_not_a_thin_image(tmp_path, shape, planarconfig):
    path = tmp_path / "two.tif"
    tifffile.imwrite(
        path, np.zeros(shape, dtype=np.uint8), photometric="minisblack", planarconfig=planarconfig
    )
    with pytest.raises(DataError, match="2 channels; expected 1, 3 or 4") as info:
        read_image(path)
    assert str(path) in str(info.value)
