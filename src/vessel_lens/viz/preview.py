"""Dataset preview: sample images with labels and skeletons, and augmented training crops."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vessel_lens.data.samples import Sample
from vessel_lens.data.transforms import paired_crop_flip
from vessel_lens.viz.figures import hide_axes, new_figure, overlay, save_figure, to_numpy_image


def preview_figure(
    samples: Sequence[Sample], path: str | Path, count: int = 4, crop_size: int = 128, seed: int = 0
) -> Path:
    """Write a PNG grid: per sample, image / label overlay / skeleton overlay / two crops."""
    chosen = list(samples)[:count]
    crop_size = min([crop_size, *(min(s.size) for s in chosen)])
    columns = ["image", "label", "skeleton", "augmented crop", "augmented crop"]
    figure = new_figure(2.3 * len(columns), 2.4 * len(chosen))
    axes = figure.subplots(len(chosen), len(columns), squeeze=False)
    generator = torch.Generator().manual_seed(seed)
    for row, sample in enumerate(chosen):
        image = to_numpy_image(sample.image)
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(sample.stem, fontsize=8)
        if sample.label is not None:
            axes[row, 1].imshow(overlay(image, sample.label.numpy(), (1.0, 0.2, 0.2)))
        if sample.skeleton is not None:
            axes[row, 2].imshow(overlay(image, sample.skeleton.numpy(), (0.1, 1.0, 0.3), 0.9))
        for col in (3, 4):
            crop, label, skeleton = paired_crop_flip(
                [sample.image, sample.label, sample.skeleton], crop_size, generator
            )
            shown = to_numpy_image(crop)
            if label is not None:
                shown = overlay(shown, label.numpy(), (1.0, 0.2, 0.2), 0.3)
            if skeleton is not None:
                shown = overlay(shown, skeleton.numpy(), (0.1, 1.0, 0.3), 0.9)
            axes[row, col].imshow(shown)
    for col, title in enumerate(columns):
        axes[0, col].set_title(title, fontsize=9)
    hide_axes(axes)
    return save_figure(figure, path)
