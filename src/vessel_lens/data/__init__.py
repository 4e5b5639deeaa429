"""Data: reading images and masks, indexing datasets, splits, crops, synthetic vessels and
the statistics the zero-shot check compares."""

from vessel_lens._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "crops": ["crop_to_box", "parse_crop_box", "resolve_crop"],
        "datasets": ["CropDataset", "WholeImageDataset"],
        "index": ["DatasetIndex", "SampleFiles", "index_dataset"],
        "io": ["read_image", "read_mask"],
        "samples": [
            "NonBinaryMaskWarning",
            "Sample",
            "load_sample",
            "load_samples",
            "read_fov_mask",
        ],
        "splits": ["resolve_splits", "seeded_split", "split_stems", "write_splits"],
        "statistics": ["data_statistics", "distribution_warnings"],
        "synthetic": ["SyntheticVessels", "synthesize", "write_synthetic_dataset"],
        "transforms": ["paired_crop_flip"],
    },
)
