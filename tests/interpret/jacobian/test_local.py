"""Receptive-field maps of large images on crops that hold each pixel's field (issue 12 item 3):
the same maps as the whole-image computation, and a clear refusal where crops cannot be exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret import receptive_field_maps
from vessel_lens.interpret.fields.maps import ARRAYS
from vessel_lens.interpret.jacobian.local import plan_crops
from vessel_lens.interpret.proof.grammar import randomise


def pooled_net() -> nn.Module:
    """Period 4 (two poolings), field radius 10."""
    return randomise(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=4),
            nn.Conv2d(4, 2, 3, padding=1),
        ),
        seed=0,
    )


class CoordinateNet(nn.Module):
    """Sees where it is in the image: a coordinate channel (CoordConv)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        rows = torch.linspace(-1, 1, x.shape[-2]).reshape(1, 1, -1, 1).expand_as(x)
        return self.conv(torch.cat([x, rows], 1))


def test_the_plan_reads_field_and_period():
    plan = plan_crops(pooled_net(), 1)
    assert plan.period == 4
    assert plan.margin >= 2 * plan.radius and plan.margin % 4 == 0 and plan.cell % 4 == 0


def test_maps_on_crops_equal_whole_image_maps():
    model = pooled_net()
    image = torch.rand(1, 300, 260, generator=torch.Generator().manual_seed(0))
    pixels = torch.randint(0, 300 * 260, (60,), generator=torch.Generator().manual_seed(1))
    whole = receptive_field_maps(model, image, (0.01, 0.1), "pixel", pixels=pixels, crops="never")
    crops = receptive_field_maps(model, image, (0.01, 0.1), "pixel", pixels=pixels, crops="always")
    assert crops.metadata["crops"] > 1
    for name in ARRAYS:
        a, b = getattr(whole, name), getattr(crops, name)
        if name == "probability":
            computed = crops.computed
            assert float((a[computed] - b[computed]).abs().max()) < 1e-5
            assert bool(b[~computed].isnan().all())
        elif a.is_floating_point():
            scale = float(a.nan_to_num(0).abs().max()) or 1.0
            assert float((a - b).nan_to_num(0).abs().max()) <= 1e-5 * scale, name
            assert torch.equal(a.isnan(), b.isnan()), name
        else:
            assert torch.equal(a, b), name


def test_large_images_use_crops_by_default():
    model = pooled_net()
    image = torch.rand(1, 1100, 1000, generator=torch.Generator().manual_seed(0))
    pixels = torch.tensor([[5, 7], [600, 500], [1099, 999]])
    maps = receptive_field_maps(model, image, (0.05,), "pixel", pixels=pixels)
    assert maps.metadata["crops"] == 3 and int(maps.computed.sum()) == 3
    assert bool((maps.count[0][maps.computed] > 0).all())


def test_models_that_are_not_local_are_refused():
    instance = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.InstanceNorm2d(2), nn.Conv2d(2, 2, 1)
    )
    with pytest.raises(ConfigError, match="not local"):
        receptive_field_maps(instance, torch.rand(1, 64, 64), (0.1,), "pixel", crops="always")
    with pytest.raises(ConfigError, match="depends on where the crop lies"):
        receptive_field_maps(
            CoordinateNet(), torch.rand(1, 600, 40), (0.1,), "pixel", pixels=[[300, 20]],
            crops="always",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="crops 'some'"):
        receptive_field_maps(pooled_net(), torch.rand(1, 32, 32), (0.1,), "pixel", crops="some")
