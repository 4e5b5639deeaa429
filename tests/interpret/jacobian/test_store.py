"""Jacobian stores: round trips per storage type, the uint8 error bound, laziness, completeness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vessel_lens.errors import DataError
from vessel_lens.interpret import LazyRows, load_jacobian
from vessel_lens.interpret.jacobian.store import JacobianStore


def rows_like_a_jacobian(count: int = 10, seed: int = 0) -> torch.Tensor:
    """Blocks of very different magnitudes, one block constant, like real rows."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(count, 2, 5, 6, generator=generator)
    rows[:4] *= 1e-3
    rows[8:] = 0.25
    return rows


def write_store(path, rows, dtype, chunk_rows=4):
    pixels = torch.arange(len(rows)) * 3
    store = JacobianStore.create(
        path,
        pixels=pixels,
        image=torch.rand(2, 5, 6),
        probability=torch.rand(5, 6),
        source_shape=tuple(rows.shape[1:]),
        chunk_rows=chunk_rows,
        dtype=dtype,
        attrs={"model_name": "test", "output": "probability"},
    )
    for block in range(store.chunks):
        start, stop = store.bounds(block)
        store.write(block, rows[start:stop])
    return store


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_round_trip(tmp_path, dtype):
    rows = rows_like_a_jacobian()
    write_store(tmp_path / "a.zarr", rows, dtype)
    loaded, meta = load_jacobian(tmp_path / "a.zarr")
    assert loaded.dtype == torch.float32 and loaded.shape == rows.shape
    assert meta["dtype"] == dtype and meta["model_name"] == "test" and meta["done"] == 1.0
    assert torch.equal(
        meta["pixels"], torch.stack([torch.arange(10) * 3 // 6, torch.arange(10) * 3 % 6], 1)
    )
    assert meta["image"].shape == (2, 5, 6) and meta["probability"].shape == (5, 6)
    if dtype == "float32":
        assert torch.equal(loaded, rows) and meta["max_relative_error"] is None
    elif dtype == "float16":
        assert torch.equal(loaded, rows.half().float())
    else:
        error = (loaded - rows).abs().max()
        bound = meta["max_relative_error"] * rows.abs().max()
        assert 0 < error <= bound * (1 + 1e-5)
        assert error > 0.5 * bound
        assert torch.equal(loaded[8:], rows[8:])


def test_uint8_error_is_relative_to_each_blocks_range(tmp_path):
    """Half a level of each block's own range; a range holding both signs is widened (by at
    most half) so that 0 is a level, and the reported bound follows the stored range."""
    rows = rows_like_a_jacobian()
    store = write_store(tmp_path / "a.zarr", rows, "uint8")
    loaded, meta = load_jacobian(tmp_path / "a.zarr")
    low = np.asarray(store.group["chunk_min"][:], dtype=np.float64)
    high = np.asarray(store.group["chunk_max"][:], dtype=np.float64)
    half_steps = (high - low) / 510
    for block, part in enumerate(rows.split(4)):
        error = (loaded[4 * block : 4 * block + 4] - part).abs().max()
        assert error <= half_steps[block] * (1 + 1e-5)
        assert half_steps[block] <= 1.5 * float(part.max() - part.min()) / 510 * (1 + 1e-5)
    assert meta["max_relative_error"] == pytest.approx(
        float(half_steps.max() / rows.abs().max()), rel=1e-5
    )


def test_uint8_keeps_exact_zeros_within_the_error_bound(tmp_path):
    """Structural zeros (outside a receptive field) load as exactly 0, not as a small offset."""
    rows = rows_like_a_jacobian()
    rows[:, :, :2] = 0.0
    write_store(tmp_path / "a.zarr", rows, "uint8")
    loaded, _ = load_jacobian(tmp_path / "a.zarr")
    assert torch.equal(loaded[:, :, :2], torch.zeros_like(loaded[:, :, :2]))
    for block in range(3):
        part = slice(4 * block, 4 * block + 4)
        half_step = 1.5 * (rows[part].max() - rows[part].min()) / 510
        assert (loaded[part] - rows[part]).abs().max() <= half_step * (1 + 1e-5)


def test_lazy_rows_read_on_indexing(tmp_path):
    rows = rows_like_a_jacobian()
    write_store(tmp_path / "a.zarr", rows, "uint8")
    eager, _ = load_jacobian(tmp_path / "a.zarr")
    lazy, _ = load_jacobian(tmp_path / "a.zarr", lazy=True)
    assert isinstance(lazy, LazyRows) and len(lazy) == 10 and lazy.shape == (10, 2, 5, 6)
    assert torch.equal(lazy[3], eager[3]) and torch.equal(lazy[-1], eager[-1])
    assert torch.equal(lazy[2:9], eager[2:9]) and torch.equal(lazy[::3], eager[::3])
    assert torch.equal(lazy[::-1], eager.flip(0)) and torch.equal(lazy[8:2:-2], eager[[8, 6, 4]])
    assert lazy[5:5].shape == (0, 2, 5, 6)
    assert torch.equal(lazy.to_tensor(), eager)


def test_unfinished_blocks_are_not_read_as_finished(tmp_path):
    rows = rows_like_a_jacobian()
    store = write_store(tmp_path / "a.zarr", rows, "float32")
    store.group["done"][1] = 0
    reopened = JacobianStore.open(tmp_path / "a.zarr")
    assert reopened.done().tolist() == [True, False, True] and not reopened.complete
    with pytest.raises(DataError, match="incomplete"):
        load_jacobian(tmp_path / "a.zarr")
    partial, meta = load_jacobian(tmp_path / "a.zarr", allow_incomplete=True)
    assert meta["done"] == pytest.approx(2 / 3)
    assert torch.equal(partial[:4], rows[:4])


def test_fresh_store_has_nothing_done_and_refuses_to_replace(tmp_path):
    store = write_store(tmp_path / "a.zarr", rows_like_a_jacobian(), "float32")
    assert store.complete
    with pytest.raises(DataError, match="already exists"):
        write_store(tmp_path / "a.zarr", rows_like_a_jacobian(), "float32")
    empty = JacobianStore.create(
        tmp_path / "a.zarr",
        pixels=torch.arange(3),
        image=torch.zeros(1, 2, 2),
        probability=torch.zeros(2, 2),
        source_shape=(1, 2, 2),
        chunk_rows=2,
        dtype="float16",
        attrs={},
        replace=True,
    )
    assert not np.any(empty.done()) and empty.chunks == 2


def test_other_folders_are_not_stores(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain"):
        load_jacobian(tmp_path / "plain")
