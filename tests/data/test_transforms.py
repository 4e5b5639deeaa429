"""Paired crops and flips, and the crop / whole-image datasets built on them."""

from __future__ import annotations

import pytest
import torch

from vessel_lens.data.datasets import CropDataset, WholeImageDataset
from vessel_lens.data.samples import Sample
from vessel_lens.data.transforms import paired_crop_flip
from vessel_lens.errors import DataError

HEIGHT, WIDTH, CROP = 40, 30, 16


def numbered_image(height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """(1, H, W) image whose pixel values are their raster index: every window is unique."""
    return torch.arange(height * width, dtype=torch.float32).reshape(1, height, width)


def dihedral_variants(window: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips / quarter turns of a square (..., S, S) window."""
    variants = []
    for turns in range(4):
        turned = torch.rot90(window, turns, dims=(-2, -1))
        variants += [turned, turned.flip(-1)]
    return variants


def locate(crop: torch.Tensor, width: int = WIDTH) -> tuple[int, int]:
    """Top-left of the window a crop of :func:`numbered_image` came from (its smallest value)."""
    return divmod(int(crop.min()), width)


def random_triplet(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image, and a label and skeleton that are fixed functions of the image pixel by pixel."""
    image = torch.rand(1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))
    return image, image[0] > 0.5, image[0] > 0.9


@pytest.mark.parametrize("seed", range(12))
def test_crop_is_a_flipped_or_turned_window_of_the_input(seed):
    image = numbered_image()
    (crop,) = paired_crop_flip([image], CROP, torch.Generator().manual_seed(seed))
    assert crop.shape == (1, CROP, CROP)
    top, left = locate(crop)
    window = image[..., top : top + CROP, left : left + CROP]
    assert window.shape == crop.shape
    assert any(torch.equal(crop, v) for v in dihedral_variants(window))


def test_draws_cover_positions_flips_and_turns():
    image = numbered_image()
    corners, variants = set(), set()
    for seed in range(64):
        (crop,) = paired_crop_flip([image], CROP, torch.Generator().manual_seed(seed))
        top, left = locate(crop)
        corners.add((top, left))
        window = image[..., top : top + CROP, left : left + CROP]
        variants.add(
            next(i for i, v in enumerate(dihedral_variants(window)) if torch.equal(crop, v))
        )
    assert len(corners) > 20
    assert variants == set(range(8))


def test_without_flips_and_rotations_the_crop_is_the_window():
    image = numbered_image()
    for seed in range(8):
        (crop,) = paired_crop_flip(
            [image], CROP, torch.Generator().manual_seed(seed), flips=False, rotations=False
        )
        top, left = locate(crop)
        assert torch.equal(crop, image[..., top : top + CROP, left : left + CROP])


@pytest.mark.parametrize("seed", range(12))
def test_image_label_and_skeleton_get_the_same_draw(seed):
    image, label, skeleton = random_triplet()
    crop, label_crop, skeleton_crop = paired_crop_flip(
        [image, label, skeleton], CROP, torch.Generator().manual_seed(seed)
    )
    assert label_crop.dtype == torch.bool and skeleton_crop.dtype == torch.bool
    assert torch.equal(label_crop, crop[0] > 0.5)
    assert torch.equal(skeleton_crop, crop[0] > 0.9)


def test_none_passes_through_and_same_generator_state_gives_same_crop():
    image, label, _ = random_triplet()
    first = paired_crop_flip([image, None, label], CROP, torch.Generator().manual_seed(9))
    second = paired_crop_flip([image, None, label], CROP, torch.Generator().manual_seed(9))
    assert first[1] is None
    assert torch.equal(first[0], second[0]) and torch.equal(first[2], second[2])


def test_crop_larger_than_the_image_is_refused():
    with pytest.raises(DataError, match="crop size 31 is larger than the image"):
        paired_crop_flip([numbered_image()], WIDTH + 1)


def test_tensors_of_different_sizes_are_refused():
    with pytest.raises(DataError, match="different sizes"):
        paired_crop_flip([numbered_image(), torch.zeros(HEIGHT, WIDTH + 1)], CROP)


# --- datasets -------------------------------------------------------------------------------


def make_samples(count: int = 3, skeletons: bool = True) -> list[Sample]:
    samples = []
    for i in range(count):
        image, label, skeleton = random_triplet(seed=i)
        samples.append(Sample(f"s{i}", image, label, skeleton if skeletons else None))
    return samples


def as_tuple(item: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return item["image"], item["label"], item["skeleton"]


def same_item(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(as_tuple(a), as_tuple(b), strict=True))


def test_crop_dataset_items_are_aligned_and_typed():
    dataset = CropDataset(make_samples(), CROP, crops_per_image=4, seed=1)
    assert len(dataset) == 12
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == (1, CROP, CROP) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["skeleton"].dtype == torch.bool
        assert torch.equal(item["label"], (item["image"][0] > 0.5).long())
        assert torch.equal(item["skeleton"], item["image"][0] > 0.9)


def test_crop_dataset_item_depends_only_on_seed_epoch_and_index():
    samples = make_samples()
    first = CropDataset(samples, CROP, crops_per_image=2, seed=4)
    second = CropDataset(samples, CROP, crops_per_image=2, seed=4)
    first.set_epoch(3)
    second.set_epoch(3)
    forward = [first[i] for i in range(len(first))]
    torch.rand(5)  # the global RNG must play no part
    backward = [second[i] for i in reversed(range(len(second)))][::-1]
    assert all(same_item(a, b) for a, b in zip(forward, backward, strict=True))


def test_crop_dataset_leaves_the_global_rng_alone():
    dataset = CropDataset(make_samples(), CROP)
    state = torch.random.get_rng_state()
    dataset[0]
    assert torch.equal(torch.random.get_rng_state(), state)


def test_crop_dataset_epochs_and_seeds_give_different_crops():
    samples = make_samples()
    dataset = CropDataset(samples, CROP, seed=0)
    epoch0 = [dataset[i] for i in range(len(dataset))]
    dataset.set_epoch(1)
    epoch1 = [dataset[i] for i in range(len(dataset))]
    other_seed = CropDataset(samples, CROP, seed=1)
    assert not all(same_item(a, b) for a, b in zip(epoch0, epoch1, strict=True))
    assert not all(same_item(a, other_seed[i]) for i, a in enumerate(epoch0))


def test_crop_dataset_repeats_each_sample_with_different_crops():
    samples = make_samples(count=2)
    dataset = CropDataset(samples, CROP, crops_per_image=3, flips=False, rotations=False)
    for i in range(len(dataset)):
        crop = dataset[i]["image"][0]
        source = samples[i % 2].image[0]
        windows = source.unfold(0, CROP, 1).unfold(1, CROP, 1)
        assert (windows == crop).all(-1).all(-1).any(), f"item {i} is not a window of its sample"
    assert not same_item(dataset[0], dataset[2])


def test_crop_dataset_without_skeletons_gives_empty_skeletons():
    item = CropDataset(make_samples(skeletons=False), CROP)[0]
    assert item["skeleton"].shape == (CROP, CROP) and not item["skeleton"].any()


def test_crop_dataset_refuses_unusable_samples():
    with pytest.raises(DataError, match="no training samples"):
        CropDataset([], CROP)
    with pytest.raises(DataError, match="smaller than the crop size 31"):
        CropDataset(make_samples(), WIDTH + 1)
    unlabelled = Sample("u", torch.zeros(1, HEIGHT, WIDTH), None)
    with pytest.raises(DataError, match="needs a label"):
        CropDataset([unlabelled], CROP)


def test_whole_image_dataset_returns_whole_samples():
    samples = make_samples(count=2, skeletons=False)
    samples.append(Sample("u", torch.zeros(1, HEIGHT, WIDTH), None))
    dataset = WholeImageDataset(samples)
    assert len(dataset) == 3
    item = dataset[1]
    assert torch.equal(item["image"], samples[1].image)
    assert torch.equal(item["label"], samples[1].label.long())
    assert item["index"] == 1
    assert not dataset[2]["label"].any() and dataset[2]["label"].dtype == torch.int64
