"""Segmentation targets: which pixels, their value, and the errors for empty or ambiguous ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.targets import (
    Target,
    TargetValue,
    error_target,
    mask_target,
    pixel_target,
    predicted_vessels,
    segment_target,
)


def _cross() -> torch.Tensor:
    """A 9x9 mask: a horizontal vessel on row 4, a vertical one on column 6, and a separate
    blob at the top-left corner."""
    vessels = torch.zeros(9, 9, dtype=torch.bool)
    vessels[4, 1:8] = True
    vessels[0:9, 6] = True
    vessels[0:2, 0:2] = True
    return vessels


def test_pixel_target_marks_one_pixel():
    target = pixel_target(2, 3, (5, 6))
    assert target.kind == "pixel" and target.pixel == (2, 3) and target.pixel_count == 1
    assert target.mask.shape == (5, 6) and bool(target.mask[2, 3])


@pytest.mark.parametrize("row, col", [(-1, 0), (5, 0), (0, 6), (9, 9)])
def test_pixel_outside_the_image_is_refused(row, col):
    with pytest.raises(ConfigError, match="outside the 5x6 image"):
        pixel_target(row, col, (5, 6))


def test_value_sums_probability_or_logit_over_the_mask():
    logits = torch.zeros(2, 2, 3, 3)
    logits[0, 1] = torch.arange(9.0).view(3, 3)
    logits[1, 0] = 1.0
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 1] = mask[2, 2] = True
    target = mask_target(mask)
    probability = logits.softmax(1)[:, 1]
    expected = probability[:, 0, 1] + probability[:, 2, 2]
    torch.testing.assert_close(target.value(logits), expected)
    torch.testing.assert_close(
        target.with_output("logit").value(logits), torch.tensor([1.0 + 8.0, 0.0])
    )


def test_target_value_module_wraps_a_model():
    conv = nn.Conv2d(1, 2, 1)
    target = pixel_target(1, 1, (4, 4), output="logit", target_class=0)
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(TargetValue(conv, target)(x), conv(x)[:, 0, 1, 1])


def test_value_refuses_a_class_the_model_lacks_and_a_size_mismatch():
    logits = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ConfigError, match="2 output classes"):
        pixel_target(0, 0, (4, 4), target_class=2).value(logits)
    with pytest.raises(ConfigError, match="mask is 3x3 but the image is 4x4"):
        pixel_target(0, 0, (3, 3)).value(logits)


def test_segment_is_the_connected_component_inside_the_window():
    vessels = _cross()
    whole = segment_target(vessels, 4, 2, radius=10, source="label")
    assert whole.kind == "segment"
    expected = vessels.clone()
    expected[0:2, 0:2] = False  # the corner blob is not connected to the click
    assert torch.equal(whole.mask, expected)
    local = segment_target(vessels, 4, 2, radius=1)
    assert torch.equal(torch.nonzero(local.mask)[:, 0].unique(), torch.tensor([4]))
    assert local.pixel_count == 3  # columns 1..3 of row 4


def test_segment_window_is_clipped_at_the_border():
    vessels = _cross()
    target = segment_target(vessels, 0, 0, radius=3)
    assert torch.equal(
        target.mask,
        torch.zeros_like(vessels).index_put_(
            (torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])), torch.tensor(True)
        ),
    )


def test_segment_needs_a_click_on_a_vessel():
    with pytest.raises(ConfigError, match=r"\(row 0, col 4\) is not on a vessel of the prediction"):
        segment_target(_cross(), 0, 4, source="prediction")
    with pytest.raises(ConfigError, match="radius"):
        segment_target(_cross(), 4, 2, radius=-1)


def test_error_regions_against_the_label():
    prediction = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    label = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    fp = error_target(prediction, label, "false_positive")
    fn = error_target(prediction, label, "false_negative")
    assert torch.nonzero(fp.mask).tolist() == [[0, 1]]
    assert torch.nonzero(fn.mask).tolist() == [[1, 0]]
    assert fp.kind == "false_positive" and fn.kind == "false_negative"


def test_empty_error_regions_and_masks_are_refused():
    same = torch.eye(3, dtype=torch.bool)
    with pytest.raises(ConfigError, match="no false-positive pixels"):
        error_target(same, same, "false_positive")
    with pytest.raises(ConfigError, match="no false-negative pixels"):
        error_target(same, same, "false_negative")
    with pytest.raises(ConfigError, match="choose one of"):
        error_target(same, same, "true_positive")
    with pytest.raises(ConfigError, match="empty"):
        mask_target(torch.zeros(4, 4))
    with pytest.raises(ConfigError, match=r"must be \(H, W\)"):
        mask_target(torch.ones(2, 4, 4))
    with pytest.raises(ConfigError, match="prediction is"):
        error_target(torch.ones(3, 3), torch.ones(4, 4), "false_positive")


def test_target_validates_its_fields():
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ConfigError, match="output 'margin'"):
        Target(mask, "mask", "m", output="margin")
    with pytest.raises(ConfigError, match="kind"):
        Target(mask, "blob", "m")
    with pytest.raises(ConfigError, match="must be bool"):
        Target(mask.float(), "mask", "m")


def test_predicted_vessels_thresholds_the_probability_and_keeps_the_mode():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, 0] = 10.0
        conv.bias[1] = -5.0  # vessel where the intensity exceeds 0.5
    conv.train()
    image = torch.tensor([[[0.2, 0.7], [0.9, 0.4]]])
    mask = predicted_vessels(conv, image)
    assert mask.tolist() == [[False, True], [True, False]]
    assert conv.training
