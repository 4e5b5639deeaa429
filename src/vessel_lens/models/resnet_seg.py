"""The reference "simplified ResNet" encoder-decoder for vessel segmentation.

Layout at width ``w`` (default 64, the original's size, about 31 M parameters)::

    stem      conv3x3 C->w, BN, ReLU                                  (H,    W)
    encoder   4 residual blocks, stride 2: w->2w->4w->8w->16w          (H/16, W/16)
              each: conv3x3/s2, BN, ReLU, conv3x3, BN  +  conv3x3/s2, BN shortcut; ReLU
    dropout   p = 0.5 at the bottleneck
    decoder   4 x [ConvTranspose2d(k=3, s=2, p=1, output_padding=1), BN, ReLU], halving the
              channels, each followed by adding the encoder feature of the same scale
    head      conv3x3 w->classes (logits)

``norm=None`` removes every BatchNorm (the convolutions then carry biases).

Inputs whose height or width is not a multiple of 16 are zero-padded at the bottom and right
to the next multiple of 16 and the logits are cropped back, so the output is always
(B, classes, H, W). Zero padding keeps the model an ordinary differentiable function of
every input pixel.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 16


def pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom and right to multiples of :data:`STRIDE`."""
    pad_h, pad_w = (-x.shape[-2]) % STRIDE, (-x.shape[-1]) % STRIDE
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def check_arguments(width: int, in_channels: int, num_classes: int, norm: str | None) -> None:
    """Refuse arguments that would build a degenerate model (``ValueError``)."""
    for name, value in (
        ("width", width),
        ("in_channels", in_channels),
        ("num_classes", num_classes),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if norm not in ("batch", None):
        raise ValueError(f"norm must be 'batch' or None, not {norm!r}")


def _norm(channels: int, norm: str | None) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


def _conv3x3(c_in: int, c_out: int, stride: int, norm: str | None) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=norm is None)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions (the first strided) plus a strided 3x3 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2, norm: str | None = "batch"):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride, norm)
        self.bn1 = _norm(c_out, norm)
        self.conv2 = _conv3x3(c_out, c_out, 1, norm)
        self.bn2 = _norm(c_out, norm)
        self.shortcut = _conv3x3(c_in, c_out, stride, norm)
        self.bn_shortcut = _norm(c_out, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.bn_shortcut(self.shortcut(x)))


class UpBlock(nn.Module):
    """Stride-2 transposed convolution halving the channels, BN, ReLU."""

    def __init__(self, c_in: int, c_out: int, norm: str | None = "batch"):
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=norm is None
        )
        self.bn = _norm(c_out, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ResNetSeg(nn.Module):
    """Reference encoder-decoder. Input (B, C, H, W); output logits (B, classes, H, W)."""

    def __init__(
        self,
        width: int = 64,
        in_channels: int = 1,
        num_classes: int = 2,
        norm: str | None = "batch",
        dropout: float = 0.5,
    ):
        super().__init__()
        check_arguments(width, in_channels, num_classes, norm)
        widths = [width * 2**i for i in range(5)]
        self.stem = nn.Sequential(
            _conv3x3(in_channels, width, 1, norm), _norm(width, norm), nn.ReLU()
        )
        self.encoder = nn.ModuleList(
            ResidualBlock(widths[i], widths[i + 1], 2, norm) for i in range(4)
        )
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.ModuleList(UpBlock(widths[i + 1], widths[i], norm) for i in (3, 2, 1, 0))
        self.head = nn.Conv2d(width, num_classes, 3, padding=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = pad_to_stride(x)
        features = [self.stem(x)]
        for block in self.encoder:
            features.append(block(features[-1]))
        out = self.dropout(features[-1])
        for up, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            out = up(out) + skip
        logits = self.head(out)
        return logits[..., :height, :width]
