"""Simple statistics of a set of samples, recorded at training, and the zero-shot sanity check
that compares evaluated data against them.

Statistics (inside the field-of-view masks where samples have them): the mean and standard
deviation over images of each image's mean intensity (all channels), the pooled intensity
standard deviation, the vessel fraction of the labels (pooled, and the smallest and largest
image's), and the range of image sizes.

The check warns, one line per check naming the numbers, when the evaluated images' mean
intensity lies more than :data:`INTENSITY_STDS` standard deviations of the training images'
means from their mean (the deviation is taken at least :data:`MIN_INTENSITY_STD`, so that
training images of nearly equal brightness do not make every small change a warning), or when
the vessel fraction of the labels or of the predictions differs from the training labels' by
more than a factor :data:`FRACTION_FACTOR`. A checkpoint without recorded statistics (such as
the shipped one) gets no check: nothing is invented for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vessel_lens.data.samples import Sample

INTENSITY_STDS = 3.0
MIN_INTENSITY_STD = 0.01
"""Smallest spread of the training images' mean intensities used by the check (0..1 scale)."""
FRACTION_FACTOR = 3.0


def _inside(sample: Sample, values) -> np.ndarray:
    array = np.asarray(values)
    if sample.mask is None:
        return array.reshape(*array.shape[:-2], -1)
    return array[..., sample.mask.numpy()]


def data_statistics(samples: Sequence[Sample]) -> dict:
    """The statistics of ``samples`` (see the module docs) as plain values for a checkpoint.

    Examples:
        >>> import torch
        >>> from vessel_lens.data import Sample, data_statistics
        >>> samples = [Sample("a", torch.full((1, 16, 16), 0.25), torch.zeros(16, 16, dtype=torch.bool))]
        >>> sorted(data_statistics(samples))[:3]
        ['images', 'intensity_image_mean_std', 'intensity_mean']
    """
    means, total, squares, pixels = [], 0.0, 0.0, 0
    fractions, vessel, labelled = [], 0, 0
    for sample in samples:
        values = _inside(sample, sample.image.numpy()).astype(np.float64)
        means.append(float(values.mean()))
        total += float(values.sum())
        squares += float((values**2).sum())
        pixels += values.size
        if sample.label is not None:
            label = _inside(sample, sample.label.numpy())
            fractions.append(float(label.mean()))
            vessel += int(label.sum())
            labelled += label.size
    pooled = total / pixels
    heights = [s.size[0] for s in samples]
    widths = [s.size[1] for s in samples]
    stats = {
        "images": len(samples),
        "intensity_mean": float(np.mean(means)),
        "intensity_image_mean_std": float(np.std(means)),
        "intensity_std": float(np.sqrt(max(squares / pixels - pooled**2, 0.0))),
        "size_min": [min(heights), min(widths)],
        "size_max": [max(heights), max(widths)],
        "masks": all(s.mask is not None for s in samples),
    }
    if fractions:
        stats["vessel_fraction"] = vessel / labelled
        stats["vessel_fraction_min"] = min(fractions)
        stats["vessel_fraction_max"] = max(fractions)
    return stats


def _factor(value: float, reference: float) -> float:
    if value <= 0 or reference <= 0:
        return float("inf") if value != reference else 1.0
    return max(value / reference, reference / value)


def distribution_warnings(
    recorded: dict | None,
    evaluated: dict,
    predicted_fraction: float | None = None,
) -> list[str]:
    """One line per check that finds ``evaluated`` (:func:`data_statistics` of the evaluated
    samples) far from the ``recorded`` training statistics; none without a record.

    Examples:
        >>> import torch
        >>> from vessel_lens.data import Sample, data_statistics, distribution_warnings
        >>> dark = [Sample("a", torch.full((1, 16, 16), 0.1), torch.zeros(16, 16, dtype=torch.bool))]
        >>> bright = [Sample("b", torch.full((1, 16, 16), 0.9), torch.zeros(16, 16, dtype=torch.bool))]
        >>> distribution_warnings(data_statistics(dark), data_statistics(dark))
        []
        >>> len(distribution_warnings(data_statistics(dark), data_statistics(bright))) > 0
        True
    """
    if not recorded or "intensity_mean" not in recorded:
        return []
    lines = []
    mean, spread = recorded["intensity_mean"], recorded.get("intensity_image_mean_std", 0.0)
    used = max(spread, MIN_INTENSITY_STD)
    distance = abs(evaluated["intensity_mean"] - mean) / used
    if distance > INTENSITY_STDS:
        lines.append(
            f"mean intensity {evaluated['intensity_mean']:.3f} of the {evaluated['images']} "
            f"evaluated image(s) is {distance:.1f} std from the training images' {mean:.3f} "
            f"(std of their means {spread:.3f} over {recorded.get('images', '?')} images); "
            "the model may not transfer to these images"
        )
    reference = recorded.get("vessel_fraction")
    if reference is None:
        return lines
    for what, value in (
        ("labels", evaluated.get("vessel_fraction")),
        ("predictions", predicted_fraction),
    ):
        if value is not None and _factor(value, reference) > FRACTION_FACTOR:
            lines.append(
                f"vessel fraction of the {what} {value:.3f} differs from the training labels' "
                f"{reference:.3f} by more than a factor {FRACTION_FACTOR:g}"
            )
    return lines
