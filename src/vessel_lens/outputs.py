"""Output folders: one writer at a time, nothing replaced unasked, write failures in one line.

Every command that writes a folder claims it with :func:`claim_output` before computing:

1. The folder is created if needed and shown to be writable: the lock file is created and
   written, and a probe file is created and removed.
2. An exclusive lock is taken: ``fcntl.flock`` on ``.vessel-lens.lock`` in the folder, held until
   the command ends. The lock file records the holder's PID, command and start time; a second
   writer is refused in one line naming them. The operating system drops the lock when its
   holder exits in any way, ``kill -9`` included; a lock file left by a process that ended
   without removing it is reported in a note (:class:`OutputNote`) and taken over. Under
   ``torchrun`` rank 0 holds the lock for the group.
3. Under the lock, a check refuses a folder holding what the command would replace
   (:func:`refuse_replacing`) or files it did not write (:func:`require_empty`), in one style:
   ``<folder>: already holds <name>; choose another --out or pass --overwrite``.
4. Until the command ends, an ``OSError`` meaning that a write failed (permission denied, no
   space left, read-only file system, quota) becomes a :class:`~vessel_lens.errors.WriteError`
   naming the path and the reason (:mod:`vessel_lens.write_errors`).

A folder the claim created is removed again when the command leaves it empty.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from vessel_lens.errors import OutputError, VesselLensError
from vessel_lens.write_errors import cannot, write_errors_named

LOCK_NAME = ".vessel-lens.lock"
"""The lock file inside a claimed folder (removed when its holder releases it)."""
OVERWRITE_HINT = "choose another --out or pass --overwrite"
EMPTY_HINT = "choose a new or empty folder for --out"
_HELD: dict[str, int] = {}
"""Folders this process holds (resolved path: nesting depth), so that a nested claim of a
folder it already holds does not refuse itself."""


class OutputNote(UserWarning):
    """Something about an output folder worth knowing; the CLI prints it as ``note: ...``."""


def note(message: str) -> None:
    warnings.warn(message, OutputNote, stacklevel=3)


# ------------------------------------------------------------------------------ the guard
def check_not_file(folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; choose another --out")
    if not folder.exists() and folder.is_symlink():
        raise OutputError(f"{folder}: is a broken link; choose another --out")
    return folder


def holds(path: Path) -> bool:
    """Whether ``path`` holds something to lose: a file, a link, or a folder that is not empty."""
    if path.is_symlink() or path.is_file():
        return True
    return path.is_dir() and any(path.iterdir())


def is_temporary(name: str) -> bool:
    """Names this package gives files while writing them (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def other_entries(folder: Path, own: Iterable[str] = ()) -> list[str]:
    """Sorted names in ``folder`` other than ``own``, the lock file and temporary files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    own = set(own) | {LOCK_NAME}
    return sorted(
        p.name for p in folder.iterdir() if p.name not in own and not is_temporary(p.name)
    )


def refuse_replacing(folder: Path, names: Iterable[str], overwrite: bool = False) -> None:
    """Refuse ``folder`` if it holds any of ``names`` (what the command writes), unless
    ``overwrite``."""
    folder = check_not_file(folder)
    if overwrite:
        return
    for name in names:
        if holds(folder / name):
            raise OutputError(f"{folder}: already holds {name}; {OVERWRITE_HINT}")


def require_empty(folder: Path, own: Iterable[str] = ()) -> None:
    """Refuse ``folder`` if it holds anything but ``own`` (and the lock, and temporaries)."""
    others = other_entries(check_not_file(folder), own)
    if others:
        raise OutputError(f"{folder}: is not empty (holds {others[0]!r}); {EMPTY_HINT}")


def refused(path: Path, holding: str, kind: type[VesselLensError] = OutputError) -> VesselLensError:
    """The error for one output ``path`` holding something the command may not replace
    (``kind``: :class:`DataError` where the path holds something unreadable)."""
    return kind(f"{path}: {holding}; {OVERWRITE_HINT}")


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files (``.*.tmp``) a killed writer left in ``folder``; call only
    while holding its lock, when no other writer can be in the middle of one."""
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp")):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- the lock
def _describe(record: dict[str, Any]) -> str:
    command = record.get("command") or "another process"
    detail = [f"PID {record.get('pid', '?')}", f"started {record.get('started', '?')}"]
    if record.get("host") and record.get("host") != socket.gethostname():
        detail.insert(1, f"on {record['host']}")
    return f"{command} ({', '.join(detail)})"


class OutputLock:
    """The exclusive lock of one output folder (see the module docs). ``acquire`` creates the
    folder and proves it writable; ``release`` is safe to call more than once."""

    def __init__(self, folder: str | Path, command: str):
        self.folder = Path(folder)
        self.command = command if command.startswith("vessel-lens") else f"vessel-lens {command}"
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._key: str | None = None
        self._created: list[Path] = []

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> OutputLock:
        if self.held:
            return self
        folder = check_not_file(self.folder)
        key = str(folder.resolve())
        if key in _HELD:  # this process already holds it (a command calling another)
            _HELD[key] += 1
            self._key = key
            return self
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cannot(exc, folder, "cannot create the folder") from None
        self._created = missing  # innermost first, the order to remove them in
        try:
            self._fd = self._lock()
            self._probe()
        except BaseException:
            self._close()
            self._remove_created()
            raise
        self._key = key
        _HELD[key] = 1
        return self

    def _lock(self) -> int | None:
        """The locked lock file's descriptor (None where the file system has no locks)."""
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise cannot(exc, self.folder) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise OutputError(
                    f"{self.folder}: in use by {_describe(holder)}; wait for it to finish or "
                    "choose another --out"
                ) from None
            except OSError as exc:  # a file system without locks (some network mounts)
                os.close(fd)
                note(f"{self.folder}: cannot be locked ({exc.strerror}); a second writer would "
                     "not be refused")  # fmt: skip
                return None
            try:  # the file we locked is still the one at the path (its holder removes it)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise OutputError(f"{self.folder}: its lock file keeps changing; choose another --out")
        previous = _read_record(fd)
        if previous:
            note(
                f"{self.folder}: taking over the lock left by {_describe(previous)}, which ended "
                "without releasing it"
            )
        record = {
            "pid": os.getpid(),
            "command": self.command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": socket.gethostname(),
            "argv": sys.argv,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise cannot(exc, self.path) from None
        return fd

    def _probe(self) -> None:
        """Create and remove a file: the lock file may predate a change of permissions."""
        probe = self.folder / f".vessel-lens-probe.{os.getpid()}.tmp"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"0")
            probe.unlink()
        except OSError as exc:
            with suppress(OSError):
                probe.unlink(missing_ok=True)
            raise cannot(exc, self.folder) from None

    def release(self) -> None:
        if not self.held:
            return
        key, self._key = self._key, None
        _HELD[key] -= 1
        if _HELD[key] > 0:
            return
        del _HELD[key]
        if self._fd is not None:
            with suppress(OSError):  # removed before unlocking: see the inode check in _lock
                self.path.unlink(missing_ok=True)
        self._close()
        self._remove_created()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None

    def _remove_created(self) -> None:
        """Remove the folders ``acquire`` created, innermost first, if nothing was put there."""
        for path in self._created:
            try:
                path.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_record(fd: int) -> dict[str, Any]:
    for attempt in range(5):  # the holder writes its record just after locking
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        except OSError:
            return {}
        if text:
            try:
                record = json.loads(text.splitlines()[0])
            except ValueError:
                return {"command": "another process"}
            return record if isinstance(record, dict) else {}
        if attempt < 4:
            time.sleep(0.05)
    return {}


def read_lock(folder: str | Path) -> dict[str, Any] | None:
    """The record in ``folder``'s lock file, or None if there is none."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_record(fd)
    finally:
        os.close(fd)


@contextmanager
def claim_output(
    folder: str | Path,
    command: str,
    *,
    replaces: Iterable[str] = (),
    overwrite: bool = False,
    check: Callable[[Path], None] | None = None,
    group: Any = None,
) -> Iterator[Path]:
    """Hold ``folder`` for ``command`` for the length of the block (see the module docs).

    Under the lock, before the block: the folder is refused if it holds any of ``replaces``
    unless ``overwrite`` (:func:`refuse_replacing`), then ``check(folder)`` runs, for guards of
    other kinds. ``group``: a :class:`~vessel_lens.distributed.DistContext`; its rank 0 holds
    the lock and every rank gets rank 0's error.
    """
    lock = OutputLock(folder, command)
    error = None
    if group is None or group.is_main:
        try:
            lock.acquire()
            refuse_replacing(lock.folder, replaces, overwrite)
            if check is not None:
                check(lock.folder)
        except VesselLensError as exc:
            lock.release()
            error = exc
    if group is not None:
        group.agree(error)
    elif error is not None:
        raise error
    try:
        with write_errors_named(lock.folder):
            yield lock.folder
    finally:
        lock.release()


__all__ = [
    "LOCK_NAME",
    "OutputLock",
    "OutputNote",
    "claim_output",
    "read_lock",
    "refuse_replacing",
    "refused",
    "remove_temporaries",
    "require_empty",
]
