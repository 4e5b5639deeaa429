"""One entry point for every command's ``--data``: a folder, a CSV manifest, or (when no data
is given) the embedded synthetic vessels."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vessel_lens.data.index import SPLIT_NAMES, index_dataset
from vessel_lens.data.samples import Sample, load_samples
from vessel_lens.data.splits import resolve_splits, seeded_split
from vessel_lens.data.synthetic import synthesize
from vessel_lens.errors import ConfigError, DataError

if TYPE_CHECKING:
    from vessel_lens.models.checkpoint import Checkpoint

SYNTHETIC = "synthetic"


@dataclass
class LoadedDataset(Mapping[str, Sample]):
    """Samples by stem, with the split to use and where that split came from.

    A read-only mapping from stem to :class:`Sample` (``len(data)``, ``data["5740"]``,
    ``for stem in data``, ``data.items()``); ``data.subset("test")`` lists a split's samples
    and ``data.splits["test"]`` its stems.
    """

    name: str
    samples: dict[str, Sample]
    splits: dict[str, list[str]]
    split_source: str

    def __getitem__(self, stem: str) -> Sample:
        try:
            return self.samples[stem]
        except (KeyError, TypeError):
            first = next(iter(self.samples), "")
            raise KeyError(
                f"{self.name} has no image {stem!r}: index by stem, e.g. data[{first!r}] "
                "(list(data) gives the stems; data.subset('test') a split's samples)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_skeletons(self) -> bool:
        return all(s.skeleton is not None for s in self.samples.values())

    @property
    def has_masks(self) -> bool:
        return all(s.mask is not None for s in self.samples.values())

    def subset(self, split: str | None) -> list[Sample]:
        if split in (None, "all"):
            return list(self.samples.values())
        if split not in SPLIT_NAMES:
            raise ConfigError(f"--split {split!r}: use one of {', '.join(SPLIT_NAMES)}, all")
        stems = self.splits.get(split, [])
        if not stems:
            raise DataError(f"{self.name}: split {split!r} is empty")
        return [self.samples[s] for s in stems]


def synthetic_dataset(count: int = 48, size: int = 256, seed: int = 0) -> LoadedDataset:
    """The embedded default: ``count`` synthetic samples split 50/17/33 %."""
    samples = {}
    for i in range(count):
        stem = f"synth{i:04d}"
        s = synthesize(size, seed=seed * 100_003 + i)
        samples[stem] = Sample(
            stem,
            torch.from_numpy(s.image)[None],
            torch.from_numpy(s.label),
            torch.from_numpy(s.skeleton),
            None,
        )
    splits = seeded_split(list(samples), (0.5, 1 / 6, 1 / 3), seed)
    return LoadedDataset(SYNTHETIC, samples, splits, "seeded")


def open_dataset(
    data: str | Path | None,
    keep_channels: bool = False,
    seed: int = 0,
    require_labels: bool = True,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    checkpoint: Checkpoint | None = None,
) -> LoadedDataset:
    """Load a dataset given on the command line (``None`` or ``"synthetic"``: the default).

    ``seed`` seeds the split of a dataset that ships none (and the synthetic images). When
    such a dataset is opened for a ``checkpoint`` whose training recorded its split, that split
    is used instead, so evaluation never sees training images.
    """
    if data is None or str(data) == SYNTHETIC:
        dataset = synthetic_dataset(seed=seed)
    else:
        index = index_dataset(data)
        samples = load_samples(index.samples, keep_channels, require_labels=require_labels)
        splits, source = resolve_splits(index, split_fractions, seed)
        dataset = LoadedDataset(str(data), {s.stem: s for s in samples}, splits, source)
    recorded = (checkpoint.metadata.get("splits") if checkpoint is not None else None) or {}
    if dataset.split_source == "seeded" and recorded:
        missing = sorted({s for stems in recorded.values() for s in stems} - set(dataset.samples))
        if missing:
            raise DataError(
                f"{dataset.name}: the checkpoint's training split names {len(missing)} "
                f"image(s) this dataset lacks, first {missing[0]!r}"
            )
        dataset.splits = {name: list(stems) for name, stems in recorded.items()}
        dataset.split_source = "checkpoint"
    return dataset
