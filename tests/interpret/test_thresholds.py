"""Thresholded-gradient statistics on hand-made maps."""

from __future__ import annotations

import pytest
import torch

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.thresholds import (
    gradient_magnitude,
    pixel_stats,
    threshold_value,
)


def test_stats_by_hand():
    magnitude = torch.zeros(6, 7)
    magnitude[1, 2] = 1.0
    magnitude[3, 5] = 0.5
    magnitude[4, 2] = 0.05  # below 10 % of the maximum
    stats = pixel_stats(magnitude, threshold_value(magnitude, 0.1, "pixel"))
    assert stats.threshold == pytest.approx(0.1)
    assert stats.count == 2
    assert (stats.top, stats.left, stats.bottom, stats.right) == (1, 2, 3, 5)
    assert (stats.height, stats.width, stats.area) == (3, 4, 12)
    assert stats.fulfillment == pytest.approx(2 / 12)
    assert pixel_stats(magnitude, 0.01).count == 3


def test_negative_gradients_count_by_magnitude():
    # The original compared with 1 % of the signed maximum; a negative peak must still count.
    gradient = torch.zeros(1, 4, 4)
    gradient[0, 0, 0] = -2.0
    gradient[0, 3, 3] = 0.5
    magnitude = gradient_magnitude(gradient)
    stats = pixel_stats(magnitude, threshold_value(magnitude, 0.5, "pixel"))
    assert stats.count == 1 and (stats.top, stats.left) == (0, 0)


def test_modes_and_channels():
    gradient = torch.tensor([[[1.0, -3.0]], [[-1.0, 1.0]]])  # (C=2, H=1, W=2)
    magnitude = gradient_magnitude(gradient)
    assert magnitude.tolist() == [[2.0, 4.0]]
    assert threshold_value(magnitude, 0.5, "global", global_max=10.0) == pytest.approx(5.0)
    assert threshold_value(magnitude, 0.25, "absolute") == pytest.approx(0.25)
    empty = pixel_stats(magnitude, 100.0)
    assert empty.count == 0 and empty.area == 0 and empty.fulfillment == 0.0


@pytest.mark.parametrize(
    ("fraction", "mode", "message"),
    [(1.5, "pixel", "must be in"), (-0.1, "global", "must be in"), (0.1, "median", "mode")],
)
def test_bad_threshold_options(fraction, mode, message):
    with pytest.raises(ConfigError, match=message):
        threshold_value(torch.ones(2, 2), fraction, mode, global_max=1.0)


def test_global_needs_maximum():
    with pytest.raises(ConfigError, match="global_max"):
        threshold_value(torch.ones(2, 2), 0.1, "global")
