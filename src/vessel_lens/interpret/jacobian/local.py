"""Jacobian rows of a large image computed on crops that hold each pixel's receptive field.

A 3000x3000 image is too large for one recorded forward pass (the reference model's tape
would need about 30 GB), but a local model's output at pixel p depends only on the input
inside p's structural receptive field (:func:`~vessel_lens.interpret.receptive_field`):
gradients outside it are exactly zero. So the output pixels are grouped into square cells;
each cell is computed on a crop of the image that extends the cell by a margin of twice the
field's radius on every side, and whose corner lies on the model's period (the spacing at which
its field repeats: 16 for the reference model, whose downsampling grid must line up).

That the crop computes the same function as the whole image at those pixels rests on the
model being translation-equivariant at that period, which is checked, not assumed: for every
crop, a second crop one period larger on every side must give the same logits at the cell's
pixels (to 1e-4 of their largest magnitude; a misaligned grid or a position-dependent model
differs by far more). A model whose field is not local, whose field does not repeat, or that
fails the check is refused with one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.fields.structural import receptive_field
from vessel_lens.interpret.jacobian.engine import JacobianEngine

PROBE_SIDES = (128, 256, 384, 512)
"""Probe sizes tried, in turn, for the field and its period."""
PERIODS = (1, 2, 4, 8, 16, 32, 64)
LOCAL_PIXELS = 1024 * 1024
"""``crops="auto"`` computes on crops above this many pixels."""
AGREEMENT = 1e-4


@dataclass(frozen=True)
class CropPlan:
    """How a large image is cut: field ``radius``, the model's ``period``, the ``margin``
    added around each ``cell`` (all in pixels)."""

    radius: int
    period: int
    margin: int
    cell: int


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _period(field, side: int) -> int | None:
    """The smallest spacing at which boxes away from the borders repeat, shifted by it."""
    boxes = field.boxes.reshape(side, side, 4)
    for period in PERIODS:
        lo, hi = field.radius, side - field.radius - period
        if hi - lo < 2 * period:
            break
        here = boxes[lo:hi, lo:hi]
        down = boxes[lo + period : hi + period, lo:hi]
        right = boxes[lo:hi, lo + period : hi + period]
        shift = torch.tensor([period, period, 0, 0])
        if torch.equal(down, here + shift) and torch.equal(right, here + shift.roll(2)):
            return period
    return None


def plan_crops(model: nn.Module, in_channels: int, device=None) -> CropPlan:
    """Measure the field and its period on probes; refuse models that are not local."""
    for side in PROBE_SIDES:
        field = receptive_field(model, side, in_channels=in_channels, device=device)
        centre = field.boxes[(side // 2) * side + side // 2]
        touches = bool(centre[0] <= 0 or centre[1] >= side or centre[2] <= 0 or centre[3] >= side)
        if touches or side - 2 * field.radius < 4 * PERIODS[-1]:
            continue  # too small to see the field whole, or to see it repeat
        period = _period(field, side)
        if period is None:
            raise ConfigError(
                "crops: the model's receptive field does not repeat across the image "
                "(a position-dependent model); compute the whole image instead"
            )
        margin = _round_up(2 * field.radius, period)
        cell = _round_up(max(2 * margin, 128), period)
        return CropPlan(field.radius, period, margin, cell)
    reasons = "; ".join(field.reasons) or f"it is larger than {PROBE_SIDES[-1]} pixels"
    raise ConfigError(f"crops: the model's receptive field is not local ({reasons})")


class CropJacobian:
    """Rows of ``image`` (C, H, W) pixel by pixel, each cell of pixels on its own crop.

    :meth:`chunks` yields (flat pixels (n,), rows (n, C, h, w), top, left): rows over a crop
    whose corner is at (top, left) of the image, zero outside it. ``probability`` holds the
    target class's probability at every pixel computed so far (NaN elsewhere).
    """

    def __init__(self, model: nn.Module, image: torch.Tensor, plan: CropPlan, **options):
        self.model, self.image, self.plan, self.options = model, image, plan, options
        self.height, self.width = (int(s) for s in image.shape[-2:])
        self.probability = torch.full((self.height, self.width), float("nan"))
        self.strategy = ""
        self.crops = 0

    def _box(self, cell_row: int, cell_col: int, margin: int) -> tuple[int, int, int, int]:
        cell = self.plan.cell
        top = max(0, cell_row * cell - margin)
        left = max(0, cell_col * cell - margin)
        bottom = min(self.height, (cell_row + 1) * cell + margin)
        right = min(self.width, (cell_col + 1) * cell + margin)
        return top, bottom, left, right

    def _check(self, engine, flat_local, box, local_width) -> None:
        """The same logits from a crop one period larger on every side."""
        top, bottom, left, right = box
        period = self.plan.period
        wider = (
            max(0, top - period),
            min(self.height, bottom + period),
            max(0, left - period),
            min(self.width, right + period),
        )
        crop = self.image[:, wider[0] : wider[1], wider[2] : wider[3]]
        device = engine.device
        with torch.no_grad():
            logits = self.model(crop[None].to(device, torch.float32))
        rows = flat_local // local_width + (top - wider[0])
        cols = flat_local % local_width + (left - wider[2])
        expected = logits[0][:, rows.to(device), cols.to(device)]
        got = engine.logits[0][
            :, (flat_local // local_width).to(device), (flat_local % local_width).to(device)
        ]
        scale = float(expected.abs().max()) or 1.0
        if float((expected - got).abs().max()) > AGREEMENT * scale:
            raise ConfigError(
                "crops: the model's output at a pixel depends on where the crop lies (it is "
                "not translation-equivariant at its period); compute the whole image instead"
            )

    def chunks(self, flat: torch.Tensor, chunk_size: int | None = None) -> Iterator:
        cell = self.plan.cell
        rows, cols = flat // self.width, flat % self.width
        key = (rows // cell) * (math.ceil(self.width / cell)) + cols // cell
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        groups = torch.split(flat[order], counts.tolist())
        per_row_cells = math.ceil(self.width / cell)
        for k, group in zip(keys.tolist(), groups, strict=True):
            box = self._box(k // per_row_cells, k % per_row_cells, self.plan.margin)
            top, bottom, left, right = box
            crop = self.image[:, top:bottom, left:right]
            engine = JacobianEngine(self.model, crop, **self.options)
            self.strategy = engine.strategy
            local_width = right - left
            local = (group // self.width - top) * local_width + (group % self.width - left)
            self._check(engine, local, box, local_width)
            self.crops += 1
            r, c = group // self.width, group % self.width
            self.probability[r, c] = engine.probability.cpu()[r - top, c - left]
            for start in range(0, len(group), chunk_size or engine.default_chunk()):
                part = slice(start, start + (chunk_size or engine.default_chunk()))
                yield group[part], engine.rows(local[part]), top, left
            del engine
