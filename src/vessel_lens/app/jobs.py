"""Background computation of the exact global maximum of |g| for threshold mode ``global``.

``global`` needs the maximum over the image's *whole* Jacobian: every output pixel's row. A
precomputed store gives it at once; otherwise the app computes it on request, on one worker
thread, one job at a time, while hovering stays responsive (each row is computed, reduced to
its maximum and dropped, so memory stays at one chunk). Until it is known, the page says so and
``global`` shows no statistics instead of guessing from the pixels visited so far.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import torch

from vessel_lens.app.work import Cancelled
from vessel_lens.errors import VesselLensError
from vessel_lens.interpret.thresholds import gradient_magnitude

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "GlobalMaxJobs", "Job", "engine_global_max"]


@dataclass
class Job:
    key: Hashable
    total: int
    done: int = 0
    value: float | None = None
    error: str | None = None
    state: str = "queued"
    note: str = "from the whole Jacobian"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


class GlobalMaxJobs:
    """A FIFO of at most ``max_queued`` jobs served by one daemon thread; the last ``keep``
    results are remembered."""

    def __init__(self, max_queued: int = 4, keep: int = 256):
        self.max_queued = max_queued
        self.keep = keep
        self._jobs: OrderedDict[Hashable, Job] = OrderedDict()
        self._work: deque[tuple[Job, Callable]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._exit_hook = False

    def get(self, key: Hashable) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def set_value(self, key: Hashable, value: float, note: str) -> None:
        """Record a maximum known from elsewhere (a store)."""
        with self._lock:
            self._remember(Job(key, 1, 1, float(value), None, "done", note))

    def _remember(self, job: Job) -> None:
        self._jobs[job.key] = job
        self._jobs.move_to_end(job.key)
        while len(self._jobs) > self.keep:
            oldest = next(iter(self._jobs))
            if self._jobs[oldest].state in ("queued", "running"):
                break
            self._jobs.pop(oldest)

    def submit(
        self, key: Hashable, total: int, compute: Callable[[Callable[[int], None]], float]
    ) -> Job:
        """Queue ``compute(progress)`` (``progress(rows_done)`` raises :class:`Cancelled` on
        shutdown) unless the key is already queued, running or done; refuse when full."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state in ("queued", "running", "done"):
                return job
            if len(self._work) >= self.max_queued:
                return Job(key, total, state="refused", error="too many jobs queued; try later")
            job = Job(key, total)
            self._remember(job)
            self._work.append((job, compute))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="vessel-lens-global-max", daemon=True
                )
                self._thread.start()
                if not self._exit_hook:
                    self._exit_hook = True
                    atexit.register(self.shutdown, wait=5.0)
            self._wake.notify()
        return job

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._work and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                job, compute = self._work.popleft()
                job.state = "running"

            def progress(done: int, job: Job = job) -> None:
                job.done = done
                if self._stop:
                    raise Cancelled

            try:
                value = compute(progress)
            except Cancelled:
                job.state, job.error = "failed", "cancelled"
                return
            except VesselLensError as exc:
                job.state, job.error = "failed", str(exc)
                continue
            except Exception as exc:
                log.exception("global maximum of %s failed", job.key)
                job.state, job.error = "failed", f"{type(exc).__name__}: {str(exc)[:160]}"
                continue
            job.value, job.done, job.state = float(value), job.total, "done"

    def shutdown(self, wait: float = 0.0) -> None:
        """Stop the worker after its current chunk (waiting up to ``wait`` seconds for it:
        a thread killed inside a torch call at interpreter exit aborts the process)."""
        with self._lock:
            self._stop = True
            self._work.clear()
            self._wake.notify_all()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=wait)


def engine_global_max(
    engine,
    progress: Callable[[int], None],
    chunk_size: int = 16,
    guards: tuple | Callable[[], Iterable] = (),
) -> float:
    """Max over every output pixel's |g| (channels summed), one chunk of rows at a time,
    each chunk computed while holding ``guards`` (locks or semaphores, or a function giving
    fresh context managers for each chunk, such as work-queue slots)."""
    flat = torch.arange(engine.height * engine.width)
    best = 0.0
    for start in range(0, len(flat), chunk_size):
        with contextlib.ExitStack() as stack:
            for guard in guards() if callable(guards) else guards:
                stack.enter_context(guard)
            rows = engine.rows(flat[start : start + chunk_size])
        best = max(best, float(gradient_magnitude(rows.float()).max()))
        progress(min(start + chunk_size, len(flat)))
    return best
