"""Torch datasets over loaded samples: random paired crops for training, whole images for
evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from vessel_lens.data.samples import Sample
from vessel_lens.data.transforms import paired_crop_flip
from vessel_lens.errors import DataError


class CropDataset(Dataset):
    """``crops_per_image`` random crops of each sample per epoch.

    Item ``i`` draws its crop from a generator seeded by ``(seed, epoch, i)``, so an epoch's
    crops are the same however the items are shared between workers or processes, and a run
    resumed at an epoch boundary sees the crops it would have seen. Call :meth:`set_epoch`.

    Items: ``image`` float32 (C, S, S), ``label`` int64 (S, S), ``skeleton`` bool (S, S) or
    an all-False tensor when the dataset has none, ``mask`` bool (S, S): the field of view,
    all True when the sample has no mask.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        crop_size: int,
        crops_per_image: int = 1,
        seed: int = 0,
        flips: bool = True,
        rotations: bool = True,
    ) -> None:
        if not samples:
            raise DataError("no training samples")
        for s in samples:
            if s.label is None:
                raise DataError(f"{s.image_path}: training needs a label for every image")
            if min(s.size) < crop_size:
                raise DataError(
                    f"{s.image_path}: image is {s.size[0]}x{s.size[1]}, smaller than the crop "
                    f"size {crop_size}"
                )
        self.samples = list(samples)
        self.crop_size = crop_size
        self.crops_per_image = crops_per_image
        self.seed = seed
        self.flips = flips
        self.rotations = rotations
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples) * self.crops_per_image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index % len(self.samples)]
        # one seed per (run seed, epoch, item), kept within torch's 63-bit range
        generator = torch.Generator().manual_seed(
            ((self.seed * 1_000_003 + self.epoch) * 100_019 + index) & (2**63 - 1)
        )
        skeleton, mask = _skeleton_and_mask(sample)
        image, label, skel, mask = paired_crop_flip(
            [sample.image, sample.label, skeleton, mask],
            self.crop_size,
            generator,
            flips=self.flips,
            rotations=self.rotations,
        )
        return {"image": image, "label": label.long(), "skeleton": skel, "mask": mask}


class WholeImageDataset(Dataset):
    """Whole images for evaluation. Items as :class:`CropDataset` plus ``index``."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        label = s.label.long() if s.label is not None else torch.zeros(s.size, dtype=torch.long)
        skeleton, mask = _skeleton_and_mask(s)
        return {
            "image": s.image,
            "label": label,
            "skeleton": skeleton,
            "mask": mask,
            "index": index,
        }


def _skeleton_and_mask(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample's skeleton (all False without one) and mask (all True without one)."""
    skeleton = sample.skeleton
    if skeleton is None:
        skeleton = torch.zeros(sample.size, dtype=torch.bool)
    mask = sample.mask if sample.mask is not None else torch.ones(sample.size, dtype=torch.bool)
    return skeleton, mask
