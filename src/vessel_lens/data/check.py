"""Dataset validation for ``vessel-lens data check``: every problem is one line naming a file."""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vessel_lens.data.index import DatasetIndex, index_dataset
from vessel_lens.data.samples import NonBinaryMaskWarning, Sample, load_sample, read_fov_mask
from vessel_lens.data.splits import resolve_splits
from vessel_lens.errors import ConfigError, DataError


@dataclass
class CheckReport:
    """Outcome of a dataset check."""

    source: str
    index: DatasetIndex | None = None
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    split_source: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary_rows(self) -> list[tuple[str, str]]:
        if self.index is None:
            return []
        rows = [("dataset", self.source)]
        rows.append(("kind", self.index.kind))
        rows.append(("samples", str(len(self.index.samples))))
        rows.append(("loaded", str(len(self.samples))))
        if self.samples:
            sizes = Counter(f"{s.size[0]}x{s.size[1]}" for s in self.samples)
            rows.append(("sizes", ", ".join(f"{k} ({v})" for k, v in sizes.most_common(4))))
            channels = Counter(int(s.image.shape[0]) for s in self.samples)
            rows.append(("channels", ", ".join(f"{k} ({v})" for k, v in channels.items())))
            labelled = [s for s in self.samples if s.label is not None]
            if labelled:
                frac = np.array([float(s.label.float().mean()) for s in labelled])
                rows.append(
                    (
                        "vessel fraction",
                        f"mean {frac.mean():.3f}, min {frac.min():.3f}, max {frac.max():.3f}",
                    )
                )
            intensity = np.array([float(s.image.mean()) for s in self.samples])
            rows.append(("mean intensity", f"{intensity.mean():.3f} (0..1 scale)"))
            rows.append(
                ("skeletons", "yes" if self.index.has_skeletons else "no (clDice unavailable)")
            )
            masks = [float(s.mask.float().mean()) for s in self.samples if s.mask is not None]
            rows.append(
                (
                    "masks",
                    f"yes (field of view: mean {np.mean(masks):.3f} of the image)"
                    if masks
                    else "no (every pixel counts)",
                )
            )
        if self.split_sizes:
            sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
            rows.append(("split", f"{sizes} ({self.split_source})"))
        rows.append(("errors", str(len(self.errors))))
        rows.append(("warnings", str(len(self.warnings))))
        return rows


def check_dataset(
    data: str | Path,
    crop_size: int | None = None,
    keep_channels: bool = False,
    progress: bool = True,
) -> CheckReport:
    """Index and load every file of a dataset, collecting problems instead of stopping."""
    if crop_size is not None and crop_size < 1:
        raise ConfigError(f"--crop-size {crop_size}: must be positive")
    report = CheckReport(str(data))
    try:
        report.index = index_dataset(data)
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    for files in tqdm(report.index.samples, desc="checking", unit="img", disable=not progress):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonBinaryMaskWarning)
            try:
                # the mask separately, so that each of its problems gets its own line
                sample = load_sample(dataclasses.replace(files, mask=None), keep_channels)
                if files.mask is not None:
                    sample.mask, problems = read_fov_mask(files.mask, sample.size, files.image)
                    report.errors.extend(problems)
            except DataError as exc:
                report.errors.append(str(exc))
                continue
        report.warnings.extend(
            str(w.message) for w in caught if issubclass(w.category, NonBinaryMaskWarning)
        )
        if files.label is None:
            report.errors.append(f"{files.image}: image has no label")
        elif not bool(sample.label.any()):
            report.warnings.append(f"{files.label}: label has no vessel pixel")
        if sample.skeleton is not None and sample.label is not None:
            outside = int((sample.skeleton & ~sample.label).sum())
            if outside:
                report.warnings.append(
                    f"{files.skeleton}: {outside} skeleton pixel(s) lie outside the label"
                )
        if sample.mask is not None and sample.label is not None:
            outside = int((sample.label & ~sample.mask).sum())
            if outside:
                report.warnings.append(
                    f"{files.label}: {outside} vessel pixel(s) lie outside the mask {files.mask}"
                )
        if crop_size is not None and min(sample.size) < crop_size:
            report.errors.append(
                f"{files.image}: image is {sample.size[0]}x{sample.size[1]}, smaller than the "
                f"crop size {crop_size}"
            )
        report.samples.append(sample)
    channels = {int(s.image.shape[0]) for s in report.samples}
    if len(channels) > 1:
        report.errors.append(f"{data}: images have different channel counts {sorted(channels)}")
    splits, source = resolve_splits(report.index)
    report.split_sizes = {k: len(v) for k, v in splits.items()}
    report.split_source = "dataset's own" if source == "dataset" else "none shipped; seeded"
    return report
