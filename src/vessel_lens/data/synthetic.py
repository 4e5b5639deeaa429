"""A seeded generator of vessel-like images: branching curved tubes over a textured background.

Each tree starts at a random point with a random direction and radius, walks with a smoothly
drifting heading, narrows slowly and branches at random. Every pixel takes the radius and
contrast of its nearest centreline point (one Euclidean distance transform), which gives the
label (distance <= radius) and a bright tubular intensity profile. The skeleton is computed
from the label with scikit-image, as VessMAP's skeletons are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize
from tqdm import tqdm

from vessel_lens.errors import ConfigError, OutputError, WriteError
from vessel_lens.outputs import EMPTY_HINT, claim_output, require_empty
from vessel_lens.write_errors import write_reason

MIN_SIZE = 16
"""Smallest synthetic image side in pixels."""
MAX_SIZE = 4096
"""Largest synthetic image side in pixels (the largest side :mod:`vessel_lens.data.io` reads);
one 4096 x 4096 sample takes about 1 GiB of memory while it is generated."""


@dataclass(frozen=True)
class SyntheticVessels:
    """One synthetic sample: ``image`` float32 (H, W) in [0, 1]; ``label``, ``skeleton`` bool."""

    image: np.ndarray
    label: np.ndarray
    skeleton: np.ndarray


def _walk_trees(size: int, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Centreline points (row, col, radius, contrast) of a few branching trees."""
    points: list[tuple[float, float, float, float]] = []
    n_trees = int(rng.integers(3, 7))
    stack = []
    for _ in range(n_trees):
        row, col = rng.uniform(0, size, 2)
        stack.append(
            (row, col, rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 5.5), rng.uniform(0.35, 1.0), 0)
        )
    step = 1.0
    max_points = 40 * size
    while stack and len(points) < max_points:
        row, col, heading, radius, contrast, depth = stack.pop()
        turn_rate = 0.0
        length = int(rng.uniform(0.4, 1.2) * size)
        for _ in range(length):
            if not (-8 <= row < size + 8 and -8 <= col < size + 8) or radius < 0.7:
                break
            points.append((row, col, radius, contrast))
            turn_rate = 0.85 * turn_rate + rng.normal(0, 0.018)
            heading += turn_rate
            row += step * np.sin(heading)
            col += step * np.cos(heading)
            radius *= 0.9985
            if depth < 4 and rng.random() < 0.012:
                side = rng.choice([-1.0, 1.0])
                child_radius = radius * rng.uniform(0.45, 0.8)
                stack.append(
                    (
                        row,
                        col,
                        heading + side * rng.uniform(0.5, 1.2),
                        child_radius,
                        contrast * rng.uniform(0.7, 1.0),
                        depth + 1,
                    )
                )
                radius *= 0.9
    return points


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise ConfigError(f"synthetic image size {size} is below the minimum of {MIN_SIZE}")
    if size > MAX_SIZE:
        raise ConfigError(f"synthetic image size {size} is above the limit of {MAX_SIZE}")


def synthesize(size: int = 256, seed: int = 0) -> SyntheticVessels:
    """Generate one ``size`` x ``size`` sample, reproducible by ``seed``.

    Examples:
        >>> from vessel_lens.data import synthesize
        >>> sample = synthesize(64, seed=1)
        >>> sample.image.shape, sample.image.dtype, sample.label.dtype, sample.skeleton.shape
        ((64, 64), dtype('float32'), dtype('bool'), (64, 64))
    """
    _check_size(size)
    if seed < 0:
        raise ConfigError(f"--seed {seed}: must be zero or positive")
    rng = np.random.default_rng(seed)
    points = np.array(_walk_trees(size, rng), dtype=np.float64).reshape(-1, 4)
    centre = np.zeros((size, size), dtype=bool)
    radius_at = np.zeros((size, size), dtype=np.float64)
    contrast_at = np.zeros((size, size), dtype=np.float64)
    rows = np.round(points[:, 0]).astype(int)
    cols = np.round(points[:, 1]).astype(int)
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    rows, cols, pts = rows[inside], cols[inside], points[inside]
    order = np.argsort(pts[:, 2])  # the widest vessel wins where trees cross
    centre[rows[order], cols[order]] = True
    radius_at[rows[order], cols[order]] = pts[order, 2]
    contrast_at[rows[order], cols[order]] = pts[order, 3]
    if centre.any():
        distance, (near_r, near_c) = ndimage.distance_transform_edt(~centre, return_indices=True)
        radius = radius_at[near_r, near_c]
        contrast = contrast_at[near_r, near_c]
        label = distance <= radius
        profile = np.sqrt(np.clip(1.0 - (distance / np.maximum(radius, 1e-6)) ** 2, 0.0, 1.0))
        vessels = contrast * profile
    else:
        label = np.zeros((size, size), dtype=bool)
        vessels = np.zeros((size, size))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=size / 24)
    texture = texture / (np.abs(texture).max() + 1e-9)
    background = rng.uniform(0.08, 0.25) + rng.uniform(0.03, 0.12) * texture
    image = background + 0.65 * vessels
    image = ndimage.gaussian_filter(image, sigma=0.8)
    image = image + rng.normal(0, rng.uniform(0.02, 0.06), image.shape)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return SyntheticVessels(image, label, skeletonize(label))


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that already holds anything."""
    if (out / "images").exists():
        raise OutputError(f"{out}: already holds a dataset (images/); {EMPTY_HINT}")
    require_empty(out)


def write_synthetic_dataset(
    out: Path, count: int = 32, size: int = 256, seed: int = 0, progress: bool = True
) -> list[str]:
    """Write ``count`` samples as a VessMAP-like folder (PNG files); return the stems.

    ``out`` must not exist or be an empty folder: every option is checked before anything is
    created, and a failed run removes what it wrote (never anything that was there before), so
    it can simply be run again.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import index_dataset, write_synthetic_dataset
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     stems = write_synthetic_dataset(Path(folder) / "synth", count=3, size=32, progress=False)
        ...     index = index_dataset(Path(folder) / "synth")
        >>> stems, len(index.samples)
        (['synth0000', 'synth0001', 'synth0002'], 3)
    """
    if count < 1:
        raise ConfigError(f"--count {count}: must be at least 1")
    _check_size(size)
    if seed < 0:
        raise ConfigError(f"--seed {seed}: must be zero or positive")
    out = Path(out)
    with claim_output(out, "data synth", check=_check_out):
        return _write_samples(out, count, size, seed, progress)


def _write_samples(out: Path, count: int, size: int, seed: int, progress: bool) -> list[str]:
    created: list[Path] = []  # folders and files this call made, in order (claim_output: out)
    try:
        for sub in ("images", "labels", "skeletons"):
            (out / sub).mkdir()
            created.append(out / sub)
        stems = [f"synth{i:04d}" for i in range(count)]
        for i, stem in enumerate(
            tqdm(stems, desc="synthesising", unit="img", disable=not progress)
        ):
            sample = synthesize(size, seed=seed * 100_003 + i)
            arrays = {
                "images": np.round(sample.image * 255).astype(np.uint8),
                "labels": sample.label.astype(np.uint8) * 255,
                "skeletons": sample.skeleton.astype(np.uint8) * 255,
            }
            for sub, array in arrays.items():
                path = out / sub / f"{stem}.png"
                created.append(path)
                try:
                    Image.fromarray(array).save(path)
                except OSError as exc:
                    if write_reason(exc) is None:
                        raise
                    raise WriteError(f"{path}: cannot write ({write_reason(exc)})") from None
    except BaseException:
        _remove_created(created)
        raise
    return stems


def _remove_created(created: list[Path]) -> None:
    """Remove, newest first, the files and (then empty) folders a failed run made."""
    for path in reversed(created):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # only if empty: never takes anything else with it
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass
