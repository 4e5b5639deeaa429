"""Paired random crops and flips: one random draw applied to image, label, skeleton and
field-of-view mask alike."""

from __future__ import annotations

import torch

from vessel_lens.errors import DataError


def random_crop_box(
    height: int, width: int, size: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Top-left corner of a uniformly drawn ``size`` x ``size`` crop."""
    if size > height or size > width:
        raise DataError(f"crop size {size} is larger than the image ({height}x{width})")
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return top, left


def paired_crop_flip(
    tensors: list[torch.Tensor | None],
    size: int,
    generator: torch.Generator | None = None,
    flips: bool = True,
    rotations: bool = True,
) -> list[torch.Tensor | None]:
    """Crop (and flip / rotate by 90 degrees) every tensor with the same random draw.

    Tensors are (..., H, W) with equal H and W; ``None`` entries pass through.

    Examples:
        >>> import torch
        >>> from vessel_lens.data import paired_crop_flip
        >>> image, label = torch.rand(1, 64, 64), torch.rand(64, 64) > 0.5
        >>> crop, crop_label, none = paired_crop_flip([image, label, None], 32, torch.Generator().manual_seed(0))
        >>> tuple(crop.shape), tuple(crop_label.shape), none
        ((1, 32, 32), (32, 32), None)
    """
    present = [t for t in tensors if t is not None]
    height, width = present[0].shape[-2:]
    for t in present[1:]:
        if t.shape[-2:] != (height, width):
            raise DataError(f"cannot crop tensors of different sizes {[t.shape for t in present]}")
    top, left = random_crop_box(height, width, size, generator)
    draws = torch.randint(0, 2, (2,), generator=generator).tolist() if flips else [0, 0]
    quarter_turns = int(torch.randint(0, 4, (1,), generator=generator)) if rotations else 0
    out: list[torch.Tensor | None] = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        crop = t[..., top : top + size, left : left + size]
        if draws[0]:
            crop = crop.flip(-1)
        if draws[1]:
            crop = crop.flip(-2)
        if quarter_turns:
            crop = torch.rot90(crop, quarter_turns, dims=(-2, -1))
        out.append(crop.contiguous())
    return out
