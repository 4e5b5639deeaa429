"""Admission of the app's computations: a bounded queue under one memory budget.

Every computation the server runs — preparing a view (the recorded forward pass), a hovered
pixel's backward pass, an attribution batch, a receptive field, an upload's decoding, a chunk
of the global maximum — first asks :class:`WorkQueue` for a *slot*, stating the bytes it may
use. The queue admits it when fewer than ``workers`` computations run and the bytes reserved
by the running ones, plus the bytes the registered caches hold, plus its own, fit the budget;
to make room it first drops the caches' least recently used entries. A request larger than
the whole budget is refused at once (:class:`OverBudget`).

Two kinds of request wait, each in order of arrival:

- *interactive* ones (a page waits for the answer: hovers, views, uploads): at most
  ``max_waiting`` wait; the next one is refused at once (:class:`Busy`);
- *background* ones (steps of the page's slow tasks, bounded by their own task board) are
  served after the interactive ones.

Either gives up after ``timeout`` seconds of waiting (:class:`Busy`), with a message for the
page. A long computation (an attribution) runs in batches and calls :meth:`Slot.pause`
between them: while an interactive request waits, its worker goes to that request, and it
then continues before any new background request (it keeps its reserved memory meanwhile).
So hovers stay answered while integrated gradients runs, and slow tasks finish in the order
they started. :meth:`Slot.pause` also raises :class:`Cancelled` once the computation's cancel
event is set.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
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
    background: bool = False
    resuming: bool = False
    admitted: bool = False
    arrived: float = field(default_factory=time.monotonic)


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
        """Between two batches: let waiting interactive requests run first, then continue."""
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
        self._waiting: list[_Ticket] = []
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
    def running(self) -> int:
        with self._lock:
            return self._running

    def waiting(self, background: bool = False) -> int:
        """Requests waiting for their first admission (interactive or background ones)."""
        with self._lock:
            return self._count_waiting(background)

    def _count_waiting(self, background: bool) -> int:
        return sum(1 for t in self._waiting if not t.resuming and t.background == background)

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
        """The ticket to admit next, if one can start now (lock held): the first
        interactive request, else the first resuming computation (it holds its memory),
        else the first background request; a request waiting for memory is passed by no
        later request that needs memory."""
        if self._running >= self.workers:
            return None
        new = [t for t in self._waiting if not t.resuming]
        interactive = [t for t in new if not t.background]
        if interactive and self._make_room(interactive[0].nbytes):
            return interactive[0]
        resuming = next((t for t in self._waiting if t.resuming), None)
        if resuming is not None:
            return resuming
        background = [t for t in new if t.background]
        if not interactive and background and self._make_room(background[0].nbytes):
            return background[0]
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
                    f"{ticket.what}: waited {self.timeout:g} s for a free worker "
                    f"({self._running} running, {len(self._waiting)} waiting); try again"
                )
            self._lock.wait(0.25 if remaining is None else min(remaining, 0.25))

    @contextlib.contextmanager
    def slot(
        self,
        nbytes: int,
        what: str,
        cancel: threading.Event | None = None,
        background: bool = False,
        patient: bool = False,
    ) -> Iterator[Slot]:
        """Run the block as one computation of at most ``nbytes`` bytes (see the module).

        ``background``: a step of a slow task (not refused for a full queue: the task board
        bounds those). ``patient``: never timed out either (a chunk of the global maximum,
        whose job queue is bounded and shows its progress)."""
        nbytes = max(int(nbytes), 0)
        if nbytes > self.budget:
            raise OverBudget(
                f"{what} needs about {mib(nbytes)}, more than the app's whole memory budget "
                f"(--cache-mb {self.budget // MIB}); start the app with a larger --cache-mb"
            )
        ticket = _Ticket(nbytes, what, background)
        with self._lock:
            if self.stopped:
                raise Cancelled(f"{what}: the server is stopping")
            queued = self._count_waiting(False)
            idle = self._running < self.workers and not self._waiting
            if not idle and not background and queued >= self.max_waiting:
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
            if not self._count_waiting(False):
                return
            self._running -= 1
            ticket.admitted, ticket.resuming = False, True
            try:
                self._wait_for(ticket, cancel, None)
            except Cancelled:
                self._running += 1  # released again when the caller's ``slot`` block ends
                raise

    def stop(self) -> None:
        """Refuse new work and wake every waiter (they raise :class:`Cancelled`)."""
        with self._lock:
            self.stopped = True
            self._lock.notify_all()
