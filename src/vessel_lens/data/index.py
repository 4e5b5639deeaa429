"""Finding the image/label/skeleton/mask files of a dataset: a VessMAP-like folder or a CSV
manifest.

A *folder* holds ``images/``, ``labels/``, optionally ``skeletons/``, ``masks/`` (field-of-view
masks) and ``splits/{train,val,test}.txt``; files are paired by stem. A *manifest* is a CSV file
with columns ``image,label`` and optionally ``skeleton``, ``mask`` and ``split``; paths are
relative to the CSV's folder (absolute paths are accepted too).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vessel_lens.data.io import is_image_file
from vessel_lens.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample. ``stem`` names the sample in outputs; ``mask`` is the field of
    view (non-zero inside)."""

    stem: str
    image: Path
    label: Path | None = None
    skeleton: Path | None = None
    mask: Path | None = None


@dataclass
class DatasetIndex:
    """All samples of a dataset and the dataset's own split, if it ships one."""

    root: Path
    kind: str
    samples: list[SampleFiles]
    splits: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_stem = {s.stem: s for s in self.samples}

    @property
    def stems(self) -> list[str]:
        return [s.stem for s in self.samples]

    @property
    def has_labels(self) -> bool:
        return all(s.label is not None for s in self.samples)

    @property
    def has_skeletons(self) -> bool:
        return all(s.skeleton is not None for s in self.samples)

    @property
    def has_masks(self) -> bool:
        return all(s.mask is not None for s in self.samples)

    def get(self, stem: str) -> SampleFiles:
        try:
            return self._by_stem[stem]
        except KeyError:
            raise DataError(f"{self.root}: no sample named {stem!r}") from None

    def select(self, stems: Iterable[str]) -> list[SampleFiles]:
        return [self.get(s) for s in stems]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not is_image_file(path):
            continue
        if path.stem in found:
            raise DataError(
                f"{folder}: duplicate stem {path.stem!r} ({found[path.stem].name} and {path.name})"
            )
        found[path.stem] = path
    return found


def _read_split_files(root: Path, stems: set[str]) -> dict[str, list[str]]:
    split_dir = root / "splits"
    if not split_dir.is_dir():
        return {}
    splits: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        path = split_dir / f"{name}.txt"
        if not path.exists():
            continue
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read split file ({exc})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        missing = [s for s in names if s not in stems]
        if missing:
            raise DataError(
                f"{path}: names {len(missing)} stem(s) with no image, first {missing[0]!r}"
            )
        repeated = sorted({s for s in names if names.count(s) > 1})
        if repeated:
            raise DataError(f"{path}: lists stem {repeated[0]!r} more than once")
        splits[name] = names
    seen: dict[str, str] = {}
    for name, names in splits.items():
        for stem in names:
            if stem in seen and seen[stem] != name:
                raise DataError(f"{split_dir}: stem {stem!r} is in both {seen[stem]} and {name}")
            seen[stem] = name
    return splits


def index_folder(root: Path) -> DatasetIndex:
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError(
            f"{root}: no images/ folder (expected images/, labels/[, skeletons/, masks/])"
        )
    images = _files_by_stem(image_dir)
    if not images:
        raise DataError(f"{image_dir}: folder holds no images")
    labels = _files_by_stem(root / "labels") if (root / "labels").is_dir() else {}
    partners = {
        kind: _files_by_stem(root / folder) if (root / folder).is_dir() else {}
        for kind, folder in (("label", "labels"), ("skeleton", "skeletons"), ("mask", "masks"))
    }
    for kind, files in partners.items():
        orphans = sorted(set(files) - set(images))
        if orphans:
            path = files[orphans[0]]
            raise DataError(f"{path}: {kind} has no image with stem {orphans[0]!r}")
        missing = sorted(set(images) - set(files))
        if files and missing:
            raise DataError(f"{images[missing[0]]}: image has no {kind} in {root / (kind + 's')}")
    labels, skeletons, masks = partners["label"], partners["skeleton"], partners["mask"]
    samples = [
        SampleFiles(stem, images[stem], labels.get(stem), skeletons.get(stem), masks.get(stem))
        for stem in sorted(images)
    ]
    return DatasetIndex(root, "folder", samples, _read_split_files(root, set(images)))


def _manifest_path(base: Path, value: str, csv_path: Path, row: int, column: str) -> Path:
    value = value.strip()
    if not value:
        raise DataError(f"{csv_path}: row {row} has an empty {column!r} entry")
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def index_manifest(csv_path: Path) -> DatasetIndex:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read manifest ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    for required in ("image", "label"):
        if required not in columns:
            raise DataError(
                f"{csv_path}: manifest has no {required!r} column (columns: "
                f"{', '.join(columns) or 'none'}; expected image,label[,skeleton][,mask][,split])"
            )
    base = csv_path.parent
    samples: list[SampleFiles] = []
    splits: dict[str, list[str]] = {}
    seen_images: dict[Path, int] = {}
    seen_stems: dict[str, int] = {}
    for row_number, raw_row in enumerate(reader, start=2):
        surplus = raw_row.pop(None, None) or []  # csv.DictReader's fields beyond the header
        if any(v.strip() for v in surplus):
            raise DataError(
                f"{csv_path}: row {row_number} has {len(columns) + len(surplus)} fields "
                f"but the header names {len(columns)} ({', '.join(columns)})"
            )
        row = {(k or "").strip().lower(): (v or "") for k, v in raw_row.items()}
        if not any(v.strip() for v in row.values()):
            continue
        image = _manifest_path(base, row["image"], csv_path, row_number, "image")
        label = _manifest_path(base, row["label"], csv_path, row_number, "label")
        skeleton, mask = (
            _manifest_path(base, row[column], csv_path, row_number, column)
            if row.get(column, "").strip()
            else None
            for column in ("skeleton", "mask")
        )
        key = image.resolve()
        if key in seen_images:
            raise DataError(
                f"{csv_path}: row {row_number} repeats image {row['image'].strip()!r} "
                f"(first on row {seen_images[key]})"
            )
        seen_images[key] = row_number
        stem = image.stem
        if stem in seen_stems:
            raise DataError(
                f"{csv_path}: row {row_number}: duplicate stem {stem!r} (first on row "
                f"{seen_stems[stem]}); image file names must be unique"
            )
        seen_stems[stem] = row_number
        samples.append(SampleFiles(stem, image, label, skeleton, mask))
        split = row.get("split", "").strip().lower()
        if split:
            if split not in SPLIT_NAMES:
                raise DataError(
                    f"{csv_path}: row {row_number} has split {split!r}; use train, val or test"
                )
            splits.setdefault(split, []).append(stem)
    if not samples:
        raise DataError(f"{csv_path}: manifest lists no samples")
    if splits and sum(len(v) for v in splits.values()) != len(samples):
        raise DataError(f"{csv_path}: the split column is empty on some rows; fill all or none")
    for column in ("skeleton", "mask"):
        given = [getattr(s, column) is not None for s in samples]
        if any(given) and not all(given):
            raise DataError(
                f"{csv_path}: the {column} column is empty on some rows; fill all or none"
            )
    return DatasetIndex(csv_path, "manifest", samples, splits)


def index_dataset(path: str | Path) -> DatasetIndex:
    """Index a dataset folder or CSV manifest; raise :class:`DataError` when it is unusable.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import index_dataset, write_synthetic_dataset
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = write_synthetic_dataset(Path(folder), count=4, size=32, progress=False)
        ...     index = index_dataset(folder)
        >>> index.kind, [files.stem for files in index.samples][:2]
        ('folder', ['synth0000', 'synth0001'])
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset not found")
    if path.is_dir():
        return index_folder(path)
    if path.suffix.lower() == ".csv":
        return index_manifest(path)
    raise DataError(f"{path}: not a dataset folder or a .csv manifest")
