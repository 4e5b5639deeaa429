"""Precomputed stores given with ``--erf DIR``: Jacobian stores written by ``vessel-lens jacobian``.

A store is used for an image when it was computed with the same weights (``weights_hash``),
for the vessel probability of class 1, on the same crop as the current view. It then supplies
the stored gradient rows (no recomputation), the exact global maximum (when it holds every
pixel of the crop), and the per-pixel count map of thresholded gradients — the original app's
"most significant pixels" map — when it is small enough to hold in memory.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vessel_lens.app.cache import LRUCache
from vessel_lens.errors import DataError
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

    @property
    def full(self) -> bool:
        """Whether it holds every output pixel of its crop (needed for exact global maxima)."""
        return self.rows == self.crop_box[2] * self.crop_box[3]

    @property
    def row_bytes(self) -> int:
        return self.rows * int(np.prod(self.source_shape)) * 4


@dataclass
class _Loaded:
    rows: object
    lookup: torch.Tensor
    nbytes: int


class StoreIndex:
    """The stores found in one folder (each ``*.zarr`` child; unreadable ones are listed in
    ``problems`` and skipped)."""

    def __init__(self, folder: Path | None, cache_bytes: int = 2 * IN_MEMORY_BYTES):
        self.folder = folder
        self.stores: list[StoredJacobian] = []
        self.problems: list[str] = []
        self._loaded = LRUCache(4, cache_bytes)
        self._max: dict[Path, float] = {}
        self._lock = threading.Lock()
        if folder is not None:
            self._scan(Path(folder))

    def _scan(self, folder: Path) -> None:
        from vessel_lens.interpret.store import JacobianStore

        for path in sorted(folder.glob("*.zarr")):
            try:
                store = JacobianStore.open(path, mode="r")
                attrs = store.attrs
                self.stores.append(
                    StoredJacobian(
                        path=path,
                        name=path.name[: -len(".zarr")],
                        stem=str(attrs.get("stem", path.stem)),
                        crop_box=tuple(int(v) for v in attrs["crop_box"]),
                        weights_hash=str(attrs.get("weights_hash", "")),
                        model_name=str(attrs.get("model_name", "")),
                        output=str(attrs.get("output", "")),
                        target_class=int(attrs.get("target_class", -1)),
                        complete=store.complete,
                        rows=store.rows,
                        source_shape=tuple(int(v) for v in attrs["source_shape"]),
                    )
                )
            except (DataError, KeyError, TypeError, ValueError) as exc:
                self.problems.append(f"{path.name}: {exc}")
        for problem in self.problems:
            log.warning("--erf: skipped %s", problem)

    def for_stem(self, stem: str) -> list[StoredJacobian]:
        return [s for s in self.stores if s.stem == stem]

    def match(
        self, stem: str, box: tuple[int, int, int, int], weights_hash: str | None
    ) -> StoredJacobian | None:
        """A finished store of this image and crop, computed with these weights."""
        for store in self.for_stem(stem):
            if (
                store.complete
                and store.crop_box == tuple(box)
                and weights_hash is not None
                and store.weights_hash == weights_hash
                and store.output == "probability"
                and store.target_class == 1
            ):
                return store
        return None

    def _load(self, store: StoredJacobian) -> _Loaded:
        def load() -> _Loaded:
            from vessel_lens.interpret.store import load_jacobian

            rows, meta = load_jacobian(store.path, lazy=store.row_bytes > IN_MEMORY_BYTES)
            height, width = store.crop_box[2], store.crop_box[3]
            pixels = meta["pixels"]
            lookup = torch.full((height * width,), -1, dtype=torch.long)
            lookup[pixels[:, 0] * width + pixels[:, 1]] = torch.arange(len(pixels))
            size = store.row_bytes if isinstance(rows, torch.Tensor) else 0
            return _Loaded(rows, lookup, size)

        return self._loaded.get_or_create(store.path, load)

    def image(self, store: StoredJacobian) -> torch.Tensor:
        from vessel_lens.interpret.store import JacobianStore

        group = JacobianStore.open(store.path, mode="r").group
        return torch.from_numpy(np.asarray(group["image"][...], dtype=np.float32))

    def row(self, store: StoredJacobian, row: int, col: int) -> torch.Tensor | None:
        """The stored gradient (C, H, W) of output pixel (row, col) of the crop, if stored."""
        loaded = self._load(store)
        index = int(loaded.lookup[row * store.crop_box[3] + col])
        return None if index < 0 else loaded.rows[index].float()

    def in_memory(self, store: StoredJacobian) -> bool:
        return store.row_bytes <= IN_MEMORY_BYTES

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
