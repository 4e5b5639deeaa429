"""Streaming reduction of Jacobian rows to receptive-field statistics.

Rows arrive chunk by chunk as magnitude maps placed at per-row offsets (zero outside); each is
reduced at once to its peak, mass, centroid, Chebyshev-ring mass histogram and, where the
threshold is already known (modes ``pixel`` and ``absolute``, or ``global`` with a given
maximum), its count and bounding box per fraction. Rows are then dropped.

Mode ``global`` without a given maximum cannot threshold a row until every row is seen. For
each row it keeps the (position, magnitude) entries above ``min(fractions) * running_max``
(the running maximum including that row): the final maximum G is at least the running one,
so every entry above ``f * G`` for any fraction f is kept. When the running maximum grows,
entries that can no longer pass are pruned. :meth:`finish` thresholds what is left.

Thresholds follow :func:`vessel_lens.interpret.thresholds.pixel_stats` to the bit: the
threshold ``t = f * max`` is a Python double, and ``magnitude > t`` compares in float32
(PyTorch casts the scalar to the tensor's type), so here thresholds are computed in float64
and rounded to float32 before comparing. Rounding is monotonic, which keeps pruning safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_PRUNE_GROWTH = 1.1
"""Prune kept entries once the running maximum has grown by this factor since the last prune."""


@dataclass
class Reduced:
    """Per-slot results (a slot is one output pixel, or one (channel, pixel) pair). Shapes use
    S = slots: ``count``/``top``/``left``/``bottom``/``right``/``threshold`` (T, S),
    ``radius`` (Q, S), ``centroid`` (S, 2), ``peak``/``mass`` (S,), ``computed`` (S,)."""

    count: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    bottom: torch.Tensor
    right: torch.Tensor
    threshold: torch.Tensor
    radius: torch.Tensor
    centroid: torch.Tensor
    peak: torch.Tensor
    mass: torch.Tensor
    computed: torch.Tensor
    global_max: float
    kept_peak: int


def _threshold32(threshold: torch.Tensor) -> torch.Tensor:
    return threshold.to(torch.float64).to(torch.float32)


def _boxes(above: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor):
    """Count and inclusive box of ``above`` (T, k, h, w) with coordinates ys (k, h), xs (k, w)."""
    count = above.sum((2, 3))
    rows, cols = above.any(3), above.any(2)
    h, w = rows.shape[-1], cols.shape[-1]
    first_row = rows.to(torch.uint8).argmax(2)
    last_row = h - 1 - rows.flip(2).to(torch.uint8).argmax(2)
    first_col = cols.to(torch.uint8).argmax(2)
    last_col = w - 1 - cols.flip(2).to(torch.uint8).argmax(2)
    k = torch.arange(above.shape[1], device=above.device)
    empty = count == 0
    values = []
    for index, grid in ((first_row, ys), (first_col, xs), (last_row, ys), (last_col, xs)):
        values.append(grid[k[None, :], index].masked_fill(empty, -1))
    return count, values


class Accumulator:
    """Collects per-slot statistics of magnitude rows (see the module docs).

    ``slots`` = channels_out x height x width, slot ``c * H * W + flat``. ``fractions`` (T,),
    ``mass_fractions`` (Q,); ``global_max`` fixes the maximum of mode ``global`` in advance.
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels_out: int,
        fractions: tuple[float, ...],
        mode: str,
        mass_fractions: tuple[float, ...],
        global_max: float | None = None,
    ):
        self.height, self.width, self.channels_out = height, width, channels_out
        self.fractions = torch.tensor(fractions, dtype=torch.float64)
        self.mode = mode
        self.mass_fractions = torch.tensor(mass_fractions, dtype=torch.float64)
        self.given_max = global_max
        self.pending = mode == "global" and global_max is None
        slots, t, q = channels_out * height * width, len(fractions), len(mass_fractions)
        self.rings = max(height, width)
        self.count = torch.full((t, slots), -1, dtype=torch.int64)
        self.box = torch.full((4, t, slots), -1, dtype=torch.int64)
        self.threshold = torch.full((t, slots), float("nan"), dtype=torch.float64)
        self.radius = torch.full((q, slots), float("nan"), dtype=torch.float32)
        self.centroid = torch.full((slots, 2), float("nan"), dtype=torch.float64)
        self.peak = torch.full((slots,), float("nan"), dtype=torch.float32)
        self.mass = torch.full((slots,), float("nan"), dtype=torch.float64)
        self.computed = torch.zeros(slots, dtype=torch.bool)
        self.running_max = 0.0
        self.pruned_at = 0.0
        self.entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.kept = 0
        self.kept_peak = 0

    def add(
        self, flat: torch.Tensor, magnitude: torch.Tensor, top: torch.Tensor, left: torch.Tensor
    ) -> None:
        """Reduce rows: ``magnitude`` (n, Co, h, w) float32 for output pixels ``flat`` (n,),
        row i placed at (``top[i]``, ``left[i]``) of the image and zero outside."""
        n, channels, h, w = magnitude.shape
        device = magnitude.device
        flat, top, left = flat.to(device), top.to(device), left.to(device)
        m = magnitude.reshape(n * channels, h, w)
        hw = self.height * self.width
        slots = (torch.arange(channels, device=device)[None, :] * hw + flat[:, None]).reshape(-1)
        rows = (flat // self.width).repeat_interleave(channels)
        cols = (flat % self.width).repeat_interleave(channels)
        ys = top.repeat_interleave(channels)[:, None] + torch.arange(h, device=device)
        xs = left.repeat_interleave(channels)[:, None] + torch.arange(w, device=device)
        peak = m.amax((1, 2)) if h * w else m.new_zeros(len(m))
        self._moments(m, slots, rows, cols, ys, xs)
        self.peak[slots.cpu()] = peak.cpu()
        self.computed[slots.cpu()] = True
        self.running_max = max(self.running_max, float(peak.max()) if len(peak) else 0.0)
        if self.pending:
            self._keep(m, slots, ys, xs)
        else:
            self._threshold_now(m, slots, peak, ys, xs)

    def _moments(self, m, slots, rows, cols, ys, xs) -> None:
        """Mass, centroid and mass radii. The mass of every centred square comes from one
        integral image (float64) of each row: four look-ups per radius."""
        k, h, w = m.shape
        integral = torch.zeros((k, h + 1, w + 1), dtype=torch.float64, device=m.device)
        integral[:, 1:, 1:] = m
        integral = integral.cumsum_(1).cumsum_(2).reshape(k, -1)
        total = integral[:, -1]
        radii = torch.arange(self.rings, device=m.device)
        local_y, local_x = rows - ys[:, 0], cols - xs[:, 0]
        y0 = (local_y[:, None] - radii).clamp(0, h)
        y1 = (local_y[:, None] + radii + 1).clamp(0, h)
        x0 = (local_x[:, None] - radii).clamp(0, w)
        x1 = (local_x[:, None] + radii + 1).clamp(0, w)

        def corner(y, x):
            return integral.gather(1, y * (w + 1) + x)

        square = corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0)
        goal = self.mass_fractions.to(m.device)[:, None, None] * total[None, :, None]
        radius = (square[None] >= goal).to(torch.uint8).argmax(2).float()
        radius[:, total <= 0] = float("nan")
        grid = integral.reshape(k, h + 1, w + 1)
        row_mass = grid[:, 1:, -1] - grid[:, :-1, -1]
        col_mass = grid[:, -1, 1:] - grid[:, -1, :-1]
        centre_y = (row_mass * ys).sum(1) / total - rows
        centre_x = (col_mass * xs).sum(1) / total - cols
        centroid = torch.stack([centre_y, centre_x], 1)
        centroid[total <= 0] = float("nan")
        where = slots.cpu()
        self.mass[where] = total.cpu()
        self.radius[:, where] = radius.cpu()
        self.centroid[where] = centroid.cpu()

    def _threshold_now(self, m, slots, peak, ys, xs) -> None:
        fractions = self.fractions.to(m.device)[:, None]
        if self.mode == "pixel":
            threshold = fractions * peak.double()[None, :]
        elif self.mode == "absolute":
            threshold = fractions.expand(-1, len(m))
        else:
            threshold = (fractions * float(self.given_max)).expand(-1, len(m))
        above = m[None] > _threshold32(threshold)[:, :, None, None]
        count, corners = _boxes(above, ys, xs)
        where = slots.cpu()
        self.count[:, where] = count.cpu()
        for axis, value in enumerate(corners):
            self.box[axis][:, where] = value.cpu()
        self.threshold[:, where] = threshold.cpu()

    def _keep(self, m, slots, ys, xs) -> None:
        limit = float(self.fractions.min()) * self.running_max
        if self.running_max > self.pruned_at * _PRUNE_GROWTH and self.entries:
            self._prune(limit)
        index = (m > _threshold32(torch.tensor(limit))).reshape(-1).nonzero().squeeze(1)
        values = m.reshape(-1)[index]
        h, w = m.shape[-2:]
        k, i, j = index // (h * w), (index // w) % h, index % w
        position = ys[k, i] * self.width + xs[k, j]
        entry = (slots[k].int().cpu(), position.int().cpu(), values.cpu())
        self.entries.append(entry)
        self.kept += len(entry[0])
        self.kept_peak = max(self.kept_peak, self.kept)

    def _prune(self, limit: float) -> None:
        """Drop entries at or below ``limit``, one stored piece at a time (no large copies)."""
        threshold = _threshold32(torch.tensor(limit))
        kept = 0
        for index, (slots, positions, values) in enumerate(self.entries):
            keep = values > threshold
            self.entries[index] = (slots[keep], positions[keep], values[keep])
            kept += len(self.entries[index][0])
        self.entries = [piece for piece in self.entries if len(piece[0])]
        self.kept = kept
        self.pruned_at = self.running_max

    def finish(self) -> Reduced:
        global_max = self.running_max if self.given_max is None else float(self.given_max)
        if self.pending:
            self._threshold_kept(global_max)
        self.entries = []
        top, left, bottom, right = self.box
        return Reduced(
            self.count,
            top,
            left,
            bottom,
            right,
            self.threshold,
            self.radius,
            self.centroid,
            self.peak,
            self.mass,
            self.computed,
            global_max,
            self.kept_peak,
        )

    def _threshold_kept(self, global_max: float) -> None:
        computed = self.computed
        slots_total = len(computed)
        for t, fraction in enumerate(self.fractions.tolist()):
            threshold = fraction * global_max
            limit = _threshold32(torch.tensor(threshold))
            count = torch.zeros(slots_total, dtype=torch.int64)
            big = torch.iinfo(torch.int64).max
            lows = [torch.full((slots_total,), big, dtype=torch.int64) for _ in range(2)]
            highs = [torch.full((slots_total,), -1, dtype=torch.int64) for _ in range(2)]
            for slots, positions, values in self.entries:
                above = values > limit
                slot = slots[above].long()
                position = positions[above].long()
                count += torch.bincount(slot, minlength=slots_total)
                for axis, coordinate in enumerate((position // self.width, position % self.width)):
                    lows[axis].scatter_reduce_(0, slot, coordinate, "amin")
                    highs[axis].scatter_reduce_(0, slot, coordinate, "amax")
            empty = count == 0
            self.count[t] = torch.where(computed, count, -1)
            for axis, value in enumerate((lows[0], lows[1], highs[0], highs[1])):
                self.box[axis][t] = torch.where(computed & ~empty, value, -1)
            self.threshold[t] = torch.where(
                computed, torch.tensor(threshold, dtype=torch.float64), float("nan")
            )
