"""How many CPU threads torch computes with: chosen from the cores and the load, or given.

Torch starts one thread per core. On a busy machine those threads wait for each other: on a
2-core machine under a load average near 2, one training epoch took 25.4 s with two threads
against 5.7 s with one. So ``threads=0`` (every command's default) chooses

    round(cores - load), at least 1 and at most the cores,

where *cores* are those this process may run on (its CPU affinity) and *load* is the 1-minute
load average, scaled to those cores when the process may use only some of the machine's. Under
``torchrun`` the local processes share both: each takes round((cores - load) / local
processes), at least 1. A positive number is used as given.

:func:`torch_threads` applies a choice for a block and restores torch's setting afterwards;
inside such a block a nested ``threads=0`` keeps the number chosen outside, so a command and
the library calls it makes choose once. A command's log line is said where its computation
starts (:func:`work_starts`, called by the library once the inputs are accepted), so an input
that is refused stays the command's only message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vessel_lens.errors import ConfigError


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and what it was chosen from."""

    threads: int
    cores: int
    """Cores this process may run on."""
    load: float | None
    """The 1-minute load average of the machine; None where the system does not say."""
    processes: int = 1
    """Local processes sharing the cores (torchrun's ``LOCAL_WORLD_SIZE``)."""
    given: bool = False
    """Whether the number was asked for rather than chosen."""

    def describe(self, unit: str = "") -> str:
        """The log line, e.g. ``threads: 1 (2 cores, load 1.9)``."""
        cores = f"{self.cores} core{'s' if self.cores != 1 else ''}"
        if self.processes > 1:
            cores += f" shared by {self.processes} local processes"
        load = "load unknown" if self.load is None else f"load {self.load:.1f}"
        given = "as given; " if self.given else ""
        return f"threads: {self.threads}{unit} ({given}{cores}, {load})"


def check_threads(threads: int) -> int:
    """``threads`` itself when it is 0 (choose) or positive, else a one-line ConfigError."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(
            f"--threads {threads}: must be 0 (choose from the cores and the load) or a "
            "positive number"
        )
    return threads


def available_cores() -> int:
    """Cores this process may run on (its affinity where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The machine's 1-minute load average, or None where it is not available."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def local_processes() -> int:
    """Processes of this job on this machine: ``LOCAL_WORLD_SIZE`` under torchrun, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose_threads(threads: int = 0) -> ThreadChoice:
    """The number of threads to use (module docs); ``threads`` > 0 is taken as given."""
    check_threads(threads)
    cores, load, processes = available_cores(), load_average(), local_processes()
    if threads:
        return ThreadChoice(threads, cores, load, processes, given=True)
    machine = max(os.cpu_count() or cores, cores)
    busy = 0.0 if load is None else load * cores / machine
    share = max(1, cores // processes)
    free = (cores - busy) / processes
    return ThreadChoice(max(1, min(share, math.floor(free + 0.5))), cores, load, processes)


_active: list[ThreadChoice] = []
"""The choices of the :func:`torch_threads` blocks being run, innermost last."""
_announcers: list[Callable[[ThreadChoice], None] | None] = []
"""Per block, what says its choice (the command line's log line) until it has been said."""


@contextmanager
def torch_threads(
    threads: int = 0, announce: Callable[[ThreadChoice], None] | None = None
) -> Iterator[ThreadChoice]:
    """Run the block with :func:`choose_threads` ``(threads)`` torch threads and restore torch's
    previous setting afterwards. Inside another such block, ``threads=0`` keeps its choice.

    ``announce(choice)`` is called once, by :func:`work_starts` when the computation starts,
    or else when the block ends without an error: a refused input stays the only message."""
    import torch

    check_threads(threads)
    if threads == 0 and _active:
        yield _active[-1]
        return
    choice = choose_threads(threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    _active.append(choice)
    _announcers.append(announce)
    try:
        yield choice
    except BaseException:
        _announcers[-1] = None
        raise
    finally:
        unsaid = _announcers.pop()  # blocks nest, so the innermost is this one
        _active.pop()
        torch.set_num_threads(previous)
    if unsaid is not None:
        unsaid(choice)


def work_starts() -> None:
    """Mark where a computation starts, its inputs accepted: the enclosing blocks of
    :func:`torch_threads` say their choice now (once). Does nothing outside such blocks."""
    for index, announce in enumerate(_announcers):
        if announce is not None:
            _announcers[index] = None
            announce(_active[index])
