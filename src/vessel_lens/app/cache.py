"""A thread-safe LRU cache bounded by entry count and by memory.

The app serves several browser tabs from one process, so every cache of models, prepared
Jacobian engines and gradient maps is one of these: the least recently used entries are dropped
once either bound is exceeded (an entry larger than the whole memory bound is returned but not
kept). :meth:`LRUCache.get_or_create` builds a missing value once even when several requests
ask for it at the same time.

A cache may also count against the app's overall memory budget
(:class:`~vessel_lens.app.work.WorkQueue`): the queue then drops the entries used least
recently across all its caches to make room for new work. Entries in use by a long
computation are *pinned* (:meth:`LRUCache.pinned`) and never dropped while pinned, so the
bytes the caches report are the bytes they hold.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn


def nbytes(value: Any) -> int:
    """Memory held by a tensor, an array, or a tuple/list/dict of them (other values: 0)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    size = getattr(value, "nbytes", None)
    return int(size) if isinstance(size, (int, np.integer)) else 0


def held_bytes(obj: Any, limit: int = 12) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` through containers and
    object attributes (models are skipped: they are shared, not held). Used to size cache
    entries such as Jacobian engines, whose recorded forward pass is many tensors."""
    seen: set[int] = set()
    storages: dict[int, int] = {}

    def visit(item: Any, depth: int) -> None:
        if id(item) in seen or depth > limit:
            return
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return
        if isinstance(item, (nn.Module, str, bytes, int, float, bool, type)) or item is None:
            return
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        elif hasattr(item, "__dict__"):
            children = list(vars(item).values())
        else:
            children = [getattr(item, name, None) for name in getattr(item, "__slots__", ())]
        for child in children:
            visit(child, depth + 1)

    visit(obj, 0)
    return sum(storages.values())


class _Pending:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


_TICKS = itertools.count()
"""One clock for every cache, so that the least recently used entry of several is known."""


class LRUCache:
    """At most ``max_items`` entries and ``max_bytes`` bytes (as measured by ``size_of``)."""

    def __init__(
        self,
        max_items: int,
        max_bytes: int | None = None,
        size_of: Callable[[Any], int] = nbytes,
    ):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._used: dict[Hashable, int] = {}
        self._pins: Counter = Counter()
        self._pending: dict[Hashable, _Pending] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.on_put: Callable[[], None] | None = None
        """Called after every insertion (outside the lock): the budget's chance to settle."""

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def snapshot(self) -> list[tuple[Hashable, Any]]:
        """(key, value) pairs, least recently used first (does not count as a use)."""
        with self._lock:
            return [(key, entry[0]) for key, entry in self._data.items()]

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return default
            self._touch(key)
            self.hits += 1
            return entry[0]

    def _touch(self, key: Hashable) -> None:
        self._data.move_to_end(key)
        self._used[key] = next(_TICKS)

    def put(self, key: Hashable, value: Any) -> Any:
        size = int(self.size_of(value))
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if self.max_bytes is not None and size > self.max_bytes:
                # kept alone rather than rebuilt on every use: the budget is exceeded by at
                # most this one value, which is in memory while it is used anyway
                for other in [k for k in self._data if not self._pins[k]]:
                    self._remove(other)
            self._data[key] = (value, size)
            self._touch(key)
            self.bytes += size
            self._evict()
        if self.on_put is not None:
            self.on_put()
        return value

    def _remove(self, key: Hashable) -> int:
        _, size = self._data.pop(key)
        self._used.pop(key, None)
        self.bytes -= size
        return size

    def _evict(self) -> None:
        for key in list(self._data):
            over_count = len(self._data) > self.max_items
            over_bytes = self.max_bytes is not None and self.bytes > self.max_bytes
            if not (over_count or over_bytes) or len(self._data) <= 1:
                return
            if not self._pins[key]:
                self._remove(key)

    def oldest(self) -> tuple[int, Hashable] | None:
        """(last use, key) of the least recently used entry that is not pinned, or None."""
        with self._lock:
            for key in self._data:
                if not self._pins[key]:
                    return self._used[key], key
        return None

    def drop(self, key: Hashable) -> int:
        """Drop an entry unless it is pinned; returns the bytes it held (0 if none)."""
        with self._lock:
            if key not in self._data or self._pins[key]:
                return 0
            return self._remove(key)

    @contextlib.contextmanager
    def pinned(self, key: Hashable, factory: Callable[[], Any]) -> Iterator[Any]:
        """The value for ``key`` (built by ``factory`` if missing), kept in the cache while
        the block runs: a long computation's input stays counted where it is held."""
        value = self.get_or_create(key, factory)
        with self._lock:
            self._pins[key] += 1
            missing = key not in self._data
        try:
            if missing:  # dropped between the build and the pin: count it again
                self.put(key, value)
            yield value
        finally:
            with self._lock:
                self._pins[key] -= 1
                if not self._pins[key]:
                    del self._pins[key]

    def pop(self, key: Hashable) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            value = self._data[key][0]
            self._remove(key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._used.clear()
            self.bytes = 0

    def get_or_create(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        """The cached value, or ``factory()`` stored; concurrent callers share one build."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._touch(key)
                self.hits += 1
                return entry[0]
            self.misses += 1
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
        if not owner:
            pending.event.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        try:
            pending.value = self.put(key, factory())
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.event.set()
        return pending.value
