"""Splits: the dataset's own when it ships one, else a seeded, reproducible split."""

from __future__ import annotations

from pathlib import Path

import pytest

from vessel_lens.data.index import DatasetIndex, SampleFiles
from vessel_lens.data.splits import (
    read_splits,
    resolve_splits,
    seeded_split,
    split_stems,
    write_splits,
)
from vessel_lens.errors import ConfigError, DataError

STEMS = [f"img{i:03d}" for i in range(20)]


def fake_index(stems: list[str], splits: dict[str, list[str]] | None = None) -> DatasetIndex:
    samples = [SampleFiles(s, Path(f"{s}.png"), Path(f"{s}_label.png")) for s in stems]
    return DatasetIndex(Path("ds"), "folder", samples, splits or {})


def test_seeded_split_is_reproducible_and_depends_on_the_seed():
    first = seeded_split(STEMS, seed=3)
    assert seeded_split(list(reversed(STEMS)), seed=3) == first
    assert seeded_split(STEMS, seed=4) != first


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_seeded_split_is_disjoint_and_covers_every_stem(seed):
    splits = seeded_split(STEMS, seed=seed)
    assert set(splits) == {"train", "val", "test"}
    together = splits["train"] + splits["val"] + splits["test"]
    assert sorted(together) == sorted(STEMS)
    assert len(set(together)) == len(together)


@pytest.mark.parametrize(
    ("count", "fractions", "sizes"),
    [
        (20, (0.6, 0.2, 0.2), (12, 4, 4)),
        (100, (0.4, 0.1, 0.5), (40, 10, 50)),
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (3, (0.9, 0.05, 0.05), (1, 1, 1)),  # every split gets one stem from three on
        (7, (1.0, 0.0, 0.0), (7, 0, 0)),
    ],
)
def test_seeded_split_sizes(count, fractions, sizes):
    splits = seeded_split([f"s{i}" for i in range(count)], fractions, seed=0)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == sizes


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_seeded_split_refuses_bad_fractions(fractions):
    with pytest.raises(ConfigError, match="fractions"):
        seeded_split(STEMS, fractions)


def test_seeded_split_refuses_no_stems():
    with pytest.raises(DataError, match="empty"):
        seeded_split([])


def test_resolve_splits_prefers_the_datasets_own():
    own = {"train": ["img000", "img001"], "test": ["img002"]}
    splits, source = resolve_splits(fake_index(STEMS, own), seed=5)
    assert source == "dataset"
    assert splits == {"train": ["img000", "img001"], "val": [], "test": ["img002"]}


def test_resolve_splits_falls_back_to_a_seeded_split():
    splits, source = resolve_splits(fake_index(STEMS), (0.5, 0.25, 0.25), seed=2)
    assert source == "seeded"
    assert splits == seeded_split(STEMS, (0.5, 0.25, 0.25), seed=2)


def test_written_splits_read_back(tmp_path):
    splits = seeded_split(STEMS, seed=1)
    write_splits(splits, tmp_path / "run" / "splits")
    assert (tmp_path / "run" / "splits" / "val.txt").read_text().splitlines() == splits["val"]
    assert read_splits(tmp_path / "run" / "splits") == splits


def test_split_stems():
    index = fake_index(STEMS, {"train": ["img003"], "val": ["img004"]})
    assert split_stems(index, "train") == ["img003"]
    assert split_stems(index, "all") == STEMS
    assert split_stems(index, None) == STEMS
    with pytest.raises(DataError, match="'test' is empty"):
        split_stems(index, "test")
    with pytest.raises(ConfigError, match="--split 'training'"):
        split_stems(index, "training")


def test_loaded_dataset_is_a_mapping_from_stem_to_sample():
    from vessel_lens.data.source import open_dataset

    data = open_dataset(None)
    assert len(data) == 48 and list(data) == list(data.samples)
    stem = data.splits["test"][0]
    assert data[stem] is data.samples[stem] and stem in data
    assert dict(data.items())[stem].stem == stem
    with pytest.raises(KeyError, match=r"index by stem, e\.g\. data\['synth0000'\]"):
        data[0]
