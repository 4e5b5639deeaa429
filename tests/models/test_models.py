"""Models: the registry, output shapes for any input size, and the reference parameter count."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.models import ResNetSeg, create_model, list_models

SMALL = 4


def conv_params(c_in: int, c_out: int, bias: bool, kernel: int = 3) -> int:
    """Parameters of a Conv2d or ConvTranspose2d: one k x k kernel per channel pair."""
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def expected_resnet_seg_params(
    width: int, in_channels: int = 1, classes: int = 2, batch_norm: bool = True
) -> int:
    """Count, from the layout in ``resnet_seg``'s docstring, the parameters of the model.

    BatchNorm has a weight and a bias per channel; without it the convolutions carry biases.
    The head always has a bias.
    """
    bias = not batch_norm

    def bn(channels: int) -> int:
        return 2 * channels if batch_norm else 0

    widths = [width, 2 * width, 4 * width, 8 * width, 16 * width]
    total = conv_params(in_channels, width, bias) + bn(width)  # stem
    for c_in, c_out in itertools.pairwise(widths):  # residual blocks
        total += conv_params(c_in, c_out, bias) + bn(c_out)  # conv1 (stride 2)
        total += conv_params(c_out, c_out, bias) + bn(c_out)  # conv2
        total += conv_params(c_in, c_out, bias) + bn(c_out)  # strided projection shortcut
    for c_in, c_out in zip(widths[:0:-1], widths[-2::-1], strict=True):  # 16w -> 8w ... 2w -> w
        total += conv_params(c_in, c_out, bias) + bn(c_out)  # ConvTranspose2d(k=3)
    return total + conv_params(width, classes, bias=True)  # head


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_reference_and_comparison_models():
    assert {"resnet_seg", "resnet_seg_nonorm", "unet"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("height", "width"), [(37, 50), (16, 16), (33, 17), (64, 48)])
def test_output_is_two_class_logits_of_the_input_size(name, height, width):
    model = create_model(name, width=SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, height, width))
    assert out.shape == (2, 2, height, width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_channels_and_classes_are_parameters(name):
    model = create_model(name, width=SMALL, in_channels=3, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 20, 21)).shape == (1, 5, 20, 21)


@pytest.mark.parametrize("name", list_models())
def test_odd_sizes_are_zero_padded_bottom_right_and_cropped_back(name):
    model = create_model(name, width=SMALL).eval()
    x = torch.rand(1, 1, 37, 50)
    with torch.no_grad():
        direct = model(x)
        padded = model(F.pad(x, (0, 64 - 50, 0, 48 - 37)))[..., :37, :50]
    torch.testing.assert_close(direct, padded)


@pytest.mark.parametrize("name", list_models())
def test_gradient_reaches_the_input(name):
    model = create_model(name, width=SMALL).eval()
    x = torch.rand(1, 1, 24, 24, requires_grad=True)
    model(x)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_reference_model_has_the_described_parameter_count():
    expected = expected_resnet_seg_params(64)
    model = create_model("resnet_seg")
    assert isinstance(model, ResNetSeg)
    assert param_count(model) == expected
    assert 30.5e6 < expected < 32e6  # "about 31 M", as the original


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize(("in_channels", "classes"), [(1, 2), (3, 4)])
def test_parameter_count_formula_holds_at_other_sizes(width, in_channels, classes):
    model = create_model("resnet_seg", width=width, in_channels=in_channels, num_classes=classes)
    assert param_count(model) == expected_resnet_seg_params(width, in_channels, classes)


def test_reference_model_has_half_dropout_at_the_bottleneck():
    dropouts = [
        m for m in create_model("resnet_seg", width=SMALL).modules() if isinstance(m, nn.Dropout)
    ]
    assert [d.p for d in dropouts] == [0.5]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet_seg_nonorm", {}), ("resnet_seg", {"norm": None}), ("unet", {"norm": None})],
)
def test_without_norm_there_is_no_batchnorm_and_convolutions_have_biases(name, kwargs):
    model = create_model(name, width=SMALL, **kwargs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs and all(c.bias is not None for c in convs)


def test_nonorm_reference_parameter_count():
    model = create_model("resnet_seg_nonorm", width=8)
    assert param_count(model) == expected_resnet_seg_params(8, batch_norm=False)


def test_unet_is_of_similar_size_to_the_reference():
    ratio = param_count(create_model("unet", width=16)) / param_count(
        create_model("resnet_seg", width=16)
    )
    assert 0.8 < ratio < 1.25


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown model 'nope'") as info:
        create_model("nope")
    for name in list_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(
    "kwargs", [{"depth": 3}, {"norm": "group"}, {"width": 0}, {"width": 4.5}, {"num_classes": 0}]
)
def test_bad_arguments_are_config_errors(name, kwargs):
    with pytest.raises(ConfigError, match=f"model '{name}'"):
        create_model(name, **kwargs)


def test_eval_mode_is_deterministic_and_batch_independent():
    model = create_model("resnet_seg", width=SMALL).eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        batched = model(x)
        single = model(x[1:2])
    torch.testing.assert_close(batched[1:2], single)
