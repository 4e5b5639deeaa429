"""Reading images and masks from disk into arrays with known scaling.

Images become ``float32`` arrays of shape (C, H, W) with values in [0, 1]; masks become
``bool`` arrays of shape (H, W). Every failure raises :class:`DataError` naming the file.

Scaling rules (documented in the manual, docs/data.md):

- 8- and 16-bit unsigned and signed integers are scaled by the range of their dtype
  (uint8 / 255, uint16 / 65535, int16 by -32768..32767); wider integers (int32, uint32, ...)
  are refused, since scaled by their range they would come out nearly constant;
- booleans map to {0, 1};
- floating-point images already in [0, 1] are kept; others are min-max scaled to [0, 1];
  NaN or infinite pixels are refused.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from vessel_lens.errors import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp")
MAX_IMAGE_BYTES = 512 * 2**20
"""Largest accepted image as float32 pixels of every stored channel (height x width x
channels x 4 bytes): 11585 x 11585 grey or 6688 x 6688 RGB. Larger files are refused from
their header, before decoding, so that a few of them fit in memory at once."""
MIN_SIDE = 16
"""Smallest accepted image side in pixels."""
MAX_FILE_BYTES = 256 * 1024 * 1024

CHANNEL_COUNTS = (1, 2, 3, 4)
"""Axis lengths taken for a channel axis (first or last) of a 3-D TIFF page; 2 is recognised
only so that its file is refused as having 2 channels rather than mistaken for a thin image."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class MaskInfo:
    """What a mask file held before it was binarised."""

    distinct_values: int
    binary: bool


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: file is empty")
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: file is {size / 2**20:.0f} MiB; the limit is 256 MiB")


def _check_shape(path: Path, height: int, width: int, channels: int = 1) -> None:
    needed = height * width * channels * 4
    if needed > MAX_IMAGE_BYTES:
        shape = f"{height}x{width}" + (f"x{channels}" if channels > 1 else "")
        raise DataError(
            f"{path}: image is {shape} ({needed / 2**20:.0f} MiB as float32); the limit is "
            f"{MAX_IMAGE_BYTES // 2**20} MiB"
        )
    if min(height, width) < MIN_SIDE:
        raise DataError(f"{path}: image is {height}x{width}; the minimum is {MIN_SIDE}x{MIN_SIDE}")


def _read_tiff(source: Path | BinaryIO, path: str | Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(source) as tif:
            if not tif.pages:
                raise DataError(f"{path}: TIFF holds no image")
            pages = len(tif.series[0].pages) if tif.series else 1
            if pages > 1:
                raise DataError(
                    f"{path}: TIFF holds a stack of {pages} images; expected one 2-D image"
                )
            page = tif.pages[0]
            shape = page.shape
            if len(shape) < 2:
                raise DataError(f"{path}: TIFF page has shape {shape}, not an image")
            first = _channels_first(shape)
            spatial = shape[-2:] if first else shape[:2]
            channels = 1 if len(shape) == 2 else int(shape[0] if first else shape[-1])
            _check_shape(path, int(spatial[0]), int(spatial[1]), channels)
            array = page.asarray()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read TIFF ({_tiff_reason(exc)})") from None
    if _channels_first(array.shape):
        array = np.moveaxis(array, 0, -1)
    return array


def _tiff_reason(exc: Exception) -> str:
    """tifffile's reason, or which codec is missing and how to install it."""
    match = re.search(
        r"<(?:COMPRESSION|PREDICTOR)\.(\w+): \d+> requires the 'imagecodecs'", str(exc)
    )
    if match:
        return f"its {match[1]} compression needs the imagecodecs package: pip install imagecodecs"
    return _short(exc)


def _channels_first(shape: tuple[int, ...]) -> bool:
    """Whether a 3-D page is (C, H, W): its last axis is no channel axis but its first is.

    (H, W, C) wins when both ends could be channels."""
    return len(shape) == 3 and shape[-1] not in CHANNEL_COUNTS and shape[0] in CHANNEL_COUNTS


def _read_pil(source: Path | BinaryIO, path: str | Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # our own byte budget, checked from the header below, replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                _check_shape(path, height, width, _decoded_channels(img))
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif img.mode in ("1", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("L" if img.mode in ("1", "LA") else "RGB")
                img.load()
                array = np.asarray(img)
                if img.mode == "I" and img.format == "PNG":
                    array = array.astype(np.uint16)  # 16-bit grey PNG, decoded as 32-bit
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({_short(exc)})") from None
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels[1]):,} pixels" if pixels else "too many pixels"
        raise DataError(
            f"{path}: image has {size}; the limit is {MAX_IMAGE_BYTES // 2**20} MiB as float32"
        ) from None
    return array


def _decoded_channels(img: Image.Image) -> int:
    """Channels the array of ``img`` will have after :func:`_read_pil`'s conversions."""
    if img.mode == "P":
        return 4 if "transparency" in img.info else 3
    return {"1": 1, "LA": 1, "PA": 3, "CMYK": 3}.get(img.mode, len(img.getbands()))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _check_suffix(name: str | Path) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{name}: unsupported file type {suffix or '(none)'}; use one of "
            + ", ".join(IMAGE_SUFFIXES)
        )
    return suffix


def _decode(source: Path | BinaryIO, name: str | Path) -> np.ndarray:
    """Decode by ``name``'s suffix into (H, W) or (H, W, 3|4); errors name ``name``."""
    suffix = _check_suffix(name)
    array = _read_tiff(source, name) if suffix in (".tif", ".tiff") else _read_pil(source, name)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise DataError(f"{name}: array of shape {array.shape} is not a 2-D image")
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        raise DataError(f"{name}: {array.shape[-1]} channels; expected 1, 3 or 4")
    if array.size == 0:
        raise DataError(f"{name}: image is empty")
    return array


def read_raw(path: str | Path) -> np.ndarray:
    """Decode an image file into an (H, W) or (H, W, C) array in its stored dtype."""
    path = Path(path)
    _check_file(path)
    _check_suffix(path)
    return _decode(path, path)


def scale_to_unit(array: np.ndarray, path: str | Path = "image") -> np.ndarray:
    """Scale an array to float32 in [0, 1] by its dtype range (see module docstring)."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize > 2:
            raise DataError(
                f"{path}: {array.dtype.itemsize * 8}-bit integer pixels ({array.dtype}) are "
                "not supported; convert the image to 8- or 16-bit integers or to float"
            )
        info = np.iinfo(array.dtype)
        scaled = (array.astype(np.float64) - info.min) / float(info.max - info.min)
        return scaled.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{path}: image holds NaN or infinite pixels")
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            return values.astype(np.float32)
        if high == low:
            return np.zeros_like(values, dtype=np.float32)
        return ((values - low) / (high - low)).astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {array.dtype}")


def to_unit_image(raw: np.ndarray, name: str | Path, keep_channels: bool = False) -> np.ndarray:
    """A decoded array as float32 (C, H, W) in [0, 1]; RGB(A) becomes one luminance channel
    unless ``keep_channels`` (alpha is dropped)."""
    image = scale_to_unit(raw, name)
    if image.ndim == 2:
        return image[None]
    image = image[..., :3]
    if keep_channels:
        return np.ascontiguousarray(np.moveaxis(image, -1, 0))
    return (image @ _LUMA)[None].astype(np.float32)


def read_image(path: str | Path, keep_channels: bool = False) -> np.ndarray:
    """Read an image file as float32 (C, H, W) in [0, 1] (see :func:`to_unit_image`).

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from vessel_lens.data import read_image
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     Image.fromarray(np.full((16, 24, 3), 255, np.uint8)).save(Path(folder) / "rgb.png")
        ...     gray = read_image(Path(folder) / "rgb.png")
        ...     rgb = read_image(Path(folder) / "rgb.png", keep_channels=True)
        >>> gray.shape, rgb.shape, float(gray.max())
        ((1, 16, 24), (3, 16, 24), 1.0)
    """
    return to_unit_image(read_raw(path), path, keep_channels)


def decode_image(data: bytes, name: str, keep_channels: bool = False) -> np.ndarray:
    """Decode an image held in memory (an upload) exactly as :func:`read_image` reads a file
    called ``name``; errors name ``name``."""
    if not data:
        raise DataError(f"{name}: file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise DataError(f"{name}: file is {len(data) / 2**20:.0f} MiB; the limit is 256 MiB")
    _check_suffix(name)
    return to_unit_image(_decode(io.BytesIO(data), name), name, keep_channels)


def read_mask(path: str | Path) -> tuple[np.ndarray, MaskInfo]:
    """Read a label or skeleton: non-zero pixels (in any channel) are foreground.

    Returns the boolean (H, W) mask and how many distinct values the file held, so callers
    can warn about masks that are not binary.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from vessel_lens.data import read_mask
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     Image.fromarray(np.eye(16, dtype=np.uint8) * 255).save(Path(folder) / "label.png")
        ...     mask, info = read_mask(Path(folder) / "label.png")
        >>> mask.shape, mask.dtype, int(mask.sum())
        ((16, 16), dtype('bool'), 16)
    """
    raw = read_raw(path)
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise DataError(f"{path}: mask holds NaN or infinite pixels")
    if raw.ndim == 3:
        raw = raw[..., :3].max(axis=-1)
    values = np.unique(raw)
    return raw != 0, MaskInfo(distinct_values=int(values.size), binary=values.size <= 2)
