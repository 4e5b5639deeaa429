"""Splitting a batch of rows into spatially compact groups when that makes it cheaper.

The ``linear`` strategy pushes a batch of one-hot cotangents back over the *union* window of
its rows (:mod:`._window`): every row of the batch carries that whole window through every
layer. A batch of contiguous pixels is compact, but a strided grid (``--pixel-stride``), a
scattered pixel set, or a batch that wraps from the end of one image row to the start of the
next spans a wide window, and each of its rows then costs several times as much (measured in
``benchmarks/jacobian_subsets.py``).

Each batch is therefore split into square tiles of output pixels, one backward pass per tile,
when the predicted cost is lower. The prediction is geometric, so the same pixels are always
grouped the same way: a one-pixel backward pass, traced once per engine, gives each step's
window for a single pixel and its map's scale; a group whose pixels span (h, w) output pixels
then has, at a step of scale s, the window ``min(map, single + s * (h - 1, w - 1))``. The cost
of a step is the group's rows times that window's area times the step's work per element (the
multiply-adds of a convolution's backward per cotangent value, 1 for element-wise steps), and
every pass pays a fixed overhead of about :data:`OVERHEAD_ROWS` single-pixel rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vessel_lens.interpret._graph.ops import CONVOLUTION

OVERHEAD_ROWS = 2.0
"""Fixed cost of one backward pass in single-pixel rows. Fitted to the timings of every tile
size on strided and contiguous batches (``benchmarks/RESULTS.md``): a one-row pass takes
about four single-pixel rows of windowed work more than the work itself, but counting
multiply-adds underestimates what wide windows cost in memory traffic, and 2 balances both."""
MIN_ROWS = 8
"""Batches with fewer rows are never split."""
SMALLEST_TILE = 16


@dataclass
class Profile:
    """Per backward step: work per cotangent value, the one-pixel window (h, w), the map's
    size, its scale relative to the output and the cotangent's channels."""

    work: torch.Tensor
    single_h: torch.Tensor
    single_w: torch.Tensor
    map_h: torch.Tensor
    map_w: torch.Tensor
    scale_h: torch.Tensor
    scale_w: torch.Tensor
    channels: torch.Tensor

    def windows(self, span_h: torch.Tensor, span_w: torch.Tensor):
        """(steps, groups) heights and widths of the windows of groups spanning
        (span_h, span_w) output pixels."""
        grown_h = torch.ceil(self.scale_h[:, None] * span_h[None].double())
        grown_w = torch.ceil(self.scale_w[:, None] * span_w[None].double())
        h = torch.minimum(self.map_h[:, None], self.single_h[:, None] + grown_h)
        w = torch.minimum(self.map_w[:, None], self.single_w[:, None] + grown_w)
        return h, w

    def cost(self, rows: torch.Tensor, span_h: torch.Tensor, span_w: torch.Tensor) -> float:
        """Predicted cost of groups of ``rows`` rows spanning (span_h, span_w) output pixels
        (one entry per group), overhead included."""
        h, w = self.windows(span_h, span_w)
        work = (self.work[:, None] * h * w * rows[None].double()).sum()
        single = float((self.work * self.single_h * self.single_w).sum())
        return float(work) + OVERHEAD_ROWS * single * len(rows)

    def largest(self, span_h: torch.Tensor, span_w: torch.Tensor) -> torch.Tensor:
        """Per group, the most values one row's cotangent holds at any step."""
        h, w = self.windows(span_h, span_w)
        return (self.channels[:, None] * h * w).amax(0)


def work_per_value(prep, entry) -> float:
    """Multiply-adds per cotangent value of a step's backward (1 for element-wise steps)."""
    if entry.func is not CONVOLUTION:
        return 1.0
    weight = prep.constant(entry.args[1])
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
    groups = int(entry.args[8])
    if bool(entry.args[6]):  # transposed: the backward is a strided conv2d into fewer values
        stride = entry.args[3]
        return int(weight.shape[0]) * kh * kw / (groups * stride[0] * stride[1])
    return int(weight.shape[1]) * kh * kw


def build_profile(steps: list[tuple[float, int, int, int, int, int]], out_h: int, out_w: int):
    """A :class:`Profile` from traced steps (work, window h, window w, map h, map w,
    channels)."""
    columns = list(zip(*steps, strict=True)) if steps else [()] * 6
    work, single_h, single_w, map_h, map_w, channels = (
        torch.tensor(c, dtype=torch.float64) for c in columns
    )
    return Profile(work, single_h, single_w, map_h, map_w, map_h / out_h, map_w / out_w, channels)


def _spans(rows: torch.Tensor, cols: torch.Tensor, key: torch.Tensor, groups: int):
    def extent(values: torch.Tensor) -> torch.Tensor:
        low = torch.full((groups,), torch.iinfo(torch.long).max, dtype=torch.long)
        high = torch.full((groups,), -1, dtype=torch.long)
        low.scatter_reduce_(0, key, values, "amin")
        high.scatter_reduce_(0, key, values, "amax")
        return high - low

    counts = torch.bincount(key, minlength=groups)
    return counts, extent(rows), extent(cols)


def compact_groups(
    rows: torch.Tensor, cols: torch.Tensor, profile: Profile, height: int, width: int
) -> list[torch.Tensor] | None:
    """Indices of ``rows``/``cols`` split into square tiles, or ``None`` when one batch is
    predicted to be cheapest. Deterministic: depends on the pixels and the model only."""
    if len(rows) < MIN_ROWS:
        return None
    zero = torch.zeros(len(rows), dtype=torch.long)
    best_cost = profile.cost(*_spans(rows, cols, zero, 1))
    best_key = None
    tile = SMALLEST_TILE
    while tile < max(height, width):
        tiles_per_row = math.ceil(width / tile)
        key = (rows // tile) * tiles_per_row + cols // tile
        used, key = torch.unique(key, return_inverse=True)
        cost = profile.cost(*_spans(rows, cols, key, len(used)))
        if cost < best_cost:
            best_cost, best_key = cost, key
        tile *= 2
    if best_key is None:
        return None
    order = torch.argsort(best_key, stable=True)
    sizes = torch.bincount(best_key).tolist()
    return [part for part in torch.split(order, sizes) if len(part)]


def bounded_batches(
    groups: list[torch.Tensor],
    rows: torch.Tensor,
    cols: torch.Tensor,
    profile: Profile,
    limit: int,
) -> list[torch.Tensor]:
    """``groups`` with each split into consecutive parts whose largest cotangent holds at most
    ``limit`` values (the allocator maps larger buffers afresh on every pass,
    :mod:`._allocator`); one part at least one row."""
    if not groups:
        return groups
    key = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([len(g) for g in groups]))
    order = torch.cat(groups)
    counts, span_h, span_w = _spans(rows[order], cols[order], key, len(groups))
    values = profile.largest(span_h, span_w) * counts.double()
    parts: list[torch.Tensor] = []
    for group, total in zip(groups, values.tolist(), strict=True):
        pieces = min(len(group), math.ceil(total / limit)) if total > limit else 1
        parts.extend(group.tensor_split(pieces))
    return parts
