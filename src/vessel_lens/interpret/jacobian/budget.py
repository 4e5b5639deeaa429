"""What a Jacobian or receptive-field run will take, checked before anything is written.

Memory: a batched backward pass over ``--chunk-rows`` rows (estimated by
:meth:`~vessel_lens.interpret.JacobianEngine.pass_bytes`) and a stored block of rows held
while it is written must fit the memory available on the device. Disk: stores that would
take more than :data:`CONFIRM_BYTES` uncompressed need ``--yes``.

A store's block size is part of its layout (zarr writes whole chunks, and uint8 blocks carry
their own scale), so it is chosen from the store's geometry alone (:func:`default_block_rows`)
and never from how the rows are computed: the rows per backward pass, the device, the
strategy and the thread count may change from one run to the next.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vessel_lens.errors import ConfigError

CONFIRM_BYTES = 2 * 2**30
"""Stores larger than this (uncompressed) are only written with ``--yes``."""
BLOCK_BYTES = 64 * 2**20
"""Default size of a stored block as float32 rows."""
MAX_BLOCK_ROWS = 256
"""Default cap on the rows of a stored block (the unit of resuming and of uint8 scaling)."""
WRITE_COPIES = 3
"""A block is held as float32 rows plus up to two converted copies while it is written."""


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} TiB"  # pragma: no cover


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup (v2) limit, when it has one."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free for new allocations on ``device`` (``None`` when it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    room = _cgroup_room()
    if room is not None:
        free = room if free is None else min(free, room)
    return free


def check_memory(
    option: str, needed: int, device: torch.device | str, what: str, advice: str
) -> None:
    """Refuse ``option`` in one line when ``needed`` bytes exceed the available memory."""
    free = available_memory(device)
    if free is not None and needed > free:
        raise ConfigError(
            f"{option}: {what} would need about {format_bytes(needed)} of memory, but "
            f"{format_bytes(free)} is available on {torch.device(device)}; {advice}"
        )


def row_values(source_shape: tuple[int, ...]) -> int:
    return int(np.prod(source_shape))


def default_block_rows(rows: int, source_shape: tuple[int, ...]) -> int:
    """Rows per stored block: up to :data:`MAX_BLOCK_ROWS` and :data:`BLOCK_BYTES` of float32
    rows, whole image rows when a block spans several, and never more than the store holds."""
    width = int(source_shape[-1])
    block = min(MAX_BLOCK_ROWS, max(1, BLOCK_BYTES // (4 * row_values(source_shape))))
    if block >= width:
        block -= block % width
    return max(1, min(block, rows))


def block_write_bytes(block_rows: int, source_shape: tuple[int, ...]) -> int:
    """Memory held while one block of ``block_rows`` rows is written."""
    return WRITE_COPIES * 4 * block_rows * row_values(source_shape)


def store_bytes(rows: int, source_shape: tuple[int, ...], dtype: str) -> int:
    """Uncompressed size of a store's rows in storage type ``dtype``."""
    return rows * row_values(source_shape) * np.dtype(dtype).itemsize


def confirm_size(total: int, yes: bool, what: str, advice: str) -> None:
    """Refuse to start writing more than :data:`CONFIRM_BYTES` unless ``yes``."""
    if total > CONFIRM_BYTES and not yes:
        raise ConfigError(
            f"{what} would take up to {format_bytes(total)} on disk (uncompressed), more than "
            f"{format_bytes(CONFIRM_BYTES)}; pass --yes to write them, or {advice}"
        )
