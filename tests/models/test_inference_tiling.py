"""Sliding-window inference (``--tile``): the plain pass when the image fits, the plain values
away from the window seams, MONAI imported only when needed."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from vessel_lens.cli import main
from vessel_lens.errors import ConfigError
from vessel_lens.models import create_model
from vessel_lens.models.inference import vessel_probability

RADIUS = 2
"""Receptive-field radius of :func:`local_model`: two 3x3 convolutions."""


def local_model() -> nn.Module:
    """A translation-equivariant model whose output at a pixel depends on the pixels within
    :data:`RADIUS` of it only (no stride, no normalisation)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 2, 3, padding=1)
    ).eval()


def window_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Where MONAI's windows start along one side: every int(tile * (1 - overlap)) pixels, the
    last one flush with the far edge."""
    if size <= tile:
        return [0]
    step = max(int(tile * (1 - overlap)), 1)
    count = math.ceil((size - tile) / step) + 1
    return sorted({min(i * step, size - tile) for i in range(count)})


def near_seams(shape: tuple[int, int], tile: int, overlap: float) -> np.ndarray:
    """Pixels within RADIUS of a window border that is not an image border."""
    near = np.zeros(shape, dtype=bool)
    for axis, size in enumerate(shape):
        for start in window_starts(size, tile, overlap):
            for edge in (start, start + min(tile, size)):
                if 0 < edge < size:
                    index = [slice(None), slice(None)]
                    index[axis] = slice(max(edge - RADIUS, 0), edge + RADIUS)
                    near[tuple(index)] = True
    return near


@pytest.mark.parametrize("tile", [100, 128, 0])
def test_a_tile_the_image_fits_in_gives_the_plain_pass(tile):
    model = create_model("resnet_seg", width=4).eval()
    image = torch.rand(1, 100, 75)
    plain = vessel_probability(model, image)
    assert torch.equal(vessel_probability(model, image, tile=tile), plain)


@pytest.mark.parametrize("shape, tile", [((100, 75), 32), ((75, 100), 40), ((70, 33), 24)])
def test_tiled_equals_the_plain_pass_away_from_the_seams(shape, tile):
    model = local_model()
    image = torch.rand(1, *shape)
    plain = vessel_probability(model, image)
    tiled = vessel_probability(model, image, tile=tile, overlap=0.25)
    difference = (tiled - plain).abs().numpy()
    near = near_seams(shape, tile, 0.25)
    assert near.any() and (~near).any()
    # away from the seams every window sees the pixel's whole receptive field, so every
    # window gives the plain value and their Gaussian-weighted mean is that value up to the
    # rounding of the weighted sum (float32)
    assert difference[~near].max() < 1e-5
    # near them a window's zero padding replaces real pixels: the test would see a wrong blend
    assert difference[near].max() > 1e-3


def test_tiled_inference_of_the_real_architecture_with_flips():
    model = create_model("resnet_seg", width=4).eval()
    image = torch.rand(2, 1, 100, 75)
    tiled = vessel_probability(model, image, tile=48, flip_average=True)
    assert tiled.shape == (2, 100, 75)
    assert float(tiled.min()) >= 0.0 and float(tiled.max()) <= 1.0
    plain = vessel_probability(model, image, flip_average=True)
    assert float((tiled - plain).abs().mean()) < 0.2


@pytest.mark.parametrize("tile, overlap, message", [(8, 0.25, "--tile 8"), (64, 1.0, "--overlap")])
def test_bad_tiling_is_refused(tile, overlap, message):
    model = local_model()
    with pytest.raises(ConfigError, match=message):
        vessel_probability(model, torch.rand(1, 20, 20), tile=tile, overlap=overlap)


def test_bad_tile_on_the_command_line_is_one_line(tmp_path, capsys, write_image):
    write_image(tmp_path / "in" / "a.png", np.zeros((20, 30), np.uint8))
    for command in (
        ["predict", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "p")],
        ["evaluate", "--out", str(tmp_path / "e")],
        ["report", "--out", str(tmp_path / "r")],
    ):
        assert main([*command, "--checkpoint", "vessmap-w16", "--tile", "4"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: --tile 4: must be 0 (whole images) or at least 16"], command
        assert not (tmp_path / "p").exists() and not (tmp_path / "r" / "report.html").exists()


LAZY = """
import sys
sys.modules["torchvision"] = None  # MONAI must work without it
import torch
import vessel_lens, vessel_lens.cli, vessel_lens.models.inference as inference
assert "monai" not in sys.modules, "imported at import time"
model = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
p = inference.vessel_probability(model, torch.rand(1, 40, 30), tile=16)
assert "monai" in sys.modules and tuple(p.shape) == (40, 30)
print("ok")
"""


def test_monai_is_imported_lazily_and_without_torchvision():
    result = subprocess.run(
        [sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_monai_is_a_core_dependency(core_dependencies):
    assert "monai" in core_dependencies


def test_the_command_line_and_the_library_share_the_overlap():
    from vessel_lens.cli import _common
    from vessel_lens.models import inference

    assert _common.DEFAULT_OVERLAP == inference.DEFAULT_OVERLAP
