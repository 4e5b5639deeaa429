"""Slow computations started by a click (the Captum methods), run in the background.

A click on a pixel with a slow method submits a :class:`Task` and the page polls it: it shows
"computing <method> … <elapsed> s" with the share of batches done, greys the old result and
offers a cancel; when the task is done the page asks for the pixel again and finds the result
in the cache. At most ``max_active`` tasks wait or run at once (one more is refused with a
message); each runs on its own thread, batch by batch in the app's
:class:`~vessel_lens.app.work.WorkQueue`, so the queue's bound, timeout and memory budget
apply to it. A task that asks for the same result as a running one joins it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from vessel_lens.app.work import Cancelled
from vessel_lens.errors import VesselLensError

log = logging.getLogger(__name__)

ACTIVE = ("waiting", "running")


@dataclass(eq=False)
class Task:
    """One slow computation; ``run(task)`` does it and leaves its result in a cache."""

    key: Hashable
    label: str
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "waiting"
    fraction: float = 0.0
    message: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def progress(self, fraction: float) -> None:
        self.state = "running"
        self.fraction = max(self.fraction, min(float(fraction), 1.0))

    def status(self) -> str:
        """What the page shows about it."""
        seconds = f"{self.elapsed:.0f} s"
        if self.cancel.is_set() and self.state in ACTIVE:
            return f"cancelling {self.label} … {seconds}"
        if self.state == "waiting":
            return f"computing {self.label} … {seconds} (waiting for a free worker)"
        if self.state == "running":
            return (
                f"computing {self.label} … {seconds}, {int(100 * self.fraction)} % of the batches"
            )
        if self.state == "done":
            return f"{self.label}: done in {seconds}"
        if self.state == "cancelled":
            return f"{self.label}: cancelled after {seconds}"
        return f"{self.label}: {self.message}"


class Tasks:
    """The running and recent tasks, by id and by key (see the module)."""

    def __init__(self, max_active: int, keep: int = 256):
        self.max_active = max_active
        self.keep = keep
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._by_key: dict[Hashable, Task] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self._threads: set[threading.Thread] = set()

    def get(self, task_id: object) -> Task | None:
        if not isinstance(task_id, str):
            return None
        with self._lock:
            return self._tasks.get(task_id)

    def find(self, key: Hashable) -> Task | None:
        """The latest task submitted for ``key`` (running or finished), if still known."""
        with self._lock:
            return self._by_key.get(key)

    def active(self) -> int:
        with self._lock:
            return sum(1 for t in self._tasks.values() if t.state in ACTIVE)

    def submit(self, key: Hashable, label: str, run: Callable[[Task], None]) -> Task:
        """Start ``run`` for ``key`` unless a task for it is active (that one is returned);
        a full board gives a task in state ``refused`` with the reason."""
        with self._lock:
            current = self._by_key.get(key)
            if current is not None and current.state in ACTIVE:
                return current
            active = sum(1 for t in self._tasks.values() if t.state in ACTIVE)
            if self._stopped or active >= self.max_active:
                why = (
                    "the server is stopping"
                    if self._stopped
                    else (
                        f"the server is busy: {active} slow computations are waiting or running "
                        f"(at most {self.max_active}); try again in a moment"
                    )
                )
                return Task(key, label, state="refused", message=why, finished=time.monotonic())
            task = Task(key, label)
            self._tasks[task.id] = task
            self._by_key[key] = task
            self._forget_old()
        thread = threading.Thread(
            target=self._run, args=(task, run), name=f"vessel-lens-task-{task.id}", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return task

    def _forget_old(self) -> None:
        while len(self._tasks) > self.keep:
            oldest = next(iter(self._tasks.values()))
            if oldest.state in ACTIVE:
                return
            self._tasks.pop(oldest.id)
            if self._by_key.get(oldest.key) is oldest:
                del self._by_key[oldest.key]

    def _run(self, task: Task, run: Callable[[Task], None]) -> None:
        try:
            run(task)
        except Cancelled:
            task.state = "cancelled"
        except VesselLensError as exc:
            task.state, task.message = "failed", str(exc)
        except Exception as exc:
            log.exception("%s failed", task.label)
            task.state = "failed"
            task.message = f"internal error ({type(exc).__name__}); the server log has the details"
        else:
            task.state, task.fraction = "done", 1.0
        finally:
            task.finished = time.monotonic()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def cancel(self, task_id: object) -> Task | None:
        task = self.get(task_id)
        if task is not None and task.state in ACTIVE:
            task.cancel.set()
        return task

    def shutdown(self, wait: float = 0.0) -> None:
        """Cancel every task (each stops at its next batch), waiting up to ``wait`` seconds
        for them: a thread killed inside a torch call at interpreter exit aborts the process."""
        with self._lock:
            self._stopped = True
            tasks = list(self._tasks.values())
            threads = list(self._threads)
        for task in tasks:
            task.cancel.set()
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))
