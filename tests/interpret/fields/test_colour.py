"""Colouring: pixels with disjoint receptive fields share one backward pass, and the maps are
those of the plain computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret import JacobianEngine, jacobian, receptive_field
from vessel_lens.interpret.fields._colour import (
    colour_groups,
    combined_gradients,
    periods,
    split_rows,
)
from vessel_lens.interpret.fields.maps import ARRAYS
from vessel_lens.interpret.fields.thresholded import receptive_field_maps


def small_cnn(in_channels: int = 2) -> nn.Module:
    """Field radius 1 + 2 + 1 = 4 (period 9): a 30x37 image holds about 14 pixels per colour."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


class Squash(nn.Module):
    """An operation the structural field has no rule for (a data-dependent sort)."""

    def forward(self, x):
        return x + x.flatten(2).sort(-1).values.reshape(x.shape) * 0


def test_colour_groups_hold_pixels_with_disjoint_fields():
    model = small_cnn()
    field = receptive_field(model, (30, 37))
    assert periods(field) == (9, 9)
    flat = torch.arange(30 * 37)
    groups = colour_groups(flat, 37, periods(field))
    assert len(groups) == 81 and sorted(torch.cat(groups).tolist()) == flat.tolist()
    for group in groups[::10]:
        boxes = field.boxes[group]
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = boxes[i], boxes[j]
                assert not (a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3])


@pytest.mark.parametrize("strategy", ["linear", "vmap", "loop"])
def test_split_combined_gradients_equal_the_plain_rows(strategy):
    model = small_cnn()
    image = torch.rand(2, 30, 37)
    field = receptive_field(model, (30, 37))
    engine = JacobianEngine(model, image, strategy=strategy)
    groups = colour_groups(torch.arange(30 * 37), 37, periods(field))[:5]
    flat, rows, top, left = split_rows(combined_gradients(engine, groups), groups, field)
    plain = jacobian(model, image, pixels=flat, strategy=strategy)
    scale = float(plain.abs().max())
    for n in range(len(flat)):
        h, w = rows.shape[-2:]
        crop = plain[n][:, top[n] : top[n] + h, left[n] : left[n] + w]
        assert float((rows[n] - crop).abs().max()) <= 1e-6 * scale
        # Nothing of the row lies outside the crop.
        assert float(crop.abs().sum()) == pytest.approx(float(plain[n].abs().sum()), rel=1e-6)


@pytest.mark.parametrize("strategy", ["linear", "vmap"])
@pytest.mark.parametrize("mode", ["global", "pixel"])
def test_coloured_maps_equal_plain_maps(strategy, mode):
    model = small_cnn()
    image = torch.rand(2, 30, 37)
    fractions = (0.005, 0.05, 0.5)
    for channels in ("sum", "separate"):
        plain = receptive_field_maps(
            model, image, fractions, mode, strategy=strategy, colouring="never", channels=channels
        )
        coloured = receptive_field_maps(
            model, image, fractions, mode, strategy=strategy, colouring="always", channels=channels
        )
        assert coloured.metadata["colouring"] and not plain.metadata["colouring"]
        assert coloured.metadata["backward_passes"] == 81
        assert plain.metadata["backward_passes"] == 30 * 37
        for name in ARRAYS:
            a, b = getattr(plain, name), getattr(coloured, name)
            if a.is_floating_point():
                scale = float(a.nan_to_num(0).abs().max()) or 1.0
                close = (a - b).nan_to_num(0).abs().max() <= 1e-6 * scale
                assert bool(close) and torch.equal(a.isnan(), b.isnan()), name
            else:
                assert torch.equal(a, b), name


@pytest.mark.parametrize("strategy", ["linear", "vmap"])
def test_auto_measures_both_ways_and_keeps_the_maps(strategy):
    model = small_cnn()
    image = torch.rand(2, 30, 37)
    plain = receptive_field_maps(
        model, image, (0.1,), "pixel", strategy=strategy, colouring="never"
    )
    auto = receptive_field_maps(model, image, (0.1,), "pixel", strategy=strategy)
    choice = auto.metadata["colouring_choice"]
    assert choice.split()[0] in ("coloured", "plain") and "ms/pixel" in choice
    # the trial batch is always coloured; the rest follows the measurement
    assert auto.metadata["colouring"] and auto.metadata["colour_period"] == [9, 9]
    assert auto.metadata["backward_passes"] < plain.metadata["backward_passes"] or (
        choice.startswith("plain")
    )
    for name in ARRAYS:
        a, b = getattr(plain, name), getattr(auto, name)
        if a.is_floating_point():
            scale = float(a.nan_to_num(0).abs().max()) or 1.0
            assert bool((a - b).nan_to_num(0).abs().max() <= 1e-6 * scale), name
        else:
            assert torch.equal(a, b), name


def test_auto_does_not_colour_when_a_pass_would_serve_one_pixel():
    model = small_cnn()
    image = torch.rand(2, 30, 37)
    # An image smaller than twice the field gives fewer than 2 pixels per pass.
    small = receptive_field_maps(model, image[:, :10, :11], (0.1,), "pixel", strategy="vmap")
    assert not small.metadata["colouring"] and not small.metadata["colouring_choice"]


def test_colouring_needs_a_structural_field():
    model = nn.Sequential(small_cnn(), Squash())
    image = torch.rand(2, 20, 20)
    maps = receptive_field_maps(model, image, (0.1,), "pixel", strategy="vmap")
    assert not maps.metadata["colouring"]
    with pytest.raises(ConfigError, match="colouring needs"):
        receptive_field_maps(model, image, (0.1,), "pixel", strategy="vmap", colouring="always")


def test_no_pixels_with_colouring_gives_empty_maps():
    model = small_cnn()
    none = torch.zeros(0, dtype=torch.long)
    for mode in ("global", "pixel"):
        maps = receptive_field_maps(
            model, torch.rand(2, 12, 12), (0.1,), mode, pixels=none, strategy="vmap",
            colouring="always",
        )  # fmt: skip
        assert not bool(maps.computed.any()) and bool((maps.count == -1).all())
