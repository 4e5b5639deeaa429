"""Precomputed files given with ``--erf DIR``: Jacobian stores (``*.zarr``, written by
``vessel-lens jacobian``) and receptive-field map files (``*.erf.npz``, written by
``vessel-lens erf``). The folder may hold either kind or both.

A file is used for an image when it was computed with the same weights (``weights_hash``),
for the vessel probability of class 1, on the same crop as the current view. A store then
supplies the stored gradient rows (no recomputation), the exact global maximum (when it holds
every pixel of the crop), and the per-pixel count map of thresholded gradients — the original
app's "most significant pixels" map — when it is small enough to hold in memory. A map file
supplies the receptive-field layers of the map panel (count, fulfillment and mass radius at
its stored fractions). Files that cannot be read are logged, listed in ``problems`` and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vessel_lens.app.cache import LRUCache, held_bytes
from vessel_lens.errors import DataError
from vessel_lens.interpret.provenance import image_hash
from vessel_lens.interpret.thresholds import check_fraction, gradient_magnitude, threshold_value

log = logging.getLogger(__name__)

IN_MEMORY_BYTES = 512 * 2**20
"""Stores whose float32 rows fit this are loaded whole (count maps need every row)."""


@dataclass(frozen=True)
class StoredJacobian:
    """One store's metadata, read once at start-up."""

    path: Path
    name: str
    stem: str
    crop_box: tuple[int, int, int, int]
    weights_hash: str
    model_name: str
    output: str
    target_class: int
    complete: bool
    rows: int
    source_shape: tuple[int, ...]
    image_hash: str

    @property
    def full(self) -> bool:
        """Whether it holds every output pixel of its crop (needed for exact global maxima)."""
        return self.rows == self.crop_box[2] * self.crop_box[3]

    @property
    def row_bytes(self) -> int:
        return self.rows * int(np.prod(self.source_shape)) * 4


def _matches(
    entry, stem: str, box: tuple[int, ...], weights_hash: str | None, image_hash: str | None
) -> bool:
    """Whether a stored file (store or map file) is of this image and crop (the same pixel
    values, not only the same name), made with these weights, for the vessel probability
    (class 1): the quantity the app differentiates."""
    return (
        entry.stem == stem
        and entry.crop_box == tuple(box)
        and (image_hash is None or entry.image_hash == image_hash)
        and weights_hash is not None
        and entry.weights_hash == weights_hash
        and entry.output == "probability"
        and entry.target_class == 1
    )


def _first_match(entries: Iterable, stem, box, weights_hash, image_hash):
    """The first of ``entries`` that :func:`_matches` the view, or None."""
    return next((e for e in entries if _matches(e, stem, box, weights_hash, image_hash)), None)


def _index(paths: Iterable[Path], read: Callable[[Path], object]) -> tuple[list, list[str]]:
    """``read`` of each path, and a line per path that could not be read (logged, skipped)."""
    entries, problems = [], []
    for path in paths:
        try:
            entries.append(read(path))
        except (DataError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"{path.name}: {exc}")
    for problem in problems:
        log.warning("--erf: skipped %s", problem)
    return entries, problems


def _box(value: object) -> tuple[int, int, int, int]:
    box = tuple(int(v) for v in value)
    if len(box) != 4:
        raise ValueError(f"crop_box {value!r} is not (top, left, height, width)")
    return box


@dataclass
class _Loaded:
    rows: object
    lookup: torch.Tensor
    nbytes: int


class StoreIndex:
    """The stores found in one folder (each ``*.zarr`` child; unreadable ones are listed in
    ``problems`` and skipped)."""

    def __init__(
        self,
        folder: Path | None,
        cache_bytes: int = 2 * IN_MEMORY_BYTES,
        admit: Callable[[int, str], AbstractContextManager] | None = None,
    ):
        """``admit(bytes, what)``: a context reserving memory while a store is loaded (the
        app's work queue); stores larger than ``cache_bytes`` are read lazily."""
        self.folder = folder
        self.stores: list[StoredJacobian] = []
        self.problems: list[str] = []
        self._loaded = LRUCache(4, cache_bytes)
        self._in_memory = min(IN_MEMORY_BYTES, cache_bytes)
        self._admit = admit
        self._max: dict[Path, float] = {}
        self._lock = threading.Lock()
        if folder is not None:
            self._scan(Path(folder))

    def _scan(self, folder: Path) -> None:
        self.stores, self.problems = _index(sorted(folder.glob("*.zarr")), self._read)

    @staticmethod
    def _read(path: Path) -> StoredJacobian:
        from vessel_lens.interpret.jacobian.store import JacobianStore

        store = JacobianStore.open(path, mode="r")
        attrs = store.attrs
        return StoredJacobian(
            path=path,
            name=path.name[: -len(".zarr")],
            stem=str(attrs.get("stem", path.stem)),
            crop_box=_box(attrs["crop_box"]),
            weights_hash=str(attrs.get("weights_hash", "")),
            model_name=str(attrs.get("model_name", "")),
            output=str(attrs.get("output", "")),
            target_class=int(attrs.get("target_class", -1)),
            complete=store.complete,
            rows=store.rows,
            source_shape=tuple(int(v) for v in attrs["source_shape"]),
            image_hash=str(attrs.get("image_hash", ""))
            or image_hash(torch.from_numpy(np.asarray(store.group["image"][...], np.float32))),
        )

    def for_stem(self, stem: str) -> list[StoredJacobian]:
        return [s for s in self.stores if s.stem == stem]

    def match(
        self,
        stem: str,
        box: tuple[int, int, int, int],
        weights_hash: str | None,
        image_hash: str | None = None,
    ) -> StoredJacobian | None:
        """A finished store of this image and crop, computed with these weights (and, when
        ``image_hash`` is given, from these pixel values)."""
        finished = (s for s in self.stores if s.complete)
        return _first_match(finished, stem, box, weights_hash, image_hash)

    def _load(self, store: StoredJacobian) -> _Loaded:
        def load() -> _Loaded:
            needed = store.row_bytes if self.in_memory(store) else 0
            if self._admit is None:
                return read()
            with self._admit(needed + 16 * 2**20, f"loading store {store.name}"):
                return read()

        def read() -> _Loaded:
            from vessel_lens.interpret.jacobian.store import load_jacobian

            rows, meta = load_jacobian(store.path, lazy=not self.in_memory(store))
            height, width = store.crop_box[2], store.crop_box[3]
            pixels = meta["pixels"]
            lookup = torch.full((height * width,), -1, dtype=torch.long)
            lookup[pixels[:, 0] * width + pixels[:, 1]] = torch.arange(len(pixels))
            size = store.row_bytes if isinstance(rows, torch.Tensor) else 0
            return _Loaded(rows, lookup, size)

        return self._loaded.get_or_create(store.path, load)

    def image(self, store: StoredJacobian) -> torch.Tensor:
        from vessel_lens.interpret.jacobian.store import JacobianStore

        group = JacobianStore.open(store.path, mode="r").group
        return torch.from_numpy(np.asarray(group["image"][...], dtype=np.float32))

    def row(self, store: StoredJacobian, row: int, col: int) -> torch.Tensor | None:
        """The stored gradient (C, H, W) of output pixel (row, col) of the crop, if stored."""
        loaded = self._load(store)
        index = int(loaded.lookup[row * store.crop_box[3] + col])
        return None if index < 0 else loaded.rows[index].float()

    @property
    def caches(self) -> tuple[LRUCache, ...]:
        """The caches holding loaded stores (to count them in the app's memory budget)."""
        return (self._loaded,)

    def in_memory(self, store: StoredJacobian) -> bool:
        return store.row_bytes <= self._in_memory

    def global_max(self, store: StoredJacobian) -> float | None:
        """Max |g| (channels summed) over the whole stored Jacobian; None unless it is full."""
        if not store.full:
            return None
        with self._lock:
            if store.path in self._max:
                return self._max[store.path]
        rows = self._load(store).rows
        best = 0.0
        for start in range(0, store.rows, 256):
            best = max(best, float(gradient_magnitude(rows[start : start + 256]).max()))
        with self._lock:
            self._max[store.path] = best
        return best

    def count_map(
        self, store: StoredJacobian, fraction: float, mode: str, global_max: float | None
    ) -> np.ndarray | None:
        """count(p) for every stored pixel p (NaN elsewhere); None when the store is too big."""
        check_fraction(fraction, mode)
        if not self.in_memory(store):
            return None
        loaded = self._load(store)
        height, width = store.crop_box[2], store.crop_box[3]
        counts = np.full(height * width, np.nan, dtype=np.float32)
        present = torch.nonzero(loaded.lookup >= 0).flatten()
        for start in range(0, len(present), 512):
            flat = present[start : start + 512]
            magnitude = gradient_magnitude(loaded.rows[loaded.lookup[flat]])
            if mode == "pixel":
                peak = magnitude.flatten(1).amax(1)
                limit = fraction * peak
            else:
                limit = torch.full(
                    (len(flat),), threshold_value(magnitude[0], fraction, mode, global_max)
                )
            above = (magnitude > limit[:, None, None]).flatten(1).sum(1)
            counts[flat.numpy()] = above.float().numpy()
        return counts.reshape(height, width)


@dataclass(frozen=True)
class StoredMaps:
    """One receptive-field map file's header (``<stem>.erf.npz``), read once at start-up."""

    path: Path
    name: str
    stem: str
    crop_box: tuple[int, int, int, int]
    weights_hash: str
    output: str
    target_class: int
    fractions: tuple[float, ...]
    mode: str
    channels: str
    mass_fractions: tuple[float, ...]
    image_hash: str


class MapIndex:
    """The receptive-field map files found in one folder (each ``*.erf.npz``; unreadable ones
    are listed in ``problems`` and skipped). Loaded maps are kept in a small LRU cache."""

    def __init__(self, folder: Path | None, cache_bytes: int = IN_MEMORY_BYTES):
        self.folder = folder
        self.maps: list[StoredMaps] = []
        self.problems: list[str] = []
        self._loaded = LRUCache(4, cache_bytes, size_of=held_bytes)
        if folder is not None:
            from vessel_lens.interpret.fields.store import find_receptive_field_maps

            self.maps, self.problems = _index(find_receptive_field_maps(folder), self._read)

    @staticmethod
    def _read(path: Path) -> StoredMaps:
        from vessel_lens.interpret.fields.store import SUFFIX, read_erf_metadata

        header = read_erf_metadata(path)
        name = path.name[: -len(SUFFIX)]
        return StoredMaps(
            path=path,
            name=name,
            stem=str(header.get("stem", name)),
            crop_box=_box(header["crop_box"]),
            weights_hash=str(header.get("weights_hash", "")),
            output=str(header.get("output", "")),
            target_class=int(header.get("target_class", -1)),
            fractions=tuple(float(f) for f in header["fractions"]),
            mode=str(header["mode"]),
            channels=str(header.get("channels", "sum")),
            mass_fractions=tuple(float(f) for f in header.get("mass_fractions", ())),
            image_hash=str(header.get("image_hash", "")),  # files without one never match
        )

    def for_stem(self, stem: str) -> list[StoredMaps]:
        return [m for m in self.maps if m.stem == stem]

    def match(
        self,
        stem: str,
        box: tuple[int, int, int, int],
        weights_hash: str | None,
        image_hash: str | None = None,
    ) -> StoredMaps | None:
        """The map file of this image and crop, computed with these weights (and, when
        ``image_hash`` is given, from these pixel values)."""
        return _first_match(self.maps, stem, box, weights_hash, image_hash)

    @property
    def caches(self) -> tuple[LRUCache, ...]:
        """The cache holding loaded map files (to count it in the app's memory budget)."""
        return (self._loaded,)

    def load(self, entry: StoredMaps):
        """The file's :class:`~vessel_lens.interpret.ReceptiveFieldMaps` (cached);
        :class:`DataError` when the file is damaged."""
        from vessel_lens.interpret.fields.store import load_receptive_field_maps

        return self._loaded.get_or_create(entry.path, lambda: load_receptive_field_maps(entry.path))
