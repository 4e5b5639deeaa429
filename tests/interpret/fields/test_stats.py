"""The per-pixel statistics that ``erf-stats`` tabulates: one registry, every column in it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vessel_lens.data.samples import Sample
from vessel_lens.interpret.fields.stats import (
    FIELD_STATISTICS,
    GEOMETRY,
    metric_names,
    pixel_table,
)
from vessel_lens.interpret.fields.thresholded import receptive_field_maps


@pytest.fixture(scope="module")
def maps_and_sample():
    """A two-class 3x3 convolution on an 8x8 image: every field lies in a 3x3 window."""
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1)
    image = torch.rand(1, 8, 8)
    maps = receptive_field_maps(model, image, fractions=(0.01, 0.5), mass_fractions=(0.5,))
    label = torch.zeros(8, 8, dtype=torch.bool)
    label[:, 3:5] = True
    return maps, Sample("s", image, label)


@pytest.mark.parametrize("statistic", FIELD_STATISTICS, ids=lambda s: s.__name__)
def test_each_statistic_gives_one_finite_value_per_pixel(statistic, maps_and_sample):
    maps, _ = maps_and_sample
    computed = maps.computed.numpy()
    columns = statistic(maps, lambda values: np.asarray(values)[computed])
    assert columns
    for name, values in columns.items():
        assert name not in GEOMETRY
        assert values.shape == (int(computed.sum()),) and np.isfinite(values).all(), name


def test_the_table_holds_the_geometry_and_exactly_the_registered_statistics(maps_and_sample):
    maps, sample = maps_and_sample
    table = pixel_table(maps, sample)
    pick = lambda values: np.asarray(values)[maps.computed.numpy()]  # noqa: E731
    registered = [name for statistic in FIELD_STATISTICS for name in statistic(maps, pick)]
    assert metric_names(table) == registered
    assert registered[:3] == ["count_1%", "count_50%", "mass_radius_50%"]
    assert list(table)[: len(GEOMETRY)] == list(GEOMETRY)
    # a 3x3 kernel: no pixel's field holds more than 9 input pixels, none is farther than 1.5
    assert table["count_1%"].max() <= 9
    assert table["centroid_distance"].max() <= np.sqrt(2) + 1e-6
