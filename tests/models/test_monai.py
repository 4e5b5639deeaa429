"""Models from MONAI and common normalisations: ``auto`` picks the exact ``linear`` strategy,
and the structural field is tight (issue 12 item 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vessel_lens.interpret import JacobianEngine, receptive_field
from vessel_lens.interpret.proof.grammar import ChannelLayerNorm, randomise

nets = pytest.importorskip("monai.networks.nets")


MODELS = {
    "UNet": lambda: nets.UNet(
        spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2)
    ),
    "UNet residual, batch norm": lambda: nets.UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=2,
        norm="batch",
    ),
    "BasicUNet": lambda: nets.BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)
    ),
    "AttentionUnet": lambda: nets.AttentionUnet(
        spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2)
    ),
    "SegResNet": lambda: nets.SegResNet(
        spatial_dims=2, in_channels=1, out_channels=2, init_filters=8
    ),
    "dilated conv + GroupNorm": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=2, dilation=2),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 2, 3, padding=1),
    ),
    "LayerNorm over channels": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), ChannelLayerNorm(8), nn.GELU(), nn.Conv2d(8, 2, 1)
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_auto_is_linear_and_exact(name):
    model = randomise(MODELS[name](), seed=0)
    torch.manual_seed(1)
    image = torch.rand(1, 32, 24)
    engine = JacobianEngine(model, image)
    assert engine.strategy == "linear", engine.fallback
    rows = torch.cat([r for _, r in engine.chunks(torch.arange(32 * 24))])

    def probability(x):
        return model(x[None]).softmax(1)[0, 1].reshape(-1)

    reference = torch.autograd.functional.jacobian(probability, image)
    scale = float(reference.abs().max())
    assert float((rows - reference).abs().max()) <= 1e-5 * scale
    field = receptive_field(model, (32, 24))
    assert field.tight, field.reasons
    support = reference.abs().sum(1) > 0  # (pixels, H, W)
    ys, xs = torch.arange(32)[None, :, None], torch.arange(24)[None, None, :]
    boxes = field.boxes
    inside = (ys >= boxes[:, 0, None, None]) & (ys < boxes[:, 1, None, None])
    inside = inside & (xs >= boxes[:, 2, None, None]) & (xs < boxes[:, 3, None, None])
    assert not bool((support & ~inside).any())
