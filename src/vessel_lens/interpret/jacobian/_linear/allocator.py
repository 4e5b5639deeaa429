"""Let glibc keep freed memory for the next backward pass instead of returning it at once.

A batched backward pass allocates tens of megabytes of fresh buffers (convolution outputs,
dense cotangents) and frees them at its end. glibc hands the top of its heap back to the
operating system as soon as more than twice its mmap threshold (at most 64 MiB) lies free
there, so the next pass takes a page fault on every 4 KiB of its buffers again: measured on the
2-core development CPU, 190-256 faults per row and 20-40 % of the pass's CPU time for a dense
GroupNorm net, 10-20 % for the reference model (``benchmarks/RESULTS.md``).

:func:`keep_freed_memory` raises the trim threshold to :data:`TRIM_BYTES` (up to that much free
memory stays at the top of the heap for reuse) and fixes the mmap threshold at glibc's own
dynamic maximum (32 MiB), once per process, where glibc is the C library. Processes that hand
memory back explicitly (the app calls ``malloc_trim`` after requests) still can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_BYTES = 256 << 20
MMAP_BYTES = 32 << 20
"""glibc's largest dynamic mmap threshold: buffers this large are mapped afresh every time."""

_done = False
_lock = threading.Lock()


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds (once); False where that is not possible."""
    global _done
    with _lock:
        if _done:
            return True
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        name = ctypes.util.find_library("c")
        mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
        if mallopt is None:
            return False
        _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(
            mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)
        )
        return _done
