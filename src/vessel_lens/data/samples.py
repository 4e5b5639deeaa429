"""Loading one sample (image, label, skeleton) into tensors, with consistency checks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vessel_lens.data.index import SampleFiles
from vessel_lens.data.io import read_image, read_mask
from vessel_lens.errors import DataError


class NonBinaryMaskWarning(UserWarning):
    """A label held more than two distinct values; non-zero pixels were taken as vessel."""


@dataclass
class Sample:
    """One loaded sample.

    ``image``: float32 (C, H, W) in [0, 1]; ``label`` and ``skeleton``: bool (H, W) or None.
    """

    stem: str
    image: torch.Tensor
    label: torch.Tensor | None = None
    skeleton: torch.Tensor | None = None
    image_path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


def _load_mask(path: Path, kind: str, shape: tuple[int, int], image_path: Path) -> torch.Tensor:
    mask, info = read_mask(path)
    if mask.shape != shape:
        raise DataError(
            f"{path}: {kind} is {mask.shape[0]}x{mask.shape[1]} but image {image_path.name} "
            f"is {shape[0]}x{shape[1]}"
        )
    if not info.binary:
        warnings.warn(
            f"{path}: {kind} has {info.distinct_values} distinct values; non-zero pixels "
            "are taken as vessel",
            NonBinaryMaskWarning,
            stacklevel=3,
        )
    return torch.from_numpy(mask)


def load_sample(files: SampleFiles, keep_channels: bool = False) -> Sample:
    """Read a sample's files; raise :class:`DataError` on any unreadable or mismatched file."""
    image = torch.from_numpy(read_image(files.image, keep_channels=keep_channels))
    shape = (int(image.shape[-2]), int(image.shape[-1]))
    label = _load_mask(files.label, "label", shape, files.image) if files.label else None
    skeleton = (
        _load_mask(files.skeleton, "skeleton", shape, files.image) if files.skeleton else None
    )
    return Sample(files.stem, image, label, skeleton, files.image)


def load_samples(
    files: Sequence[SampleFiles], keep_channels: bool = False, require_labels: bool = True
) -> list[Sample]:
    samples = [load_sample(f, keep_channels) for f in files]
    if require_labels:
        for f, s in zip(files, samples, strict=True):
            if s.label is None:
                raise DataError(f"{f.image}: image has no label")
    channels = {int(s.image.shape[0]) for s in samples}
    if len(channels) > 1:
        raise DataError(f"images have different channel counts {sorted(channels)}")
    return samples
