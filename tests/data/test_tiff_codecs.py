"""Compressed TIFFs (LZW, Deflate, PackBits, JPEG, zstd) read like uncompressed ones, and a
file whose codec is missing is refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from vessel_lens.data.io import read_image

LOSSLESS = ("lzw", "zlib", "packbits", "zstd")


def smooth(dtype: type, colour: bool, shape: tuple[int, int] = (40, 52)) -> np.ndarray:
    """A smooth pattern over the dtype's whole range (JPEG keeps smooth images well)."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = (np.sin(y / 6) + np.cos(x / 7) + 2) / 4
    grey = np.round(base * np.iinfo(dtype).max).astype(dtype)
    return np.stack([grey, grey[::-1], grey[:, ::-1]], axis=-1) if colour else grey


def write(path: Path, array: np.ndarray, compression: str, **args) -> Path:
    photometric = "rgb" if array.ndim == 3 else "minisblack"
    tifffile.imwrite(
        path, array, photometric=photometric, compression=compression, compressionargs=args
    )
    return path


def expected(array: np.ndarray) -> np.ndarray:
    """The (C, H, W) float image read_image(keep_channels=True) must return."""
    scaled = array.astype(np.float64) / np.iinfo(array.dtype).max
    return scaled[None] if scaled.ndim == 2 else np.moveaxis(scaled, -1, 0)


@pytest.mark.parametrize("compression", LOSSLESS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb"])
def test_lossless_compressions_read_exactly(tmp_path, compression, dtype, colour):
    array = smooth(dtype, colour)
    path = write(tmp_path / f"{compression}.tif", array, compression)
    assert tifffile.TiffFile(path).pages[0].compression != 1  # really compressed
    image = read_image(path, keep_channels=True)
    np.testing.assert_allclose(image, expected(array), atol=1e-6)


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb"])
def test_lossy_jpeg_in_tiff_reads_within_tolerance(tmp_path, colour):
    array = smooth(np.uint8, colour)
    path = write(tmp_path / "jpeg.tif", array, "jpeg", level=95)
    image = read_image(path, keep_channels=True)
    # 8-bit JPEG at quality 95 with 4:2:0 chroma subsampling: measured 0.8 % (grey) and 4.3 %
    # (RGB, the chroma subsampling) of the range at most on this pattern
    error = np.abs(image - expected(array))
    assert error.max() < 0.06
    assert error.mean() < 0.01


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb"])
def test_lossless_sixteen_bit_jpeg_in_tiff_reads_exactly(tmp_path, colour):
    array = smooth(np.uint16, colour)
    path = write(tmp_path / "ljpeg.tif", array, "jpeg", lossless=True)
    np.testing.assert_allclose(read_image(path, keep_channels=True), expected(array), atol=1e-6)


def test_imagecodecs_is_a_core_dependency(core_dependencies):
    assert "imagecodecs" in core_dependencies


MISSING_CODEC = """
import sys
sys.modules["imagecodecs"] = None  # as if it were not installed
from vessel_lens.cli import main
sys.exit(main(["data", "check", "--data", sys.argv[1]]))
"""


def test_missing_codec_is_one_clear_line(tmp_path, make_dataset):
    root = make_dataset(count=1, size=(20, 24))
    (root / "images" / "s00.png").unlink()
    write(root / "images" / "s00.tif", smooth(np.uint8, False, (20, 24)), "lzw")
    result = subprocess.run(
        [sys.executable, "-c", MISSING_CODEC, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "s00.tif" in errors[0]
    assert "LZW" in errors[0] and "pip install imagecodecs" in errors[0]
    assert "Traceback" not in result.stderr
