"""Synthetic vessels: seeded, well-formed samples and a dataset folder that is never overwritten."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import skeletonize

from vessel_lens.data import index_dataset, load_samples, synthetic
from vessel_lens.data.source import open_dataset, synthetic_dataset
from vessel_lens.data.synthetic import MAX_SIZE, synthesize, write_synthetic_dataset
from vessel_lens.errors import ConfigError


def test_same_seed_same_sample_other_seed_other_sample():
    a, b, c = synthesize(64, seed=5), synthesize(64, seed=5), synthesize(64, seed=6)
    for field in ("image", "label", "skeleton"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)


@pytest.mark.parametrize("size", [16, 48, 97])
def test_shapes_and_dtypes(size):
    sample = synthesize(size, seed=1)
    assert sample.image.shape == sample.label.shape == sample.skeleton.shape == (size, size)
    assert sample.image.dtype == np.float32
    assert sample.label.dtype == bool and sample.skeleton.dtype == bool
    assert sample.image.min() >= 0.0 and sample.image.max() <= 1.0


@pytest.mark.parametrize("seed", range(8))
def test_labels_are_vessel_like(seed):
    sample = synthesize(64, seed=seed)
    assert sample.label.any(), "every sample has some vessel"
    assert not sample.label.all()
    assert sample.skeleton.any()
    assert not (sample.skeleton & ~sample.label).any(), "skeleton lies inside the label"
    np.testing.assert_array_equal(skeletonize(sample.skeleton), sample.skeleton)
    assert sample.image[sample.label].mean() > sample.image[~sample.label].mean()


def test_too_small_size_is_refused():
    with pytest.raises(ConfigError, match="below the minimum"):
        synthesize(8)


def test_written_folder_reads_back_as_the_generated_samples(tmp_path):
    out = tmp_path / "synth"
    stems = write_synthetic_dataset(out, count=3, size=32, seed=2, progress=False)
    assert stems == ["synth0000", "synth0001", "synth0002"]
    for sub in ("images", "labels", "skeletons"):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{s}.png" for s in stems]

    index = index_dataset(out)
    assert index.stems == stems and index.has_skeletons
    loaded = load_samples(index.samples)
    generated = [synthesize(32, seed=2 * 100_003 + i) for i in range(3)]
    for sample, expected in zip(loaded, generated, strict=True):
        np.testing.assert_allclose(sample.image[0].numpy(), expected.image, atol=0.5 / 255 + 1e-6)
        np.testing.assert_array_equal(sample.label.numpy(), expected.label)
        np.testing.assert_array_equal(sample.skeleton.numpy(), expected.skeleton)
    assert len(open_dataset(out).samples) == 3


def test_writing_into_an_existing_dataset_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "synth"
    write_synthetic_dataset(out, count=2, size=32, seed=0, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a dataset"):
        write_synthetic_dataset(out, count=4, size=32, seed=1, progress=False)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_zero_count_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--count 0"):
        write_synthetic_dataset(tmp_path / "synth", count=0, progress=False)
    assert not (tmp_path / "synth").exists()


def test_embedded_default_dataset_is_split_and_reproducible():
    first = synthetic_dataset(count=6, size=32, seed=3)
    second = synthetic_dataset(count=6, size=32, seed=3)
    assert first.split_source == "seeded"
    together = sorted(first.splits["train"] + first.splits["val"] + first.splits["test"])
    assert together == sorted(first.samples) and len(together) == 6
    for stem, sample in first.samples.items():
        assert sample.image.shape == (1, 32, 32)
        assert np.array_equal(sample.image.numpy(), second.samples[stem].image.numpy())


# --- everything is checked before anything is created --------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"size": 8}, "below the minimum of 16"),
        ({"size": MAX_SIZE + 1}, f"above the limit of {MAX_SIZE}"),
        ({"size": 100_000}, f"above the limit of {MAX_SIZE}"),
        ({"seed": -1}, "--seed -1"),
        ({"count": 0}, "--count 0"),
    ],
)
def test_bad_options_create_nothing_and_the_rerun_works(tmp_path, options, problem):
    out = tmp_path / "deep" / "synth"
    with pytest.raises(ConfigError, match=problem):
        write_synthetic_dataset(out, **{"count": 2, "size": 32, **options}, progress=False)
    assert not (tmp_path / "deep").exists()
    assert write_synthetic_dataset(out, count=2, size=32, progress=False) == [
        "synth0000",
        "synth0001",
    ]


def test_too_large_sample_is_refused_before_allocating():
    with pytest.raises(ConfigError, match=f"above the limit of {MAX_SIZE}"):
        synthesize(100_000)


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        write_synthetic_dataset(out, count=1, size=32, progress=False)
    assert out.read_text() == "mine"
    with pytest.raises(ConfigError, match="cannot create the folder"):
        write_synthetic_dataset(out / "inside", count=1, size=32, progress=False)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("user_file", ["labels/synth0000.png", "skeletons/x.png", "notes.txt"])
def test_non_empty_out_is_refused_and_changes_nothing(tmp_path, user_file):
    out = tmp_path / "mine"
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_bytes(b"user data")
    with pytest.raises(ConfigError, match="is not empty"):
        write_synthetic_dataset(out, count=1, size=32, progress=False)
    assert [p for p in out.rglob("*") if p.is_file()] == [out / user_file]
    assert (out / user_file).read_bytes() == b"user data"


def test_empty_existing_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert write_synthetic_dataset(out, count=1, size=32, progress=False) == ["synth0000"]
    assert (out / "images" / "synth0000.png").is_file()


@pytest.mark.parametrize("existed", [False, True])
def test_failure_midway_leaves_nothing_that_blocks_a_retry(tmp_path, monkeypatch, existed):
    out = tmp_path / "synth"
    if existed:
        out.mkdir()
    real = synthetic.synthesize
    calls = []

    def failing(size, seed=0):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(size, seed)

    monkeypatch.setattr(synthetic, "synthesize", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(out, count=3, size=32, progress=False)
    assert out.is_dir() == existed  # a folder the user made stays; one this call made goes
    if existed:
        assert not any(out.iterdir())
    monkeypatch.setattr(synthetic, "synthesize", real)
    assert len(write_synthetic_dataset(out, count=3, size=32, progress=False)) == 3
