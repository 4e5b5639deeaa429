"""Attribution methods on segmentation targets: shapes, agreement with the Jacobian, IG
completeness, guided backprop on functional ReLUs, seeds, and leaving the model as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.data.synthetic import synthesize
from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.methods import (
    METHOD_OPTIONS,
    METHODS,
    attribute,
    default_gradcam_layer,
    target_value,
)
from vessel_lens.interpret.attribution.targets import (
    TargetValue,
    error_target,
    mask_target,
    pixel_target,
    predicted_vessels,
    segment_target,
)
from vessel_lens.models import create_model

SIZE = 32
QUICK = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"nt_samples": 4},
    "gradient_shap": {"n_samples": 4},
    "occlusion": {"window": 8, "stride": 8},
}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_seg", width=4).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.from_numpy(synthesize(SIZE, seed=3).image)[None]


@pytest.fixture(scope="module")
def targets(model, image) -> dict:
    """One target of every kind; the label is the prediction with two pixels flipped so both
    error regions are non-empty."""
    prediction = predicted_vessels(model, image)
    assert prediction.any() and (~prediction).any()
    vessel = torch.nonzero(prediction)[0].tolist()
    label = prediction.clone()
    label[vessel[0], vessel[1]] = False
    background = torch.nonzero(~prediction)[0].tolist()
    label[background[0], background[1]] = True
    block = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    block[10:14, 12:15] = True
    return {
        "pixel": pixel_target(16, 17, (SIZE, SIZE)),
        "mask": mask_target(block),
        "segment": segment_target(prediction, *vessel, radius=6, source="prediction"),
        "false_positive": error_target(prediction, label, "false_positive"),
        "false_negative": error_target(prediction, label, "false_negative", output="logit"),
    }


@pytest.mark.parametrize("kind", ["pixel", "mask", "segment", "false_positive", "false_negative"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_for_every_target_kind(model, image, targets, method, kind):
    result = attribute(model, image, targets[kind], method, **QUICK.get(method, {}))
    assert result.shape == (1, SIZE, SIZE)
    assert result.dtype == torch.float32 and result.device.type == "cpu"
    assert torch.isfinite(result).all()
    if method != "layer_gradcam":  # Grad-CAM may be all zero after its ReLU
        assert result.abs().sum() > 0


def test_saliency_of_one_pixel_is_the_jacobian_row(model, image):
    from vessel_lens.interpret.jacobian.engine import jacobian

    for row, col in [(0, 0), (16, 17), (31, 5)]:
        saliency = attribute(model, image, (row, col), "saliency", abs=False)
        expected = jacobian(model, image, pixels=[[row, col]])[0]
        torch.testing.assert_close(saliency, expected, atol=1e-6, rtol=1e-4)


def test_saliency_of_a_mask_is_the_gradient_of_the_summed_probability(model, image, targets):
    target = targets["segment"]
    x = image[None].clone().requires_grad_(True)
    value = model(x).softmax(1)[0, 1][target.mask].sum()
    (expected,) = torch.autograd.grad(value, x)
    torch.testing.assert_close(attribute(model, image, target, "saliency"), expected[0])
    torch.testing.assert_close(
        attribute(model, image, target, "saliency", abs=True), expected[0].abs()
    )


@pytest.mark.parametrize("kind", ["pixel", "segment"])
def test_integrated_gradients_completeness(model, image, targets, kind):
    target = targets[kind]
    result = attribute(model, image, target, "integrated_gradients", n_steps=256)
    difference = target_value(model, image, target) - target_value(
        model, torch.zeros_like(image), target
    )
    assert abs(difference) > 1e-3  # the test would be vacuous otherwise
    assert float(result.sum()) == pytest.approx(difference, rel=0.02, abs=1e-4)


def test_integrated_gradients_with_another_baseline(model, image, targets):
    target = targets["pixel"]
    baseline = torch.full_like(image, 0.3)
    result = attribute(model, image, target, "integrated_gradients", n_steps=256, baseline=baseline)
    difference = target_value(model, image, target) - target_value(model, baseline, target)
    assert float(result.sum()) == pytest.approx(difference, rel=0.02, abs=1e-4)


def test_input_x_gradient_is_input_times_saliency(model, image, targets):
    target = targets["mask"]
    torch.testing.assert_close(
        attribute(model, image, target, "input_x_gradient"),
        image * attribute(model, image, target, "saliency"),
    )


RELU_KINDS = ("functional", "module", "module_inplace", "relu_", "tensor_relu_", "torch_relu_")


class _TwoLayer(nn.Module):
    """conv -> ReLU -> conv, the ReLU written in one of :data:`RELU_KINDS`."""

    def __init__(self, kind: str):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.first = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.second = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.first.weight.data = torch.randn(self.first.weight.shape, generator=generator)
        self.second.weight.data = torch.randn(self.second.weight.shape, generator=generator)
        self.kind = kind
        self.relu = nn.ReLU(inplace=kind == "module_inplace")

    def forward(self, x):
        hidden = self.first(x)
        if self.kind == "functional":
            hidden = F.relu(hidden)
        elif self.kind.startswith("module"):
            hidden = self.relu(hidden)
        elif self.kind == "relu_":
            F.relu_(hidden)  # the return value is ignored on purpose
        elif self.kind == "tensor_relu_":
            hidden.relu_()
        else:
            torch.relu_(hidden)
        return self.second(hidden)


def _guided_by_hand(net: _TwoLayer, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """d logit / d input with the ReLU's backward replaced by relu(grad * (input > 0))."""
    hidden = net.first(x[None]).detach().requires_grad_(True)
    logit = net.second(hidden.clamp(min=0))[0, 1, row, col]
    (grad_relu_out,) = torch.autograd.grad(logit, hidden)  # includes the mask (hidden > 0)
    guided = grad_relu_out.clamp(min=0)
    x_leaf = x[None].clone().requires_grad_(True)
    (result,) = torch.autograd.grad(net.first(x_leaf), x_leaf, grad_outputs=guided)
    return result[0]


@pytest.mark.parametrize("kind", RELU_KINDS)
def test_guided_backprop_overrides_functional_module_and_in_place_relus(kind):
    net = _TwoLayer(kind).eval()
    x = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(2))
    target = pixel_target(3, 2, (6, 6), output="logit")
    guided = attribute(net, x, target, "guided_backprop")
    expected = _guided_by_hand(net, x, 3, 2)
    torch.testing.assert_close(guided, expected)
    plain = attribute(net, x, target, "saliency")
    assert not torch.allclose(guided, plain)  # the guided rule really changed something
    # nothing stays modified: plain gradients afterwards, no hooks left behind
    x_leaf = x[None].clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(net(x_leaf)[0, 1, 3, 2], x_leaf)
    torch.testing.assert_close(attribute(net, x, target, "saliency"), reference[0])
    for module in net.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not module._forward_pre_hooks


def test_occlusion_of_a_linear_model_is_input_times_gradient():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(4))
    target = pixel_target(4, 3, (8, 8), output="logit")
    occluded = attribute(conv, x, target, "occlusion", window=1, stride=1)
    torch.testing.assert_close(occluded, attribute(conv, x, target, "input_x_gradient"))


def test_layer_gradcam_uses_the_named_layer_and_is_non_negative(model, image, targets):
    assert default_gradcam_layer(model, image) == "decoder.1"
    assert default_gradcam_layer(create_model("unet", width=4), image) == "merge.1"
    for layer in ("encoder.3", "decoder.3", "stem"):
        cam = attribute(model, image, targets["mask"], "layer_gradcam", layer=layer)
        assert cam.shape == (1, SIZE, SIZE) and (cam >= 0).all()
    signed = attribute(model, image, targets["mask"], "layer_gradcam", relu=False)
    assert (signed < 0).any() or (signed > 0).any()
    with pytest.raises(ConfigError, match="is not a module of ResNetSeg"):
        attribute(model, image, targets["pixel"], "layer_gradcam", layer="decoder.9")


def test_gradcam_of_a_padded_input_keeps_the_input_size(model):
    x = torch.rand(1, 40, 36)
    cam = attribute(model, x, (20, 18), "layer_gradcam")
    assert cam.shape == (1, 40, 36)


def test_gradcam_follows_the_layer_stride_of_a_padded_input(model):
    """A 20x20 input is padded to 32x32: the quarter-resolution layer is 8x8 (stride 4), and
    its cells map to blocks of 4 input pixels, not to ceil(20 / 8) = 3."""
    x = torch.rand(1, 20, 20)
    assert default_gradcam_layer(model, x) == "decoder.1"
    cam = attribute(model, x, (10, 9), "layer_gradcam", layer="decoder.0", interpolation="nearest")
    stored = {}
    handle = model.decoder[0].register_forward_hook(lambda m, i, o: stored.update(out=o))
    try:
        x1 = x[None].clone().requires_grad_(True)
        value = model(x1).softmax(1)[0, 1, 10, 9]
        (grad,) = torch.autograd.grad(value, stored["out"])
    finally:
        handle.remove()
    features = stored["out"].detach()
    expected = torch.relu((grad.mean((2, 3), keepdim=True) * features).sum(1))[0]  # (4, 4)
    assert expected.shape == (4, 4)
    manual = expected.repeat_interleave(8, 0).repeat_interleave(8, 1)[:20, :20]
    torch.testing.assert_close(cam[0], manual, rtol=1e-4, atol=1e-6 * float(manual.abs().max()))


@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
def test_stochastic_methods_are_seeded_and_leave_global_rngs_alone(model, image, method):
    torch.manual_seed(123)
    np.random.seed(7)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = attribute(model, image, (16, 17), method, seed=5, **QUICK[method])
    again = attribute(model, image, (16, 17), method, seed=5, **QUICK[method])
    other = attribute(model, image, (16, 17), method, seed=6, **QUICK[method])
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


@pytest.mark.parametrize("method", METHODS)
def test_model_and_image_are_left_as_found(method):
    torch.manual_seed(0)
    net = create_model("resnet_seg", width=4).train()
    net.encoder[0].conv1.weight.requires_grad_(False)
    image = torch.rand(1, 16, 16)
    copy = image.clone()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    attribute(net, image, (8, 8), method, **QUICK.get(method, {}))
    assert net.training and all(m.training for m in net.modules())
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    assert flags.pop("encoder.0.conv1.weight") is False and all(flags.values())
    assert torch.equal(image, copy) and not image.requires_grad
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key  # BatchNorm statistics untouched


def test_eval_mode_is_used_whatever_the_callers_mode(model, image):
    model.train()
    try:
        in_train_mode = attribute(model, image, (10, 10), "saliency")
    finally:
        model.eval()
    torch.testing.assert_close(in_train_mode, attribute(model, image, (10, 10), "saliency"))


def test_unknown_methods_options_and_targets_are_refused(model, image):
    with pytest.raises(ConfigError, match="choose one of"):
        attribute(model, image, (1, 1), "lime")
    with pytest.raises(ConfigError, match=r"unknown option 'steps' \(options: baseline"):
        attribute(model, image, (1, 1), "integrated_gradients", steps=3)
    with pytest.raises(ConfigError, match="outside the 32x32 image"):
        attribute(model, image, (40, 1), "saliency")
    with pytest.raises(ConfigError, match="mask is 16x16 but the image is 32x32"):
        attribute(model, image, pixel_target(1, 1, (16, 16)), "saliency")
    with pytest.raises(ConfigError, match="give a Target"):
        attribute(model, image, "centre", "saliency")
    with pytest.raises(ConfigError, match="baseline must be a number or shaped like"):
        attribute(model, image, (1, 1), "integrated_gradients", baseline=torch.zeros(3, 3))


def test_every_method_has_documented_options():
    assert set(METHOD_OPTIONS) == set(METHODS)


def test_target_value_wrapper_matches_the_summed_probability(model, image, targets):
    target = targets["false_positive"]
    with torch.no_grad():
        expected = model(image[None]).softmax(1)[0, 1][target.mask].sum()
        torch.testing.assert_close(TargetValue(model, target)(image[None])[0], expected)
