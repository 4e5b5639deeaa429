"""Jacobian rows on disk: one zarr v3 store per image, chunked by rows, resumable.

Layout of ``<stem>.zarr``::

    jacobian      (N, C, H, W)  float32 | float16 | uint8, one zarr chunk per block of rows
    chunk_min     (chunks,)     float32, uint8 stores only: the block's minimum ...
    chunk_max     (chunks,)     ... and maximum; a value is min + q * (max - min) / 255
    done          (chunks,)     int64, the store's generation once the block (and its scale)
                                is written, 0 before; created last, so a store without it was
                                never finished being set up
    pixels        (N,)          int64 flat output-pixel index of each row
    probability   (H, W)        float32 probability of the target class (sigmoid: one channel)
    image         (C, H, W)     float32 the input the rows are taken with respect to
    attributes                  how the rows were computed (model, checkpoint, image, crop box,
                                output, target class, dtype, ...)

zarr writes every chunk file atomically (a temporary file renamed into place) and ``done``
has one element per zarr chunk, so a block counts as finished only after its data and scale
are on disk: a run killed mid-block leaves that block's flag absent (read as 0) and the block
is recomputed. Metadata is written once, at creation.

Each creation draws a random ``generation``, kept in the attributes and written as the ``done``
flag of every block. A writer that opened the store before another run re-created it (with
``--overwrite``) marks its blocks with the old generation, so they are told apart: they count as
not done (a rerun computes them again) and :func:`load_jacobian` refuses the store. Stores from
before generations (``done`` of uint8 ones) are read as before.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vessel_lens.errors import DataError

STORAGE_DTYPES = ("float32", "float16", "uint8")
FORMAT = "vessel-lens-jacobian"
LAZY_BYTES = 1 << 30
"""Stores whose float32 rows exceed this are loaded lazily (:class:`LazyRows`)."""


class UnfinishedCreation(DataError):
    """The store's ``done`` array (created last) is missing: nothing in it was computed."""


class JacobianStore:
    """A store opened for writing blocks of rows (see the module docs for the layout)."""

    def __init__(self, path: Path, group: Any):
        self.path = Path(path)
        self.group = group
        self.attrs = dict(group.attrs)
        self.rows = int(self.attrs["rows"])
        self.chunk_rows = int(self.attrs["chunk_rows"])
        self.dtype = str(self.attrs["dtype"])
        self.chunks = -(-self.rows // self.chunk_rows)
        self.generation = int(self.attrs.get("generation", 0))
        """Random id of this creation of the store (0: a store from before generations)."""

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        pixels: torch.Tensor,
        image: torch.Tensor,
        probability: torch.Tensor,
        source_shape: tuple[int, ...],
        chunk_rows: int,
        dtype: str,
        attrs: dict[str, Any],
        replace: bool = False,
    ) -> JacobianStore:
        """Write a fresh store with no rows done; an existing one at ``path`` is deleted only
        with ``replace`` (the caller decides whether it may be)."""
        import zarr

        if dtype not in STORAGE_DTYPES:
            raise DataError(f"storage dtype {dtype!r}: choose one of {', '.join(STORAGE_DTYPES)}")
        path = Path(path)
        if path.exists():
            if not replace:
                raise DataError(f"{path}: already exists")
            if not path.is_dir() or path.is_symlink():
                raise DataError(f"{path}: exists and is not a Jacobian store folder; not replaced")
            shutil.rmtree(path)
        rows = len(pixels)
        chunks = max(1, -(-rows // chunk_rows))
        full = {
            **attrs,
            "generation": secrets.randbelow(2**62) + 1,
            "format": FORMAT,
            "rows": rows,
            "chunk_rows": int(chunk_rows),
            "dtype": dtype,
            "source_shape": list(source_shape),
        }
        group = zarr.open_group(str(path), mode="w", attributes=full)
        group.create_array(
            "jacobian",
            shape=(rows, *source_shape),
            chunks=(chunk_rows, *source_shape),
            dtype=dtype,
            fill_value=0,
        )
        if dtype == "uint8":
            for name in ("chunk_min", "chunk_max"):
                group.create_array(
                    name, shape=(chunks,), chunks=(1,), dtype="float32", fill_value=0
                )
        for name, value in (("pixels", pixels), ("probability", probability), ("image", image)):
            array = value.detach().cpu().numpy()
            stored = group.create_array(name, shape=array.shape, dtype=array.dtype, fill_value=0)
            stored[...] = array
        group.create_array("done", shape=(chunks,), chunks=(1,), dtype="int64", fill_value=0)
        return cls(path, group)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r+") -> JacobianStore:
        """Open an existing store; :class:`DataError` if it is not one."""
        import zarr

        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode=mode)
            if dict(group.attrs).get("format") != FORMAT:
                raise DataError(f"{path}: not a vessel-lens Jacobian store")
            names = set(group.array_keys())
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"{path}: not a readable Jacobian store ({type(exc).__name__})"
            ) from None
        if "done" not in names:
            raise UnfinishedCreation(f"{path}: was interrupted while being created")
        return cls(path, group)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(self.rows, start + self.chunk_rows)

    def _flags(self) -> np.ndarray:
        return np.asarray(self.group["done"][:]).astype(np.int64)

    def done(self) -> np.ndarray:
        """Per block: finished by a writer of this generation (bool array of ``chunks``)."""
        flags = self._flags()
        return flags == self.generation if self.generation else flags != 0

    def foreign(self) -> np.ndarray:
        """Per block: written by a writer of another generation of the store (see the module
        docs): its rows are not this store's."""
        flags = self._flags()
        if not self.generation:
            return np.zeros(len(flags), dtype=bool)
        return (flags != 0) & (flags != self.generation)

    @property
    def complete(self) -> bool:
        return bool(self.done().all())

    def pixels(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.group["pixels"][:]))

    def write(self, chunk: int, rows: torch.Tensor) -> None:
        """Store one block of rows (float values), then mark it done."""
        start, stop = self.bounds(chunk)
        if rows.shape[0] != stop - start:
            raise ValueError(f"block {chunk} holds {stop - start} rows, got {rows.shape[0]}")
        values = rows.detach().float().cpu()
        if self.dtype == "uint8":
            low, high, step = _uint8_scale(float(values.min()), float(values.max()))
            data = torch.round((values - low) / step).clamp_(0, 255).to(torch.uint8).numpy()
            self.group["chunk_min"][chunk] = np.float32(low)
            self.group["chunk_max"][chunk] = np.float32(high)
        else:
            data = values.numpy().astype(self.dtype)
        self.group["jacobian"][start:stop] = data
        self.group["done"][chunk] = self.generation or 1


def _uint8_scale(low: float, high: float) -> tuple[float, float, float]:
    """(low, high, step) of a block's 256 levels. When the block holds both signs the range is
    widened a little so that one level is exactly 0: gradients that are exactly zero (outside
    a receptive field) stay zero. The error bound, half a step, follows the stored range."""
    if high <= low:
        return low, high, 1.0
    step = (high - low) / 255
    if low < 0 < high:
        zero = min(max(round(-low / step), 1), 254)
        step = max(-low / zero, high / (255 - zero))
        low = -zero * step
        high = low + 255 * step
    return low, high, step


def _dequantize(store: JacobianStore, start: int, stop: int) -> torch.Tensor:
    raw = np.asarray(store.group["jacobian"][start:stop])
    if store.dtype != "uint8":
        return torch.from_numpy(raw.astype(np.float32))
    first, last = start // store.chunk_rows, (stop - 1) // store.chunk_rows
    low = np.asarray(store.group["chunk_min"][first : last + 1], dtype=np.float64)
    high = np.asarray(store.group["chunk_max"][first : last + 1], dtype=np.float64)
    block = (np.arange(start, stop) // store.chunk_rows) - first
    step = np.where(high > low, (high - low) / 255, 0.0)
    shape = (-1,) + (1,) * (raw.ndim - 1)
    values = low[block].reshape(shape) + raw.astype(np.float64) * step[block].reshape(shape)
    # The level the writer placed on 0 (see _uint8_scale) is read as exactly 0 rather than as
    # 0 plus the rounding of the stored float32 range.
    zero_code = np.where(
        (low <= 0) & (high >= 0) & (step > 0), np.round(-low / np.where(step > 0, step, 1)), -1
    )
    values[raw == zero_code[block].reshape(shape)] = 0.0
    return torch.from_numpy(values.astype(np.float32))


class LazyRows:
    """Rows of a large store, read on indexing: ``rows[i]``, ``rows[a:b]`` (float32 tensors)."""

    def __init__(self, store: JacobianStore):
        self.store = store
        self.shape = (store.rows, *store.attrs["source_shape"])
        self.dtype = torch.float32

    def __len__(self) -> int:
        return self.store.rows

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        if isinstance(index, slice):
            positions = range(self.store.rows)[index]
            if len(positions) == 0:
                return torch.empty((0, *self.shape[1:]))
            first, last = min(positions), max(positions)
            block = _dequantize(self.store, first, last + 1)
            return block[torch.tensor([p - first for p in positions])]
        position = range(self.store.rows)[index]
        return _dequantize(self.store, position, position + 1)[0]

    def to_tensor(self) -> torch.Tensor:
        return _dequantize(self.store, 0, self.store.rows)


@dataclass
class _Summary:
    max_relative_error: float | None
    max_abs: float


def _quantisation(store: JacobianStore) -> _Summary:
    if store.dtype != "uint8":
        return _Summary(None, float("nan"))
    low = np.asarray(store.group["chunk_min"][:], dtype=np.float64)
    high = np.asarray(store.group["chunk_max"][:], dtype=np.float64)
    largest = float(np.maximum(np.abs(low), np.abs(high)).max(initial=0.0))
    half_step = float(((high - low) / 510).max(initial=0.0))
    return _Summary(half_step / largest if largest > 0 else 0.0, largest)


def load_jacobian(
    path: str | Path, *, lazy: bool | None = None, allow_incomplete: bool = False
) -> tuple[torch.Tensor | LazyRows, dict[str, Any]]:
    """Read a store: (rows (N, C, H, W) float32, metadata).

    ``rows`` is a tensor, or a :class:`LazyRows` when ``lazy`` (default: when the rows exceed
    1 GiB as float32). Metadata holds the store's attributes plus ``pixels`` (N, 2) (row, col),
    ``probability`` (H, W), ``image`` (C, H, W), ``done`` (fraction of blocks finished) and
    ``max_relative_error``: for uint8 stores the largest quantisation error (half a step)
    relative to the largest |value|, else ``None``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import write_synthetic_dataset
        >>> from vessel_lens.interpret import load_jacobian
        >>> from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_synthetic_dataset(folder / "data", count=1, size=32, progress=False)
        >>> config = ExtractConfig("vessmap-w16", folder / "grads", data=str(folder / "data"),
        ...                        split="all", crop=16, progress=False)
        >>> _ = extract_jacobians(config)  # what `vessel-lens jacobian` does
        >>> rows, metadata = load_jacobian(folder / "grads" / "synth0000.zarr")
        >>> rows.shape, metadata["pixels"].shape, metadata["done"]  # every pixel of the crop
        (torch.Size([256, 1, 16, 16]), torch.Size([256, 2]), 1.0)
        >>> import shutil
        >>> shutil.rmtree(folder)
    """
    store = JacobianStore.open(path, mode="r")
    foreign = store.foreign()
    if foreign.any():
        raise DataError(
            f"{store.path}: {int(foreign.sum())} of {len(foreign)} blocks were written by another "
            "run than the one that created the store (two runs wrote into it at once); rerun the "
            "command that wrote it to compute them again"
        )
    done = store.done()
    if not done.all() and not allow_incomplete:
        raise DataError(
            f"{store.path}: incomplete ({int(done.sum())} of {len(done)} blocks written); "
            "rerun the command that wrote it to resume"
        )
    probability = torch.from_numpy(np.asarray(store.group["probability"][...]))
    width = int(probability.shape[-1])
    flat = store.pixels()
    metadata = {
        **store.attrs,
        "pixels": torch.stack([flat // width, flat % width], 1),
        "probability": probability,
        "image": torch.from_numpy(np.asarray(store.group["image"][...])),
        "done": float(done.mean()) if len(done) else 1.0,
        "max_relative_error": _quantisation(store).max_relative_error,
    }
    if lazy is None:
        lazy = store.rows * int(np.prod(store.attrs["source_shape"])) * 4 > LAZY_BYTES
    rows = LazyRows(store) if lazy else LazyRows(store).to_tensor()
    return rows, metadata
