"""Train/validation/test splits: the dataset's own, or a seeded split written beside a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vessel_lens.data.index import SPLIT_NAMES, DatasetIndex
from vessel_lens.errors import ConfigError, DataError


def seeded_split(
    stems: list[str], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> dict[str, list[str]]:
    """Split ``stems`` at random into train/val/test by ``fractions`` (reproducible by ``seed``).

    Every split gets at least one stem when there are at least three stems.

    Examples:
        >>> from vessel_lens.data import seeded_split
        >>> splits = seeded_split([f"img{i}" for i in range(10)], (0.6, 0.2, 0.2), seed=0)
        >>> {name: len(stems) for name, stems in splits.items()}
        {'train': 6, 'val': 2, 'test': 2}
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"split fractions {fractions} must be three non-negative numbers summing to 1"
        )
    if not stems:
        raise DataError("cannot split an empty dataset")
    order = sorted(stems)
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    n = len(order)
    n_val = round(fractions[1] * n)
    n_test = round(fractions[2] * n)
    if n >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    n_train = max(n - n_val - n_test, 1)
    n_val = min(n_val, n - n_train)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val : n_train + n_val + n_test],
    }


def resolve_splits(
    index: DatasetIndex,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> tuple[dict[str, list[str]], str]:
    """Return the splits to use and where they came from (``"dataset"`` or ``"seeded"``).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import index_dataset, resolve_splits, write_synthetic_dataset
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = write_synthetic_dataset(Path(folder), count=5, size=32, progress=False)
        ...     splits, origin = resolve_splits(index_dataset(folder))
        >>> origin, {name: len(stems) for name, stems in splits.items()}
        ('seeded', {'train': 3, 'val': 1, 'test': 1})
    """
    if index.splits:
        splits = {name: list(index.splits.get(name, [])) for name in SPLIT_NAMES}
        return splits, "dataset"
    return seeded_split(index.stems, fractions, seed), "seeded"


def write_splits(splits: dict[str, list[str]], folder: Path) -> None:
    """Write ``folder/train.txt``, ``val.txt`` and ``test.txt``: one image stem per line.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import write_splits
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     write_splits({"train": ["a", "b"], "val": ["c"], "test": ["d"]}, Path(folder))
        ...     print((Path(folder) / "train.txt").read_text(), end="")
        a
        b
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        (folder / f"{name}.txt").write_text("".join(f"{s}\n" for s in splits.get(name, [])))


def read_splits(folder: Path) -> dict[str, list[str]]:
    return {
        name: [s for s in (folder / f"{name}.txt").read_text().split() if s]
        for name in SPLIT_NAMES
        if (folder / f"{name}.txt").exists()
    }


def split_stems(index: DatasetIndex, split: str | None, seed: int = 0) -> list[str]:
    """Stems of one split (``None`` or ``"all"`` means every sample).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import index_dataset, split_stems, write_synthetic_dataset
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = write_synthetic_dataset(Path(folder), count=5, size=32, progress=False)
        ...     index = index_dataset(folder)
        >>> len(split_stems(index, "all")), len(split_stems(index, "test"))
        (5, 1)
    """
    if split in (None, "all"):
        return index.stems
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r}: use one of train, val, test, all")
    splits, _ = resolve_splits(index, seed=seed)
    stems = splits.get(split, [])
    if not stems:
        raise DataError(f"{index.root}: split {split!r} is empty")
    return stems
