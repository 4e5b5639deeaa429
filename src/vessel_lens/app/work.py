"""Admission of the app's computations: a bounded queue under one memory budget.

Every computation the server runs — preparing a view (the recorded forward pass), a hovered
pixel's backward pass, an attribution batch, a receptive field, an upload's decoding, a chunk
of the global maximum — first asks :class:`WorkQueue` for a *slot*, stating the bytes it
may use. The queue admits it when fewer than ``workers`` computations run and the bytes
reserved by the running ones, plus the bytes the registered caches hold, plus its own, fit
the budget; to make room it first drops the caches' least recently used entries. Requests
are served in their order of arrival. At most ``max_waiting`` wait: the next one is refused
at once (:class:`Busy`), and one that waited ``timeout`` seconds gives up (:class:`Busy`),
each with a message for the page. A request larger than the whole budget is refused
(:class:`OverBudget`).

A long computation (an attribution) runs in batches and calls :meth:`Slot.pause` between
them: if anyone is waiting, its worker goes to them and it queues again (keeping its
memory, so it may pass requests still waiting for memory), which keeps hovers answered
while integrated gradients runs. :meth:`Slot.pause` also raises :class:`Cancelled` once the
computation's cancel event is set.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vessel_lens.errors import VesselLensError

MIB = 2**20


class Busy(VesselLensError):
    """The queue is full, or a request waited longer than the queue's timeout."""


class OverBudget(VesselLensError):
    """A computation needs more memory than the whole budget."""


class Cancelled(VesselLensError):
    """The computation was cancelled (by the user, or because the server stops)."""


def mib(nbytes: float) -> str:
    """Bytes as the page shows them: '115 MiB', '1.9 GiB'."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    return f"{nbytes / MIB:.0f} MiB"


@dataclass(eq=False)
class _Ticket:
    nbytes: int
    what: str
    resuming: bool = False
    arrived: float = field(default_factory=time.monotonic)
    admitted: bool = False


class Slot:
    """A running computation's place: its worker and its reserved bytes."""

    def __init__(self, queue: WorkQueue, ticket: _Ticket, cancel: threading.Event | None):
        self._queue, self._ticket, self.cancel = queue, ticket, cancel

    @property
    def nbytes(self) -> int:
        return self._ticket.nbytes

    def check(self) -> None:
        """Raise :class:`Cancelled` if the computation was cancelled."""
        if (self.cancel is not None and self.cancel.is_set()) or self._queue.stopped:
            raise Cancelled(f"{self._ticket.what}: cancelled")

    def pause(self) -> None:
        """Between two batches: let a waiting request run first, then continue."""
        self.check()
        self._queue._yield_worker(self._ticket, self.cancel)
        self.check()


class WorkQueue:
    """At most ``workers`` computations at once within ``budget`` bytes (see the module)."""

    def __init__(
        self, workers: int, budget: int, max_waiting: int = 8, timeout: float = 60.0
    ) -> None:
        if workers < 1 or budget < 1 or max_waiting < 0 or timeout <= 0:
            raise ValueError("workers, budget and timeout must be positive")
        self.workers, self.budget = workers, int(budget)
        self.max_waiting, self.timeout = max_waiting, float(timeout)
        self._caches: list = []
        self._waiting: deque[_Ticket] = deque()
        self._running = 0
        self.reserved = 0
        self.peak_accounted = 0
        """Largest held + reserved bytes seen (what the budget promises to bound)."""
        self.refused = 0
        self.timed_out = 0
        self.stopped = False
        self._lock = threading.Condition()

    # -- what counts ------------------------------------------------------------------------

    def account(self, *caches) -> None:
        """Count these :class:`~vessel_lens.app.cache.LRUCache` s in the budget."""
        with self._lock:
            for cache in caches:
                self._caches.append(cache)
                cache.on_put = self._settle

    def held(self) -> int:
        """Bytes held by the registered caches."""
        return sum(cache.bytes for cache in self._caches)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(1 for t in self._waiting if not t.resuming)

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    def _free(self) -> int:
        return self.budget - self.reserved - self.held()

    def _make_room(self, nbytes: int) -> bool:
        """Drop least recently used cache entries until ``nbytes`` fit (lock held)."""
        while self._free() < nbytes:
            candidates = [(c.oldest(), c) for c in self._caches]
            candidates = [(found, c) for found, c in candidates if found is not None]
            if not candidates:
                return False
            (_, key), cache = min(candidates, key=lambda item: item[0][0])
            cache.drop(key)
        return True

    def _settle(self) -> None:
        """After a cache grew: drop old entries while the budget is exceeded."""
        with self._lock:
            self._make_room(0)
            self._note_peak()

    def _note_peak(self) -> None:
        self.peak_accounted = max(self.peak_accounted, self.reserved + self.held())

    # -- admission --------------------------------------------------------------------------

    def _head(self) -> _Ticket | None:
        """The ticket to admit next, if any can start now (lock held).

        New requests go in order of arrival; a resuming one (which holds its memory) may
        pass a new request that is still waiting for memory."""
        if self._running >= self.workers:
            return None
        blocked = False
        for ticket in self._waiting:
            if ticket.resuming:
                return ticket
            if blocked:
                continue
            if self._make_room(ticket.nbytes):
                return ticket
            blocked = True
        return None

    def _admit_ready(self) -> None:
        while (ticket := self._head()) is not None:
            self._waiting.remove(ticket)
            ticket.admitted = True
            self._running += 1
            if not ticket.resuming:
                self.reserved += ticket.nbytes
            ticket.resuming = False
            self._note_peak()
        self._lock.notify_all()

    def _wait_for(
        self, ticket: _Ticket, cancel: threading.Event | None, deadline: float | None
    ) -> None:
        """Wait until ``ticket`` is admitted (lock held); raise on timeout or cancel."""
        self._waiting.append(ticket)
        self._admit_ready()
        while not ticket.admitted:
            cancelled = (cancel is not None and cancel.is_set()) or self.stopped
            remaining = None if deadline is None else deadline - time.monotonic()
            if cancelled or (remaining is not None and remaining <= 0):
                self._waiting.remove(ticket)
                self._admit_ready()
                if cancelled:
                    raise Cancelled(f"{ticket.what}: cancelled")
                self.timed_out += 1
                raise Busy(
                    f"{ticket.what}: waited {self.timeout:.0f} s for the server "
                    f"({self._running} running, {len(self._waiting)} waiting); try again"
                )
            self._lock.wait(0.25 if remaining is None else min(remaining, 0.25))

    @contextlib.contextmanager
    def slot(
        self,
        nbytes: int,
        what: str,
        cancel: threading.Event | None = None,
        patient: bool = False,
    ) -> Iterator[Slot]:
        """Run the block as one computation of at most ``nbytes`` bytes (see the module).

        ``patient``: a step of a job that is bounded by its own queue (a chunk of the global
        maximum) is neither refused for a full queue nor timed out; it waits its turn."""
        nbytes = max(int(nbytes), 0)
        if nbytes > self.budget:
            raise OverBudget(
                f"{what} needs about {mib(nbytes)}, more than the app's whole memory budget "
                f"(--cache-mb {self.budget // MIB}); start the app with a larger --cache-mb"
            )
        ticket = _Ticket(nbytes, what)
        with self._lock:
            if self.stopped:
                raise Cancelled(f"{what}: the server is stopping")
            queued = sum(1 for t in self._waiting if not t.resuming)
            idle = self._running < self.workers and not self._waiting
            if not idle and not patient and queued >= self.max_waiting:
                self.refused += 1
                raise Busy(
                    f"{what}: the server is busy ({self._running} running, {queued} waiting, "
                    f"at most {self.max_waiting} may wait); try again in a moment"
                )
            self._wait_for(ticket, cancel, None if patient else time.monotonic() + self.timeout)
        try:
            yield Slot(self, ticket, cancel)
        finally:
            with self._lock:
                self._running -= 1
                self.reserved -= ticket.nbytes
                self._admit_ready()

    def _yield_worker(self, ticket: _Ticket, cancel: threading.Event | None) -> None:
        with self._lock:
            if not self._waiting:
                return
            self._running -= 1
            ticket.admitted, ticket.resuming = False, True
            try:
                self._wait_for(ticket, cancel, None)
            except Cancelled:
                self._running += 1  # released again when the caller's ``slot`` block ends
                raise

    def run(self, nbytes: int, what: str, compute: Callable[[], object]) -> object:
        """``compute()`` in a slot of ``nbytes`` bytes."""
        with self.slot(nbytes, what):
            return compute()

    def stop(self) -> None:
        """Refuse new work and wake every waiter (they raise :class:`Cancelled`)."""
        with self._lock:
            self.stopped = True
            self._lock.notify_all()
