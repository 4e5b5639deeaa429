"""Filling a store's pending blocks with rows computed in backward passes of any size.

A store's blocks (its zarr chunks, the unit that is saved and resumed) are fixed when it is
created; how many rows one backward pass computes is chosen by each run. A pass covers whole
consecutive blocks when it is larger than a block and part of one block when it is smaller,
so passes line up with blocks the same way however the run was interrupted before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import groupby
from typing import Any

import torch

from vessel_lens.interpret.jacobian.store import JacobianStore


def consecutive(blocks: list[int], per_group: int) -> Iterator[list[int]]:
    """Runs of consecutive block numbers, at most ``per_group`` blocks each."""
    group: list[int] = []
    for block in blocks:
        if group and (block != group[-1] + 1 or len(group) == per_group):
            yield group
            group = []
        group.append(block)
    if group:
        yield group


def fill(
    store: JacobianStore,
    blocks: list[int],
    pixels: torch.Tensor,
    rows_of: Callable[[torch.Tensor], torch.Tensor],
    pass_rows: int,
    progress: Callable[[int], Any],
) -> int:
    """Compute and write ``blocks`` of ``store``; ``rows_of(flat pixels)`` is one backward
    pass. Returns the number of rows written."""
    written = 0
    for group in consecutive(blocks, max(1, pass_rows // store.chunk_rows)):
        first, stop = store.bounds(group[0])[0], store.bounds(group[-1])[1]
        parts = []
        for start in range(first, stop, pass_rows):
            end = min(stop, start + pass_rows)
            parts.append(rows_of(pixels[start:end]))
            progress(end - start)
        rows = parts[0] if len(parts) == 1 else torch.cat(parts)
        for block in group:
            begin, end = store.bounds(block)
            store.write(block, rows[begin - first : end - first])
            written += end - begin
    return written


def by_store(work: list[tuple[JacobianStore, int]]) -> list[tuple[JacobianStore, list[int]]]:
    """``(store, block)`` pairs grouped by store, in order."""
    return [
        (items[0][0], [block for _, block in items])
        for items in (list(group) for _, group in groupby(work, key=lambda item: id(item[0])))
    ]
