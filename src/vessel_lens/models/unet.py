"""A plain U-Net (Ronneberger et al. 2015 layout) for comparing how architectures see.

Four 2x2 max-pool downsamplings, two 3x3 convolutions (BN, ReLU) per level, widths
w, 2w, 4w, 8w, 16w, transposed-convolution upsampling and concatenated skips. At width 64
it has about 31 M parameters, like the reference model. Sizes that are not multiples of 16
are zero-padded and cropped back, as in :mod:`vessel_lens.models.resnet_seg`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.models.resnet_seg import check_arguments, pad_to_stride


def _double_conv(c_in: int, c_out: int, norm: str | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers.append(nn.Conv2d(a, b, 3, padding=1, bias=norm is None))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net. Input (B, C, H, W); output logits (B, classes, H, W)."""

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
        self.down = nn.ModuleList(
            _double_conv(in_channels if i == 0 else widths[i - 1], widths[i], norm)
            for i in range(5)
        )
        self.dropout = nn.Dropout(dropout)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in (3, 2, 1, 0)
        )
        self.merge = nn.ModuleList(
            _double_conv(2 * widths[i], widths[i], norm) for i in (3, 2, 1, 0)
        )
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = pad_to_stride(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.dropout(skips.pop())
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :height, :width]
