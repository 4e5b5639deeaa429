"""Images the app can show: dataset samples (by stem), uploads (decoded in memory) and the
inputs saved in precomputed stores; and the *view* — the whole image or a crop of it.

The browser only ever sends keys (``data/<stem>``, ``upload/<digest>``, ``store/<name>``) that
are looked up in dictionaries built on the server; no path from the browser is opened.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import torch

from vessel_lens.data.io import IMAGE_SUFFIXES, MIN_SIDE, decode_image
from vessel_lens.data.samples import Sample
from vessel_lens.errors import ConfigError, DataError

UPLOAD_SUFFIXES = IMAGE_SUFFIXES
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.ASCII)


@dataclass(frozen=True)
class View:
    """The analysed region: rows ``top:top+height``, columns ``left:left+width`` of image ``key``."""

    key: str
    top: int
    left: int
    height: int
    width: int

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "top": self.top,
            "left": self.left,
            "height": self.height,
            "width": self.width,
        }

    def crop(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor[..., self.top : self.top + self.height, self.left : self.left + self.width]

    def describe(self, full: tuple[int, int]) -> str:
        if (self.top, self.left, self.height, self.width) == (0, 0, *full):
            return f"full image {self.height}x{self.width}"
        return f"crop {self.height}x{self.width} at ({self.top}, {self.left})"


def as_int(value: object, name: str) -> int:
    """An integer from a browser value (int, integral float or digit string), else ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,9}\s*", value):
        return int(value)
    raise ConfigError(f"{name}: expected a whole number, not {str(value)[:40]!r}")


def resolve_view(
    key: str,
    shape: tuple[int, int],
    mode: object = "full",
    size: object = None,
    top: object = None,
    left: object = None,
    max_side: int = 512,
    box: tuple[int, int, int, int] | None = None,
    why: str | None = None,
) -> tuple[View, str]:
    """The view for the UI's choice, clipped into the image; returns (view, note for the user).

    ``why``: what sets ``max_side``, for the notes (default ``--max-side N``).

    ``mode``: ``full`` (the whole image, or a centred crop of ``max_side`` when larger),
    ``crop`` (a square of ``size`` at ``top``/``left``; centred when they are empty) or
    ``store`` (``box`` = the crop box (top, left, height, width) of a precomputed store).
    """
    height, width = shape
    why = why or f"--max-side {max_side}"
    if mode == "store" and box is not None:
        t, le, h, w = (int(v) for v in box)
        if t < 0 or le < 0 or h < 1 or w < 1 or t + h > height or le + w > width:
            raise ConfigError(f"stored crop box {box} lies outside the {height}x{width} image")
        if max(h, w) > max_side:
            flag = next(word for word in why.split() if word.startswith("--"))
            raise ConfigError(
                f"the stored crop is {h}x{w}, larger than {why}; start the app with a larger "
                f"{flag} to view it"
            )
        return View(key, t, le, h, w), ""
    if mode == "full" or mode == "store":
        if max(height, width) <= max_side:
            return View(key, 0, 0, height, width), ""
        h, w = min(height, max_side), min(width, max_side)
        view = View(key, (height - h) // 2, (width - w) // 2, h, w)
        return view, f"image is {height}x{width}; showing a centred {h}x{w} crop ({why})"
    if mode != "crop":
        raise ConfigError(f"view {str(mode)[:20]!r}: choose full, crop or store")
    limit = min(height, width, max_side)
    side = limit if size in (None, "") else as_int(size, "crop size")
    note = ""
    if not min(MIN_SIDE, limit) <= side <= limit:
        clipped = max(min(MIN_SIDE, limit), min(side, limit))
        note = f"crop size {side} is outside {min(MIN_SIDE, limit)}..{limit}; using {clipped}"
        if side > max_side:
            note += f" ({why})"
        side = clipped
    row = (height - side) // 2 if top in (None, "") else as_int(top, "crop top")
    col = (width - side) // 2 if left in (None, "") else as_int(left, "crop left")
    row, col = min(max(row, 0), height - side), min(max(col, 0), width - side)
    return View(key, row, col, side, side), note


def safe_name(filename: object) -> str:
    """The file name shown in the page: the last path part, printable, at most 80 characters."""
    text = PurePath(str(filename or "upload").replace("\\", "/")).name
    text = "".join(ch for ch in text if ch.isprintable())[:80]
    return text or "upload"


def decoding_bytes(data: bytes, name: str) -> int:
    """Bytes that decoding ``data`` may take, from the image's header: the stored pixels,
    the float64 and float32 copies of the scaling, the result and the file itself. When the
    header cannot be read, the decoder fails at once: then only the file is counted."""
    import io

    import tifffile
    from PIL import Image

    try:
        if PurePath(name).suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                page = tiff.pages[0]
                values, itemsize = int(np.prod(page.shape)), page.dtype.itemsize
        else:
            with Image.open(io.BytesIO(data)) as image:
                channels = 4 if image.mode in ("P", "PA") else len(image.getbands())
                values, itemsize = image.size[0] * image.size[1] * channels, 4
    except Exception:  # unreadable here means unreadable for the decoder: it says why
        return 2 * len(data)
    return 2 * len(data) + values * (itemsize + 8 + 4 + 4)


def decode_upload(
    contents: object,
    filename: object,
    max_bytes: int,
    keep_channels: bool = False,
    admit: Callable[[int, str], AbstractContextManager] | None = None,
) -> Sample:
    """Decode a dcc.Upload data URL in memory with the rules of ``data/io.py``.

    Raises :class:`DataError` with a one-line message for anything that is not an image the
    command-line tools would accept, or that exceeds ``max_bytes``. ``admit(bytes, what)``
    reserves the memory decoding takes (:func:`decoding_bytes`; the app's work queue).
    """
    name = safe_name(filename)
    if not isinstance(contents, str):
        raise DataError(f"{name}: no file content received")
    match = _DATA_URL.match(contents[:200])
    if match is None:
        raise DataError(f"{name}: not a base64 data URL")
    payload = contents[match.end() :]
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise DataError(f"{name}: file is larger than the {max_bytes / 2**20:.0f} MiB upload limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{name}: corrupt upload (invalid base64)") from None
    if not data:
        raise DataError(f"{name}: file is empty")
    if len(data) > max_bytes:
        raise DataError(f"{name}: file is larger than the {max_bytes / 2**20:.0f} MiB upload limit")
    suffix = PurePath(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise DataError(
            f"{name}: unsupported file type {suffix or '(none)'}; use one of "
            + ", ".join(UPLOAD_SUFFIXES)
        )
    if admit is None:
        image = decode_image(data, name, keep_channels)
    else:
        with admit(decoding_bytes(data, name), f"decoding {name}"):
            image = decode_image(data, name, keep_channels)
    digest = hashlib.sha256(data).hexdigest()[:16]
    return Sample(f"{PurePath(name).stem}-{digest[:6]}", torch.from_numpy(image))
