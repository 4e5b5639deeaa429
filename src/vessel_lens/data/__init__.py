"""Data: reading images and masks, indexing datasets, splits, crops, synthetic vessels and
the statistics the zero-shot check compares."""

from vessel_lens.data.datasets import CropDataset, WholeImageDataset
from vessel_lens.data.index import DatasetIndex, SampleFiles, index_dataset
from vessel_lens.data.io import read_image, read_mask
from vessel_lens.data.samples import (
    NonBinaryMaskWarning,
    Sample,
    load_sample,
    load_samples,
    read_fov_mask,
)
from vessel_lens.data.splits import resolve_splits, seeded_split, split_stems, write_splits
from vessel_lens.data.statistics import data_statistics, distribution_warnings
from vessel_lens.data.synthetic import SyntheticVessels, synthesize, write_synthetic_dataset
from vessel_lens.data.transforms import paired_crop_flip

__all__ = [
    "CropDataset",
    "DatasetIndex",
    "NonBinaryMaskWarning",
    "Sample",
    "SampleFiles",
    "SyntheticVessels",
    "WholeImageDataset",
    "data_statistics",
    "distribution_warnings",
    "index_dataset",
    "load_sample",
    "load_samples",
    "paired_crop_flip",
    "read_fov_mask",
    "read_image",
    "read_mask",
    "resolve_splits",
    "seeded_split",
    "split_stems",
    "synthesize",
    "write_splits",
    "write_synthetic_dataset",
]
