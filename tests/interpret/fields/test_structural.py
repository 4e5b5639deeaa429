"""Receptive fields: the structural bound is guaranteed (rows vanish outside it) and tight."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret import jacobian, receptive_field
from vessel_lens.interpret.fields.structural import _surrogate
from vessel_lens.models import ResNetSeg


class TinyEncoderDecoder(nn.Module):
    """One stride-2 level with a skip: a field smaller than the image, depending on parity."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        skip = torch.relu(self.stem(x))
        return self.head(torch.relu(self.up(torch.relu(self.down(skip)))) + skip)


def outside(rows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per row: the largest |value| outside its box."""
    mask = torch.ones_like(rows[:, 0], dtype=torch.bool)
    for n, (top, bottom, left, right) in enumerate(boxes.tolist()):
        mask[n, top:bottom, left:right] = False
    return (rows.abs().sum(1) * mask).flatten(1).amax(1)


def test_structural_field_equals_the_empirical_one_pixel_by_pixel():
    torch.manual_seed(0)
    model = TinyEncoderDecoder().eval()
    structural = receptive_field(model, (14, 18))
    empirical = receptive_field(model, (14, 18), method="empirical")
    assert structural.tight
    assert torch.equal(structural.boxes, empirical.boxes)
    assert (structural.up, structural.down, structural.left, structural.right) == (4, 4, 4, 4)
    even, odd = structural.boxes[18 * 6 + 6], structural.boxes[18 * 6 + 7]
    assert even.tolist() == [2, 11, 2, 11]  # worked out by hand: offsets -4 .. +4
    assert odd.tolist() == [2, 11, 4, 11]  # an odd column reaches 3 either side


def test_reference_model_rows_vanish_outside_the_bound_which_depends_on_position_mod_16():
    torch.manual_seed(0)
    model = ResNetSeg(width=2).eval()
    large = receptive_field(model, 160)
    interior = large.boxes.reshape(160, 160, 4)[64:96, 64:96]
    assert bool((interior[..., 0] > 0).all() and (interior[..., 1] < 160).all())
    below = interior[..., 1] - torch.arange(64, 96)[:, None]
    assert len(below.unique()) > 1
    assert torch.equal(below[:16], below[16:32])
    field = receptive_field(model, 80)
    assert field.tight and field.radius == large.radius < 79
    pixels = torch.tensor([0, 81 * 7, 80 * 40 + 40, 80 * 40 + 47, 80 * 79 + 79, 80 * 63 + 15])
    rows = jacobian(model, torch.rand(1, 80, 80), pixels=pixels)
    assert torch.equal(outside(rows, field.boxes[pixels]), torch.zeros(len(pixels)))
    for pixel in pixels.tolist():
        top, bottom, left, right = field.box(*divmod(pixel, 80))
        assert top <= field.boxes[pixel, 0] and bottom >= field.boxes[pixel, 1]
        assert left <= field.boxes[pixel, 2] and right >= field.boxes[pixel, 3]
    surrogate_rows = jacobian(
        _surrogate(model),
        torch.ones(1, 80, 80, dtype=torch.float64),
        pixels=pixels,
        output="logit",
        target_class=0,
        dtype=torch.float64,
    )
    support = surrogate_rows[:, 0] != 0
    for n, (top, bottom, left, right) in enumerate(field.boxes[pixels].tolist()):
        assert support[n, top, left:right].any() and support[n, bottom - 1, left:right].any()
        assert support[n, top:bottom, left].any() and support[n, top:bottom, right - 1].any()


def test_overlap_test_uses_the_bound():
    torch.manual_seed(0)
    field = receptive_field(TinyEncoderDecoder().eval(), 32)
    assert field.overlaps((5, 5), (5, 5 + field.right + field.left))
    assert not field.overlaps((5, 5), (5, 5 + field.right + field.left + 1))
    assert field.box(0, 0) == (0, field.down + 1, 0, field.right + 1)


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="method"):
        receptive_field(TinyEncoderDecoder(), 16, method="guess")


class StridedSlice(nn.Module):
    """Every third row and every other column, resized back: a slice with a step."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 1)
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = self.a(x)[:, :, 1::3, ::2]
        return self.b(nn.functional.interpolate(y, size=x.shape[-2:]))


def test_rows_vanish_outside_the_bound_of_a_strided_slice():
    torch.manual_seed(0)
    model = StridedSlice().eval()
    field = receptive_field(model, 12)
    rows = jacobian(model, torch.rand(1, 12, 12), strategy="vmap")
    assert float(outside(rows, field.boxes).max()) == 0.0


def test_largest_area_is_the_largest_box():
    model = nn.Conv2d(1, 2, 5, padding=2)  # 5 x 5 boxes, clipped at the borders
    field = receptive_field(model, 16)
    assert field.largest_area == 25
    assert replace(field, boxes=None).largest_area is None
