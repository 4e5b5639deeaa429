"""Loading one sample (image, label, skeleton, field-of-view mask) into tensors, with
consistency checks."""

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

    ``image``: float32 (C, H, W) in [0, 1]; ``label`` and ``skeleton``: bool (H, W) or None;
    ``mask``: the field of view, bool (H, W), True where pixels count, or None (all count).
    """

    stem: str
    image: torch.Tensor
    label: torch.Tensor | None = None
    skeleton: torch.Tensor | None = None
    image_path: Path | None = None
    mask: torch.Tensor | None = None

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


def read_fov_mask(
    path: Path, shape: tuple[int, int], image_path: Path
) -> tuple[torch.Tensor | None, list[str]]:
    """A field-of-view mask (non-zero inside) and every problem it has: another size than
    the image, more than two distinct values, no pixel inside. The mask is None when there
    is a problem. Unreadable files raise :class:`DataError`.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from vessel_lens.data import read_fov_mask
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "fov.png"
        ...     Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4)).save(path)
        ...     mask, problems = read_fov_mask(path, (16, 16), Path("image.png"))
        >>> int(mask.sum()), problems
        (64, [])
    """
    mask, info = read_mask(path)
    problems = []
    if mask.shape != shape:
        problems.append(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but image {image_path.name} "
            f"is {shape[0]}x{shape[1]}"
        )
    if not info.binary:
        problems.append(
            f"{path}: mask has {info.distinct_values} distinct values; a field-of-view mask "
            "must be binary (0 outside, one other value inside)"
        )
    if not mask.any():
        problems.append(f"{path}: mask is empty (no pixel inside the field of view)")
    return (None if problems else torch.from_numpy(mask)), problems


def load_sample(files: SampleFiles, keep_channels: bool = False) -> Sample:
    """Read a sample's files; raise :class:`DataError` on any unreadable or mismatched file.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import index_dataset, load_sample, write_synthetic_dataset
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = write_synthetic_dataset(Path(folder), count=1, size=32, progress=False)
        ...     sample = load_sample(index_dataset(folder).samples[0])
        >>> sample.stem, tuple(sample.image.shape), tuple(sample.label.shape), sample.mask
        ('synth0000', (1, 32, 32), (32, 32), None)
    """
    image = torch.from_numpy(read_image(files.image, keep_channels=keep_channels))
    shape = (int(image.shape[-2]), int(image.shape[-1]))
    label = _load_mask(files.label, "label", shape, files.image) if files.label else None
    skeleton = (
        _load_mask(files.skeleton, "skeleton", shape, files.image) if files.skeleton else None
    )
    mask = None
    if files.mask is not None:
        mask, problems = read_fov_mask(files.mask, shape, files.image)
        if problems:
            raise DataError(problems[0])
    return Sample(files.stem, image, label, skeleton, files.image, mask)


def load_samples(
    files: Sequence[SampleFiles], keep_channels: bool = False, require_labels: bool = True
) -> list[Sample]:
    """Load every sample of ``files`` (see :func:`load_sample`); all must have the same channel
    count, and a label unless ``require_labels`` is False (a :class:`DataError` names the file).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import index_dataset, load_samples, write_synthetic_dataset
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = write_synthetic_dataset(Path(folder), count=2, size=32, progress=False)
        ...     samples = load_samples(index_dataset(folder).samples)
        >>> [s.stem for s in samples], samples[0].image.dtype
        (['synth0000', 'synth0001'], torch.float32)
    """
    samples = [load_sample(f, keep_channels) for f in files]
    if require_labels:
        for f, s in zip(files, samples, strict=True):
            if s.label is None:
                raise DataError(f"{f.image}: image has no label")
    channels = {int(s.image.shape[0]) for s in samples}
    if len(channels) > 1:
        raise DataError(f"images have different channel counts {sorted(channels)}")
    return samples
