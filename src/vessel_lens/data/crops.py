"""Crop boxes: the part (top, left, height, width) of an image that a command analyses.

``--crop N`` asks for the centred N x N square, ``--crop-box TOP,LEFT,H,W`` for any rectangle
(for retina images the centre is the vessel-free fovea). Both become one box, and that box is
what results record (``crop_box``) and compare, so a centred crop and the same box written out
are the same crop.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

import torch

from vessel_lens.data.io import MIN_SIDE
from vessel_lens.data.samples import Sample
from vessel_lens.errors import ConfigError, DataError

CropBox = tuple[int, int, int, int]
"""(top, left, height, width) in pixels of the whole image."""

T = TypeVar("T", torch.Tensor, Sample)


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(value) if not value.strip() or " " in value.strip() else value.strip()
    try:
        return ",".join(str(v) for v in value)  # type: ignore[union-attr]
    except TypeError:
        return repr(value)


def parse_crop_box(value: str | Sequence[int], option: str = "--crop-box") -> CropBox:
    """A box from ``"TOP,LEFT,H,W"`` (or four integers), checked on its own: whole numbers,
    top and left at least 0, sides at least ``MIN_SIDE`` (the smallest image the models and the
    Jacobian engine accept). Whether it fits an image is :func:`check_inside`'s question.
    Raises :class:`ConfigError` in one line naming ``option`` and the value as given.

    Examples:
        >>> from vessel_lens.data import parse_crop_box
        >>> parse_crop_box("120,40,64,96")
        (120, 40, 64, 96)
    """
    shown = _shown(value)
    usage = (
        f"{option} {shown}: expected TOP,LEFT,HEIGHT,WIDTH, four whole numbers (e.g. 120,40,64,64)"
    )
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        if len(items) != 4 or not all(re.fullmatch(r"[+-]?\d+", item) for item in items):
            raise ConfigError(usage)
        numbers = [int(item) for item in items]
    else:
        try:
            items = list(value)
            if any(isinstance(item, bool) for item in items):
                raise TypeError
            numbers = [operator.index(item) for item in items]
        except TypeError:
            raise ConfigError(usage) from None
        if len(numbers) != 4:
            raise ConfigError(usage)
    top, left, height, width = numbers
    if top < 0 or left < 0:
        raise ConfigError(f"{option} {shown}: TOP and LEFT must be 0 or more")
    for name, side in (("HEIGHT", height), ("WIDTH", width)):
        if side < MIN_SIDE:
            raise ConfigError(
                f"{option} {shown}: {name} {side} is below {MIN_SIDE}, the smallest side the "
                "models accept"
            )
    return top, left, height, width


def check_inside(
    box: CropBox, height: int, width: int, image: str, option: str = "--crop-box"
) -> CropBox:
    """``box`` itself when it lies inside an image of ``height`` x ``width``; otherwise
    :class:`DataError` naming the option, the image and how far the box reaches."""
    top, left, h, w = box
    if top + h > height or left + w > width:
        beyond = []
        if top + h > height:
            beyond.append(f"rows {top}-{top + h - 1}")
        if left + w > width:
            beyond.append(f"columns {left}-{left + w - 1}")
        raise DataError(
            f"{option} {_shown(box)}: reaches {' and '.join(beyond)}, outside image {image} "
            f"({height}x{width})"
        )
    return box


def centred_box(height: int, width: int, side: int, image: str = "") -> CropBox:
    """The centred ``side`` x ``side`` box (the whole image for ``side`` 0)."""
    if side == 0:
        return 0, 0, height, width
    if side > height or side > width:
        raise DataError(f"image {image} is {height}x{width}, smaller than --crop {side}")
    return (height - side) // 2, (width - side) // 2, side, side


def resolve_crop(
    height: int, width: int, image: str, crop: int | None = 0, box: CropBox | None = None
) -> CropBox:
    """The box of an image: ``box`` when given (checked to lie inside), otherwise the centred
    ``crop`` x ``crop`` square (``crop`` 0 or None: the whole image).

    Examples:
        >>> from vessel_lens.data import resolve_crop
        >>> resolve_crop(256, 256, "5740", crop=64)  # the centred 64 x 64 square
        (96, 96, 64, 64)
        >>> resolve_crop(256, 256, "5740", crop=0)  # the whole image
        (0, 0, 256, 256)
    """
    if box is not None:
        return check_inside(tuple(box), height, width, image)  # type: ignore[arg-type]
    return centred_box(height, width, crop or 0, image)


def crop_to_box(item: T, box: CropBox) -> T:
    """The ``box`` part of an image tensor (..., H, W) or of a sample (image, label, skeleton
    and mask alike; copies, so the sample's own tensors are left alone). Checked to lie inside.

    Examples:
        >>> import torch
        >>> from vessel_lens.data import crop_to_box
        >>> crop_to_box(torch.zeros(1, 256, 256), (120, 40, 64, 96)).shape
        torch.Size([1, 64, 96])
    """
    top, left, height, width = box
    shape = item.size if isinstance(item, Sample) else tuple(item.shape[-2:])
    name = item.stem if isinstance(item, Sample) else "tensor"
    check_inside(box, *shape, name)

    def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor[..., top : top + height, left : left + width].clone()

    if isinstance(item, Sample):
        return replace(
            item,
            image=cut(item.image),
            label=cut(item.label),
            skeleton=cut(item.skeleton),
            mask=cut(item.mask),
        )
    return cut(item)
