"""The Jacobian engine: exact rows for every strategy, output mode, pixel form and layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret import JacobianEngine, fold_batch_norm, iter_jacobian, jacobian
from vessel_lens.interpret.jacobian.strategies import REGISTRY
from vessel_lens.models import ResNetSeg, UNet

STRATEGIES = tuple(REGISTRY)
"""Every registered strategy: a new one is checked against the loop by the tests below."""


def in_channels(model: nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


def calibrated(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, as training would (then eval mode)."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, in_channels(model), size, size))
    return model.eval()


def reference_rows(model, image, pixels, quantity):
    """Rows by torch.autograd.functional.jacobian of ``quantity(logits)`` (an (H, W) map)."""
    flat = torch.as_tensor(pixels)

    def selected(x):
        return quantity(model(x[None])).reshape(-1)[flat]

    return torch.autograd.functional.jacobian(selected, image)


def close(actual, expected, tolerance=1e-5):
    scale = expected.abs().max()
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= tolerance * scale, float(
        (actual - expected).abs().max() / scale
    )


@pytest.fixture(scope="module")
def resnet():
    return calibrated(ResNetSeg(width=4), 24)


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return torch.rand(1, 24, 24)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("kernel", "dilation"), [(5, 1), (3, 2)])
def test_single_convolution_rows_are_the_kernel_placed_at_each_pixel(strategy, kernel, dilation):
    torch.manual_seed(0)
    reach = dilation * (kernel // 2)
    conv = nn.Conv2d(2, 3, kernel, padding=reach, dilation=dilation, bias=False)
    image = torch.randn(2, 7, 9)
    rows = jacobian(conv, image, output="logit", target_class=2, strategy=strategy)
    weights = conv.weight.detach()[2]
    assert rows.shape == (63, 2, 7, 9)
    for index in range(63):
        r, c = divmod(index, 9)
        expected = torch.zeros(2, 7 + 2 * reach, 9 + 2 * reach)
        span = dilation * (kernel - 1) + 1
        expected[:, r : r + span : dilation, c : c + span : dilation] = weights
        assert torch.equal(rows[index], expected[:, reach:-reach, reach:-reach]), (r, c)


def test_reference_model_matches_autograd_functional_jacobian(resnet, image):
    pixels = torch.tensor([0, 23, 100, 287, 300, 575])

    def probability(logits):
        return logits.softmax(1)[0, 1]

    expected = reference_rows(resnet, image, pixels, probability)
    for strategy in STRATEGIES:
        close(jacobian(resnet, image, pixels=pixels, strategy=strategy), expected)


def test_float64_rows_match_central_differences():
    torch.manual_seed(0)
    model = calibrated(ResNetSeg(width=2), 5).double()
    image = torch.rand(1, 5, 5, dtype=torch.float64)
    eps = 1e-6
    numerical = torch.empty(25, 25, dtype=torch.float64)
    with torch.no_grad():
        for i in range(25):
            step = torch.zeros(25, dtype=torch.float64)
            step[i] = eps
            up = model((image.reshape(-1) + step).reshape(1, 1, 5, 5)).softmax(1)[0, 1]
            down = model((image.reshape(-1) - step).reshape(1, 1, 5, 5)).softmax(1)[0, 1]
            numerical[:, i] = ((up - down) / (2 * eps)).reshape(-1)
    for strategy in STRATEGIES:
        rows = jacobian(model, image, dtype=torch.float64, strategy=strategy)
        assert rows.dtype == torch.float64
        torch.testing.assert_close(rows.reshape(25, 25), numerical, atol=1e-7, rtol=1e-6)


class Assorted(nn.Module):
    """Exercises every linearised rule: pads, pooling, resizing, concatenation, activations."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 6, 3, stride=2, padding=1, dilation=1)
        self.c = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1)
        self.d = nn.Conv2d(8, 3, 3, padding=2, dilation=2)
        self.scale = nn.Parameter(torch.rand(1, 6, 1, 1) + 0.5)

    def forward(self, x):
        y = F.leaky_relu(self.bn(self.a(x)), 0.1)
        y = y * self.scale - y.sigmoid() * 0.5
        z = F.max_pool2d(F.pad(y, (1, 1, 1, 1)), 3, stride=1)
        z = F.avg_pool2d(self.b(z), 2, ceil_mode=True)
        z = F.interpolate(torch.tanh(z), scale_factor=2.0, mode="bilinear", align_corners=False)
        z = F.relu(self.c(z))[..., : x.shape[-2], : x.shape[-1]]
        merged = torch.cat([z, y[:, 2:], -y[:, :0]], 1)
        return self.d(F.silu(merged))[:, 1:]


class Unsupported(nn.Module):
    """Global pooling feeding a product with the input: no linear rule, so ``vmap`` steps in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        features = self.conv(x)
        return features * features.mean(dim=(2, 3)).flatten()[0]


@pytest.mark.parametrize(
    "make", [lambda: calibrated(UNet(width=4), 16), lambda: calibrated(Assorted(), 16)]
)
def test_every_strategy_agrees_with_the_loop(make):
    torch.manual_seed(2)
    model = make()
    image = torch.rand(in_channels(model), 16, 16)
    pixels = torch.randint(0, 256, (20,))
    expected = jacobian(model, image, pixels=pixels, strategy="loop")
    engine = JacobianEngine(model, image, strategy="auto")
    assert engine.strategy == "linear"
    for strategy in ("auto", "linear", "vmap"):
        close(jacobian(model, image, pixels=pixels, strategy=strategy, chunk_size=7), expected)


def test_auto_falls_back_to_vmap_when_an_operation_has_no_rule():
    torch.manual_seed(0)
    model = Unsupported().eval()
    image = torch.rand(1, 8, 8)
    assert JacobianEngine(model, image).strategy == "vmap"
    close(jacobian(model, image), jacobian(model, image, strategy="loop"))
    with pytest.raises(ConfigError, match="linear"):
        jacobian(model, image, strategy="linear")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_model_state_is_left_as_found(strategy, image):
    model = ResNetSeg(width=4).train()
    model.encoder[0].requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = copy.deepcopy(model.state_dict())
    original = image.clone()
    jacobian(model, image, pixels=[0, 5, 300], strategy=strategy)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(image, original) and not image.requires_grad


def test_pixels_as_flat_indices_or_pairs_in_the_callers_order(resnet, image):
    flat = torch.tensor([300, 5, 5, 0, 575])
    pairs = torch.stack([flat // 24, flat % 24], 1)
    by_flat = jacobian(resnet, image, pixels=flat)
    assert torch.equal(by_flat, jacobian(resnet, image, pixels=pairs))
    assert torch.equal(by_flat, jacobian(resnet, image, pixels=flat.tolist()))
    every = jacobian(resnet, image, chunk_size=64)
    close(by_flat, every[flat], 1e-6)


def test_generator_yields_chunks_in_order(resnet, image):
    pixels = torch.tensor([7, 3, 500, 2, 9])
    chunks = list(iter_jacobian(resnet, image, pixels=pixels, chunk_size=2))
    assert [c[0].tolist() for c in chunks] == [[7, 3], [500, 2], [9]]
    close(torch.cat([c[1] for c in chunks]), jacobian(resnet, image, pixels=pixels), 1e-6)


@pytest.mark.parametrize("output", ["probability", "logit", "margin"])
def test_output_modes_match_autograd_of_their_definition(output):
    torch.manual_seed(3)
    model = calibrated(ResNetSeg(width=4, num_classes=3), 16)
    image = torch.rand(1, 16, 16)
    pixels = torch.tensor([0, 17, 130, 255])
    definitions = {
        "probability": lambda z: z.softmax(1)[0, 2],
        "logit": lambda z: z[0, 2],
        "margin": lambda z: z[0, 2] - torch.logsumexp(z[0, :2], 0),
    }
    expected = reference_rows(model, image, pixels, definitions[output])
    for strategy in STRATEGIES:
        rows = jacobian(
            model, image, pixels=pixels, target_class=2, output=output, strategy=strategy
        )
        close(rows, expected)


def test_layer_rows_are_gradients_with_respect_to_the_feature_map(resnet, image):
    pixels = torch.tensor([0, 130, 400])
    captured = {}
    handle = resnet.encoder[1].register_forward_hook(lambda m, i, o: captured.setdefault("f", o))
    with torch.no_grad():
        resnet(image[None])
    handle.remove()
    features = captured["f"].detach().requires_grad_(True)
    handle = resnet.encoder[1].register_forward_hook(lambda m, i, o: features)
    probability = resnet(image[None]).softmax(1)[0, 1].reshape(-1)
    handle.remove()
    expected = torch.stack(
        [torch.autograd.grad(probability[p], features, retain_graph=True)[0][0] for p in pixels]
    )
    assert expected.shape == (3, 16, 8, 8)  # 24x24 is padded to 32x32, then halved twice
    for strategy in STRATEGIES:
        close(
            jacobian(resnet, image, pixels=pixels, layer="encoder.1", strategy=strategy), expected
        )


def test_bfloat16_rows_are_close_to_float32(resnet, image):
    rows32 = jacobian(resnet, image, pixels=[50, 300])
    rows16 = jacobian(resnet, image, pixels=[50, 300], dtype=torch.bfloat16)
    assert rows16.dtype == torch.bfloat16
    assert (rows16.float() - rows32).abs().max() <= 0.05 * rows32.abs().max()


def test_batch_norm_folding_keeps_the_function_and_the_original(resnet, image):
    before = copy.deepcopy(resnet.state_dict())
    folded = fold_batch_norm(resnet, image[None])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(image[None]), resnet(image[None]), atol=1e-5, rtol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in resnet.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())


class Flat(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_class": 2}, "target_class 2"),
        ({"target_class": -1}, "target_class -1"),
        ({"pixels": [576]}, "pixel index 576"),
        ({"pixels": [[3, 24]]}, "row 3, col 24"),
        ({"pixels": [0.5]}, "integer"),
        ({"output": "odds"}, "output 'odds'"),
        ({"strategy": "magic"}, "strategy 'magic'"),
        ({"layer": "encoder.9"}, "encoder.9"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"dtype": torch.bfloat16, "strategy": "vmap"}, "linear"),
    ],
)
def test_ambiguous_requests_raise_config_errors(resnet, image, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        jacobian(resnet, image, **kwargs)


def test_models_without_per_pixel_logits_are_refused(image):
    with pytest.raises(ConfigError, match=r"\(B, K, H, W\)"):
        jacobian(Flat(), image)
    with pytest.raises(ConfigError, match="one output channel, the vessel logit"):
        jacobian(nn.Conv2d(1, 1, 3, padding=1), image, target_class=0)
    with pytest.raises(ConfigError, match="image"):
        jacobian(nn.Conv2d(1, 2, 3, padding=1), torch.rand(1, 1, 1, 8, 8))


class _Pieces(nn.Module):
    """Two convolutions and a 1x1 head on a 2-channel 8x10 image; ``kind`` picks how they meet."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(5)
        self.kind = kind
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)
        self.register_buffer("plane", torch.rand(8, 10) + 0.5)

    def forward(self, x):
        y = self.a(x)
        if self.kind == "detach":
            y = y * self.b(x).detach()
        elif self.kind == "no_grad":
            with torch.no_grad():
                gate = torch.sigmoid(self.b(x))
            y = y * gate
        elif self.kind == "in_place_on_a_slice":
            y[:, :2].mul_(3.0)
        elif self.kind == "in_place_through_a_view":
            view = y[:, :, 2:5]
            view.relu_()
        elif self.kind == "times_a_plane":
            y = y * self.plane
        elif self.kind == "divided_by_a_plane":
            y = y / self.plane[None]
        return self.head(y)


@pytest.mark.parametrize(
    "kind",
    ["detach", "no_grad", "in_place_on_a_slice", "in_place_through_a_view", "times_a_plane",
     "divided_by_a_plane"],
)  # fmt: skip
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_auto_is_exact_for_detach_no_grad_in_place_views_and_plane_factors(kind, chunk_size):
    """Such models are either linearised correctly or handed to vmap, never silently wrong."""
    model = _Pieces(kind).eval()
    image = torch.randn(2, 8, 10, generator=torch.Generator().manual_seed(1))
    pixels = torch.tensor([0, 17, 45, 79])

    def quantity(logits):
        return logits.softmax(1)[0, 1]

    expected = reference_rows(model, image, pixels, quantity)
    close(jacobian(model, image, pixels=pixels, chunk_size=chunk_size), expected)


def test_layer_rows_survive_an_in_place_operation_after_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(3, 2, 3, padding=1)
    ).eval()
    image = torch.rand(1, 8, 8)
    rows = {
        s: jacobian(model, image, pixels=[9, 40], layer="0", strategy=s) for s in ("vmap", "loop")
    }
    close(rows["vmap"], rows["loop"])
    plain = nn.Sequential(model[0], nn.ReLU(), model[2]).eval()
    close(rows["loop"], jacobian(plain, image, pixels=[9, 40], layer="0", strategy="linear"))


def test_a_boolean_mask_selects_its_pixels(resnet, image):
    mask = torch.zeros(image.shape[-2:], dtype=torch.bool)
    mask[3, 4] = mask[10, 1] = True
    flat = [3 * image.shape[-1] + 4, 10 * image.shape[-1] + 1]
    close(jacobian(resnet, image, pixels=mask), jacobian(resnet, image, pixels=flat))
    with pytest.raises(ConfigError, match="boolean mask"):
        jacobian(resnet, image, pixels=torch.tensor([True, False, True]))
