"""The map panel's receptive-field count of the current view, computed in the app on demand.

The count map (for every output pixel p, the number of input pixels whose |gradient|, summed
over channels, is above the threshold: :mod:`vessel_lens.interpret.thresholds`, as ``vessel-lens
erf`` counts) needs every output pixel's gradient, 65,536 backward passes for a 256x256 view.
Without a precomputed store the app computes it on a grid instead: every S-th pixel in each
direction (the top-left pixel of each S x S cell, as ``vessel-lens erf --pixel-stride S``), with
S chosen so that at most :data:`MAP_PIXELS` pixels are computed. Each computed pixel's value
fills its cell when drawn.

For each computed pixel the nonzero |g| are kept, sorted (:class:`CountRows`); a count at any
threshold is then a binary search, so moving the threshold slider or changing its mode redraws
the map at once and exactly, with no recomputation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vessel_lens.interpret.thresholds import gradient_magnitude

MAP_PIXELS = 1024
"""Computed pixels per view at most: a 32 x 32 grid (stride 8 on a 256x256 view; about 5 s
with the width-16 model on a 2-core CPU)."""
CHUNK = 16
"""Rows per backward pass: short, so that hovers get the worker between passes."""


def grid_pixels(height: int, width: int, stride: int) -> int:
    return math.ceil(height / stride) * math.ceil(width / stride)


def map_stride(
    height: int,
    width: int,
    field_area: int | None = None,
    max_bytes: int | None = None,
    pixels: int = MAP_PIXELS,
) -> int:
    """The smallest stride S computing at most ``pixels`` pixels whose kept values (at most
    ``field_area`` float32 per pixel, the receptive field's area) fit ``max_bytes``."""
    area = min(field_area or height * width, height * width)
    stride = 1
    while grid_pixels(height, width, stride) > pixels or (
        max_bytes is not None and result_bytes(height, width, stride, area) > max_bytes
    ):
        if stride >= max(height, width):
            break
        stride += 1
    return stride


def result_bytes(height: int, width: int, stride: int, field_area: int) -> int:
    """Upper bound of the memory a :class:`CountRows` of that grid holds."""
    return grid_pixels(height, width, stride) * (4 * field_area + 16)


@dataclass
class CountRows:
    """The sorted nonzero |g| of the gradient of every ``stride``-th output pixel of a
    ``height`` x ``width`` view: ``values[offsets[i]:offsets[i + 1]]`` for the i-th grid pixel
    in row-major order; ``seconds`` it took to compute."""

    height: int
    width: int
    stride: int
    values: np.ndarray
    offsets: np.ndarray
    maxima: np.ndarray
    seconds: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        """Rows and columns of the grid."""
        return math.ceil(self.height / self.stride), math.ceil(self.width / self.stride)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.offsets.nbytes + self.maxima.nbytes)

    def grid_counts(self, fraction: float, mode: str, global_max: float | None) -> np.ndarray:
        """Counts (grid rows, grid cols) of |g| strictly above the threshold of ``mode``
        (``pixel``: fraction x the pixel's max |g|; ``global``: x ``global_max``;
        ``absolute``: the fraction itself)."""
        if mode == "pixel":
            limits = np.float64(fraction) * self.maxima.astype(np.float64)
        elif mode == "global":
            limits = np.full(len(self.maxima), float(fraction) * float(global_max))
        else:
            limits = np.full(len(self.maxima), float(fraction))
        limits = limits.astype(np.float32)  # torch compares float32 maps in float32 too
        counts = np.empty(len(self.maxima), dtype=np.float32)
        for i, limit in enumerate(limits):
            kept = self.values[self.offsets[i] : self.offsets[i + 1]]
            counts[i] = len(kept) - np.searchsorted(kept, limit, side="right")
        return counts.reshape(self.shape)

    def counts(self, fraction: float, mode: str, global_max: float | None) -> np.ndarray:
        """The count map (height, width): each computed pixel's count fills its cell."""
        cells = np.repeat(np.repeat(self.grid_counts(fraction, mode, global_max), self.stride, 0),
                          self.stride, 1)  # fmt: skip
        return np.ascontiguousarray(cells[: self.height, : self.width])


def grid_flat(height: int, width: int, stride: int) -> torch.Tensor:
    """Flat indices of the grid's pixels, row-major."""
    rows = torch.arange(0, height, stride)
    cols = torch.arange(0, width, stride)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def compute_count_rows(
    engine,
    stride: int,
    between: Callable[[], None],
    progress: Callable[[float], None],
    lock=None,
    chunk: int = CHUNK,
) -> CountRows:
    """Every ``stride``-th pixel's gradient from ``engine`` (a prepared
    :class:`~vessel_lens.interpret.JacobianEngine`), ``chunk`` rows per pass; ``between()``
    runs before each pass (it may pause or raise to cancel), ``progress(fraction)`` after."""
    import time

    started = time.perf_counter()
    height, width = engine.height, engine.width
    flat = grid_flat(height, width, stride)
    kept, maxima = [], []
    for start in range(0, len(flat), chunk):
        between()
        with lock or contextlib.nullcontext():
            rows = engine.rows(flat[start : start + chunk])
        magnitude = gradient_magnitude(rows.float()).flatten(1)
        del rows
        for row in magnitude:
            maxima.append(float(row.max()))
            kept.append(torch.sort(row[row > 0]).values.numpy())
        del magnitude
        progress(min(start + chunk, len(flat)) / len(flat))
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in kept], out=offsets[1:])
    values = np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)
    seconds = time.perf_counter() - started
    return CountRows(
        height, width, stride, values, offsets, np.asarray(maxima, dtype=np.float32), seconds
    )


def store_size_words(nbytes: int) -> str:
    """A size as a person says it: '17.2 GB', '67 MB'."""
    if nbytes >= 10**9:
        return f"{nbytes / 10**9:.1f} GB"
    return f"{nbytes / 10**6:.0f} MB"
