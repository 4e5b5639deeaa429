"""Operations that act on rows and columns separately, as one matrix per axis.

Resampling (nearest, bilinear, bicubic, anti-aliased, adaptive average pooling) and index
pads (reflection, replication) compute, per channel, ``out = A_h · x · A_wᵀ``. The matrices are
read off the operation itself: applied to the columns of an identity matrix laid out along
one axis (with the other axis of length 1, where the operation is the identity), it returns
the columns of ``A``. Each matrix is kept as a band (first non-zero column and weights per
output row), so that:

- the structural receptive field reads exactly which input rows an output row uses
  (:meth:`AxisMap.read`), zero weights excluded; and
- the ``linear`` strategy pushes a windowed cotangent back with two small matrix products
  (:meth:`AxisMap.submatrix`) instead of a dense backward pass over the whole map.

For small maps the decomposition is checked against the operation on a random input, so an
operation that is not separable after all is never given a wrong rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vessel_lens.interpret._graph.ops import (
    ADAPTIVE_MAX_POOL,
    INDEX_PADS,
    RESAMPLING,
    arg_of,
    aten,
)
from vessel_lens.interpret._graph.tape import Entry

EMPTY = 1 << 40
PROBE_BLOCK = 256
"""Basis vectors pushed through an operation at once when reading its matrix."""
VERIFY_LIMIT = 1 << 16
"""Maps of at most this many pixels have their decomposition checked on a random input."""


class NotSeparable(Exception):
    """The operation does not factor into one matrix per axis."""


@dataclass
class AxisMap:
    """Which input positions each output position reads along one axis.

    ``first``/``last`` (out,) are the inclusive bounds of the non-zero weights of each output
    position (``EMPTY``/``-EMPTY`` for a position that reads nothing); ``weights`` (out, band)
    holds them, or is None for maps that only route (max pooling).
    """

    first: torch.Tensor
    last: torch.Tensor
    in_length: int
    weights: torch.Tensor | None = None
    _tables: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def out_length(self) -> int:
        return len(self.first)

    def read(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Half-open input ranges read by the half-open output ranges [lo, hi) (vectors)."""
        lo = lo.clamp(0, self.out_length)
        hi = hi.clamp(0, self.out_length)
        empty = hi <= lo
        if self.out_length == 0:
            return torch.full_like(lo, EMPTY), torch.full_like(hi, -EMPTY)
        mins, maxs = self._sparse_tables()
        span = (hi - lo).clamp(min=1)
        level = (torch.floor(torch.log2(span.double())).long()).clamp(max=len(mins) - 1)
        start = lo.clamp(max=self.out_length - 1)
        end = (hi - torch.pow(2, level)).clamp(min=0, max=self.out_length - 1)
        new_lo = torch.minimum(mins[level, start], mins[level, end])
        new_hi = torch.maximum(maxs[level, start], maxs[level, end]) + 1
        new_lo = torch.where(empty, torch.full_like(new_lo, EMPTY), new_lo)
        new_hi = torch.where(empty, torch.full_like(new_hi, -EMPTY), new_hi)
        return new_lo, new_hi

    def _sparse_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Range-minimum (of ``first``) and range-maximum (of ``last``) tables: row k holds the
        extreme over [i, i + 2^k), padded to the full length."""
        if self._tables is None:
            mins, maxs = [self.first.clone()], [self.last.clone()]
            step = 1
            while 2 * step <= self.out_length:
                low = torch.minimum(mins[-1][:-step], mins[-1][step:])
                high = torch.maximum(maxs[-1][:-step], maxs[-1][step:])
                mins.append(torch.cat([low, torch.full((step,), EMPTY, dtype=torch.long)]))
                maxs.append(torch.cat([high, torch.full((step,), -EMPTY, dtype=torch.long)]))
                step *= 2
            self._tables = (torch.stack(mins), torch.stack(maxs))
        return self._tables

    def submatrix(self, start: int, length: int) -> tuple[int, torch.Tensor]:
        """For output positions [start, start + length): (first input position, the dense
        (length, read length) block of the matrix)."""
        first = self.first[start : start + length]
        last = self.last[start : start + length]
        valid = first <= last
        if not bool(valid.any()):
            return 0, torch.zeros((length, 0), dtype=torch.float64)
        lo, hi = int(first[valid].min()), int(last[valid].max()) + 1
        block = torch.zeros((length, hi - lo), dtype=torch.float64)
        band = self.weights.shape[1]
        rows = torch.arange(length)[valid]
        for k in range(band):
            cols = first[valid] + k
            keep = cols <= last[valid]
            block[rows[keep], cols[keep] - lo] = self.weights[start + rows[keep], k]
        return lo, block


def from_matrix_columns(columns: list[tuple[int, torch.Tensor]], out_length: int, in_length: int):
    """An :class:`AxisMap` from blocks (first column, dense (out, block) columns)."""
    first = torch.full((out_length,), EMPTY, dtype=torch.long)
    last = torch.full((out_length,), -EMPTY, dtype=torch.long)
    entries = []
    for start, block in columns:
        rows, cols = torch.nonzero(block, as_tuple=True)
        cols = cols + start
        first.scatter_reduce_(0, rows, cols, "amin")
        last.scatter_reduce_(0, rows, cols, "amax")
        entries.append((rows, cols, block[rows, cols - start]))
    band = int((last - first).clamp(min=0).max()) + 1 if out_length else 1
    weights = torch.zeros((out_length, band), dtype=torch.float64)
    for rows, cols, values in entries:
        weights[rows, cols - first[rows]] = values
    return AxisMap(first, last, in_length, weights)


def _call_along(entry: Entry, probe: torch.Tensor, axis: int, out_length: int):
    """The recorded operation, with the parameters it has along ``axis``, applied to ``probe``
    (1, B, 1, L): the columns of a (1, B, 1, L) map, height 1, where it is the identity.

    Every axis is probed as the width (the operations treat both axes alike; some kernels
    mishandle a map one pixel wide), and :func:`_verify` checks the result on small maps."""
    func = entry.func
    if func in INDEX_PADS:
        pad = list(arg_of(entry, 1, "padding"))
        return func(probe, [pad[0], pad[1], 0, 0] if axis == 1 else [pad[2], pad[3], 0, 0])
    if func is aten._adaptive_avg_pool2d.default:
        return func(probe, [1, out_length])
    name = func.overloadpacket.__name__
    default = getattr(torch.ops.aten, name).default
    interpolating = "nearest" not in name
    align = bool(arg_of(entry, 2, "align_corners", False)) if interpolating else None
    if func._overloadname == "vec":
        factors = arg_of(entry, 3 if interpolating else 2, "scale_factors")
        given = arg_of(entry, 1, "output_size")
        scale = None if given is not None or factors is None else float(factors[axis])
    else:
        offset = 3 if interpolating else 2
        scale = arg_of(entry, offset + axis, ("scales_h", "scales_w")[axis])
    if interpolating:
        return default(probe, [1, out_length], align, None, scale)
    return default(probe, [1, out_length], None, scale)


def _probe_axis(entry: Entry, axis: int, in_size, out_size) -> AxisMap:
    length = in_size[axis]
    columns = []
    for start in range(0, length, PROBE_BLOCK):
        count = min(PROBE_BLOCK, length - start)
        probe = torch.zeros((1, count, 1, length), dtype=torch.float64)
        index = torch.arange(count)
        probe[0, index, 0, start + index] = 1
        out = _call_along(entry, probe, axis, out_size[axis])
        if tuple(out.shape[-2:]) != (1, out_size[axis]):
            raise NotSeparable(f"{entry.func} does not act on one axis at a time")
        columns.append((start, out[0, :, 0, :].T.contiguous()))
    return from_matrix_columns(columns, out_size[axis], length)


def separable_maps(entry: Entry, in_size, out_size) -> tuple[AxisMap, AxisMap]:
    """The per-axis matrices of a resampling op or index pad (raises :class:`NotSeparable`)."""
    if entry.func not in RESAMPLING and entry.func not in INDEX_PADS:
        raise NotSeparable(f"{entry.func} is not a known separable operation")
    try:
        maps = (
            _probe_axis(entry, 0, in_size, out_size),
            _probe_axis(entry, 1, in_size, out_size),
        )
    except NotSeparable:
        raise
    except Exception as exc:  # an argument layout this code does not know
        raise NotSeparable(f"{entry.func}: {type(exc).__name__}: {exc}") from None
    if in_size[0] * in_size[1] <= VERIFY_LIMIT:
        _verify(entry, maps, in_size, out_size)
    return maps


def _verify(entry: Entry, maps: tuple[AxisMap, AxisMap], in_size, out_size) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, *in_size), dtype=torch.float64, generator=generator)
    expected = _call_full(entry, x)
    _, a_h = maps[0].submatrix(0, out_size[0])
    _, a_w = maps[1].submatrix(0, out_size[1])
    lo_h = int(maps[0].first[maps[0].first < EMPTY].min()) if out_size[0] else 0
    lo_w = int(maps[1].first[maps[1].first < EMPTY].min()) if out_size[1] else 0
    inner = x[0, 0, lo_h : lo_h + a_h.shape[1], lo_w : lo_w + a_w.shape[1]]
    got = a_h @ inner @ a_w.T
    scale = float(expected.abs().max()) or 1.0
    if tuple(expected.shape[-2:]) != tuple(got.shape) or not torch.allclose(
        expected[0, 0], got, atol=1e-9 * scale, rtol=0
    ):
        raise NotSeparable(f"{entry.func} does not factor into one matrix per axis")


def _call_full(entry: Entry, x: torch.Tensor) -> torch.Tensor:
    args = [x, *entry.args[1:]]
    return entry.func(*args, **entry.kwargs)


def bins_map(in_length: int, out_length: int) -> AxisMap:
    """Adaptive pooling bins: output o reads [floor(o·in/out), ceil((o+1)·in/out))."""
    o = torch.arange(out_length)
    first = torch.div(o * in_length, out_length, rounding_mode="floor")
    last = -torch.div(-(o + 1) * in_length, out_length, rounding_mode="floor") - 1
    return AxisMap(first, last, in_length)


def routing_maps(entry: Entry, in_size, out_size) -> tuple[AxisMap, AxisMap]:
    """Adaptive max pooling: the bins each output reads (a routing, so no weights)."""
    assert entry.func is ADAPTIVE_MAX_POOL
    return bins_map(in_size[0], out_size[0]), bins_map(in_size[1], out_size[1])


def affine_map(out_length: int, in_length: int, scale: int, offset: int, span: int) -> AxisMap:
    """Output o reads [o·scale + offset, o·scale + offset + span), clipped to the input."""
    o = torch.arange(out_length)
    first = (o * scale + offset).clamp(0, in_length)
    last = (o * scale + offset + span - 1).clamp(-1, in_length - 1)
    empty = last < first
    first = torch.where(empty, torch.full_like(first, EMPTY), first)
    last = torch.where(empty, torch.full_like(last, -EMPTY), last)
    return AxisMap(first, last, in_length)


def shrink_map(out_length: int, in_length: int, factor: int) -> AxisMap:
    """Output o reads input o // factor (pixel shuffle)."""
    o = torch.arange(out_length)
    return AxisMap(o // factor, o // factor, in_length)
