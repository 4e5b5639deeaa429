"""SIGTERM handled like Ctrl-C, and saves that an interrupt waits for.

``kill``, a batch scheduler's time limit and ``torchrun`` stopping its workers send SIGTERM,
whose default action ends the process on the spot: no message, no cleanup. Inside
:func:`sigterm_as_interrupt` it raises :class:`Terminated`, a ``KeyboardInterrupt``, so every
command stops as it does on Ctrl-C (temporary files removed, locks released, a message saying
how to continue). Inside :func:`interrupts_deferred` Ctrl-C and SIGTERM wait until the block
ends, so a checkpoint being saved is saved completely.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[list[int]]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread only, where
    Python runs signal handlers). Yields a list that receives the signal's number, for callers
    whose framework turns every ``KeyboardInterrupt`` into one exit status."""
    received: list[int] = []
    if not _main_thread():
        yield received
        return
    current = signal.getsignal(signal.SIGTERM)
    if hasattr(current, "received"):  # nested: the outer block's handler already does this
        yield current.received
        return

    def terminate(signum, frame) -> None:
        received.append(signum)
        raise Terminated()

    terminate.received = received
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then raise them; an exception raised by
    the block itself takes precedence."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []

    def remember(signum, frame) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in dict.fromkeys(pending):  # delivered now, to the handlers the block replaced
        handler = previous[sig]
        if callable(handler):
            handler(sig, None)
        elif handler == signal.SIG_DFL:
            raise Terminated() if sig == signal.SIGTERM else KeyboardInterrupt()
