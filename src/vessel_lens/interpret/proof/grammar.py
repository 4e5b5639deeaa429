"""A grammar of small segmentation models, for the proof harness (:mod:`.proof`).

:func:`random_model` draws a model from the layers researchers combine: convolutions with
stride, dilation and every padding mode, transposed convolutions, every normalisation with and
without running statistics, pooling, upsampling, pixel shuffles, concatenation and addition
skips, activations, global pooling (squeeze-excitation), spatial attention, self-attention and
custom ``autograd.Function`` s. Each model maps (B, C, H, W) to (B, K, H, W) for any H, W.

Choices come from a :class:`Chooser`, so the same grammar is driven by ``random.Random`` (the
soak script) or by hypothesis (the tests, which then shrink a failure to a small model). A drawn
model also carries ``smooth``: the same architecture with every activation replaced by tanh and
nothing that routes (used to check that a field claimed tight is attained).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Chooser(Protocol):
    def integer(self, low: int, high: int) -> int: ...
    def choice(self, options: Sequence[Any]) -> Any: ...


class RandomChooser:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.random.randint(low, high)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.random.randrange(len(options))]


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": nn.PReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
}
NORMS = ("batch", "batch_no_stats", "instance", "instance_affine", "instance_stats", "group",
         "layer_channels", "layer_all", "none")  # fmt: skip
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at each pixel, written as ConvNeXt does (permute, normalise,
    permute back)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class WholeLayerNorm(nn.Module):
    """LayerNorm over (C, H, W): its shape follows the input (any size)."""

    def forward(self, x):
        return F.layer_norm(x, x.shape[1:])


class _StraightThrough(torch.autograd.Function):
    """Forward: a clamp to [0, 1]; backward: the identity (a straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _MixingBackward(torch.autograd.Function):
    """Forward: the identity; backward: adds the image mean of the gradient everywhere, so
    every input pixel gets gradient from every output pixel (what no forward rule can see)."""

    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return grad + grad.mean((2, 3), keepdim=True)


class Custom(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        function = _StraightThrough if self.kind == "straight_through" else _MixingBackward
        return function.apply(x)


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, activation: nn.Module):
        super().__init__()
        self.reduce = nn.Conv2d(channels, max(1, channels // 2), 1)
        self.activation = activation
        self.expand = nn.Conv2d(max(1, channels // 2), channels, 1)

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.activation(self.reduce(scale))))


class SpatialAttention(nn.Module):
    """CBAM-style: a map from the channel mean and maximum gates every channel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        summary = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(summary))


class SelfAttention(nn.Module):
    """Dot-product attention over all pixels (every output mixes every position)."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)
        k = self.key(x).flatten(2)
        weights = torch.softmax(q @ k / c**0.5, -1)
        mixed = (weights @ x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return x + mixed


class GlobalAdd(nn.Module):
    def forward(self, x):
        return x + F.adaptive_avg_pool2d(x, 1)


class DownUp(nn.Module):
    """Downsample, an inner block, upsample back to the input's size, merge with the input."""

    def __init__(self, down: nn.Module, inner: nn.Module, up: str, channels: int, merge: str,
                 align: bool):  # fmt: skip
        super().__init__()
        self.down, self.inner, self.up, self.merge, self.align = down, inner, up, merge, align
        if up == "transposed":
            self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        if up == "shuffle":
            self.to_shuffle = nn.Conv2d(channels, 4 * channels, 1)
        if merge == "cat":
            self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x):
        y = self.inner(self.down(x))
        size = x.shape[-2:]
        if self.up == "transposed":
            y = self.deconv(y)
        elif self.up == "shuffle":
            y = F.pixel_shuffle(self.to_shuffle(y), 2)
        if self.up in ("transposed", "shuffle"):
            dh, dw = size[0] - y.shape[-2], size[1] - y.shape[-1]
            y = F.pad(y, (0, dw, 0, dh))  # crops when negative
        elif self.up == "bilinear":
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=self.align)
        else:
            y = F.interpolate(y, size=size, mode=self.up)
        return x + y if self.merge == "add" else self.fuse(torch.cat([x, y], 1))


@dataclass
class Drawn:
    """A drawn model, a routing-free twin with tanh activations, and what was drawn."""

    model: nn.Module
    smooth: nn.Module
    in_channels: int
    classes: int
    description: list[str] = field(default_factory=list)
    routes: bool = False
    """Whether the model picks among inputs (max pooling, maxima): a field can then be attained
    only by some inputs, so the tight check runs on ``smooth``, which has none."""


class _Builder:
    def __init__(self, chooser: Chooser, smooth: bool):
        self.c, self.smooth = chooser, smooth
        self.description: list[str] = []
        self.routes = False

    def activation(self) -> nn.Module:
        name = self.c.choice(list(ACTIVATIONS))
        self.description.append(name)
        return nn.Tanh() if self.smooth else ACTIVATIONS[name]()

    def norm(self, channels: int) -> nn.Module:
        kind = self.c.choice(NORMS)
        self.description.append(f"norm:{kind}")
        if kind == "batch":
            return nn.BatchNorm2d(channels)
        if kind == "batch_no_stats":
            return nn.BatchNorm2d(channels, track_running_stats=False)
        if kind in ("instance", "instance_affine", "instance_stats"):
            return nn.InstanceNorm2d(
                channels,
                affine=kind == "instance_affine",
                track_running_stats=kind.endswith("stats"),
            )
        if kind == "group":
            return nn.GroupNorm(1 if channels % 2 else 2, channels)
        if kind == "layer_channels":
            return ChannelLayerNorm(channels)
        if kind == "layer_all":
            return WholeLayerNorm()
        return nn.Identity()

    def conv(self, channels: int) -> nn.Module:
        kernel = self.c.choice((1, 3, 5))
        dilation = self.c.choice((1, 2)) if kernel > 1 else 1
        mode = self.c.choice(PADDING_MODES)
        pad = dilation * (kernel - 1) // 2
        self.description.append(f"conv{kernel}d{dilation}:{mode}")
        return nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dilation,
                         padding_mode=mode)  # fmt: skip

    def conv_block(self, channels: int) -> nn.Module:
        return nn.Sequential(self.conv(channels), self.norm(channels), self.activation())

    def down(self, channels: int) -> nn.Module:
        kind = self.c.choice(("max", "avg", "avg_ceil", "strided", "adaptive_max"))
        self.description.append(f"down:{kind}")
        if kind == "max":
            self.routes = True
            return nn.AvgPool2d(2) if self.smooth else nn.MaxPool2d(2)
        if kind == "avg":
            return nn.AvgPool2d(2)
        if kind == "avg_ceil":
            return nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        if kind == "adaptive_max":
            self.routes = True
            return _HalfAdaptive(smooth=self.smooth)
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def block(self, channels: int, depth: int) -> nn.Module:
        kinds = ["conv", "residual", "norm", "se", "spatial", "global", "custom", "attention",
                 "resample"]  # fmt: skip
        if depth < 2:
            kinds += ["downup", "downup", "downup"]  # encoder-decoders are the common case
        kind = self.c.choice(kinds)
        self.description.append(kind)
        if kind == "conv":
            return self.conv_block(channels)
        if kind == "residual":
            return Residual(self.conv_block(channels))
        if kind == "norm":
            return self.norm(channels)
        if kind == "se":
            return SqueezeExcite(channels, self.activation())
        if kind == "spatial":
            self.routes = True  # the channel maximum
            return SpatialAttention()
        if kind == "global":
            return GlobalAdd()
        if kind == "custom":
            custom = self.c.choice(("straight_through", "mixing"))
            self.description.append(custom)
            return nn.Tanh() if self.smooth and custom == "straight_through" else Custom(custom)
        if kind == "attention":
            return SelfAttention(channels)
        if kind == "resample":
            return _RoundTrip(self.c.choice(("nearest", "bilinear", "bicubic", "nearest-exact")),
                              self.c.choice((1.5, 2.0, 0.5)), self.c.choice((False, True)))  # fmt: skip
        up = self.c.choice(("nearest", "bilinear", "transposed", "shuffle"))
        merge = self.c.choice(("add", "cat"))
        align = self.c.choice((False, True))
        self.description.append(f"up:{up}:{merge}")
        inner = self.block(channels, depth + 1)
        return DownUp(self.down(channels), inner, up, channels, merge, align)


class _RoundTrip(nn.Module):
    """Resample by a factor and back to the input size (interpolation of both directions)."""

    def __init__(self, mode: str, factor: float, align: bool):
        super().__init__()
        self.mode, self.factor = mode, factor
        self.align = align if mode in ("bilinear", "bicubic") else None

    def forward(self, x):
        size = x.shape[-2:]
        y = F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=self.align)
        return F.interpolate(y, size=size, mode=self.mode, align_corners=self.align)


class _HalfAdaptive(nn.Module):
    def __init__(self, smooth: bool):
        super().__init__()
        self.smooth = smooth

    def forward(self, x):
        size = (max(1, x.shape[-2] // 2), max(1, x.shape[-1] // 2))
        pool = F.adaptive_avg_pool2d if self.smooth else F.adaptive_max_pool2d
        return pool(x, size)


def _build(chooser: Chooser, smooth: bool) -> tuple[nn.Module, _Builder, int, int]:
    builder = _Builder(chooser, smooth)
    in_channels = chooser.choice((1, 2))
    channels = chooser.choice((2, 3, 4))
    classes = chooser.choice((2, 2, 3))
    layers = [nn.Conv2d(in_channels, channels, 3, padding=1)]
    for _ in range(chooser.integer(1, 3)):
        layers.append(builder.block(channels, 0))
    layers.append(nn.Conv2d(channels, classes, 1))
    return nn.Sequential(*layers), builder, in_channels, classes


class _Replay:
    """Replays recorded choices (to build the smooth twin of a drawn model)."""

    def __init__(self, choices: list[Any]):
        self.choices = list(choices)

    def integer(self, low: int, high: int) -> int:
        return self.choices.pop(0)

    def choice(self, options: Sequence[Any]) -> Any:
        return self.choices.pop(0)


class _Recording:
    def __init__(self, chooser: Chooser):
        self.chooser, self.made = chooser, []

    def integer(self, low: int, high: int) -> int:
        value = self.chooser.integer(low, high)
        self.made.append(value)
        return value

    def choice(self, options: Sequence[Any]) -> Any:
        value = self.chooser.choice(options)
        self.made.append(value)
        return value


def runs(model: nn.Module, image: torch.Tensor) -> bool:
    """Whether the model accepts an input of this size (a drawn reflection pad can be wider
    than a deep, downsampled map, which PyTorch refuses)."""
    try:
        with torch.no_grad():
            model(image[None])
    except RuntimeError:
        return False
    return True


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights (uniform, scaled by fan-in) and BatchNorm statistics; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) - 0.5)
            else:
                fan = tensor[0].numel() if tensor.dim() > 1 else 1
                values = torch.rand(tensor.shape, generator=generator) * 2 - 1
                tensor.copy_(values * (3 / fan) ** 0.5)
    return model.eval()


def random_model(chooser: Chooser, seed: int = 0) -> Drawn:
    """Draw a model (random weights from ``seed``) and its smooth twin."""
    recording = _Recording(chooser)
    model, builder, in_channels, classes = _build(recording, smooth=False)
    smooth, _, _, _ = _build(_Replay(recording.made), smooth=True)
    return Drawn(
        randomise(model, seed),
        randomise(smooth, seed + 1),
        in_channels,
        classes,
        builder.description,
        builder.routes,
    )
