"""Write failures as one line, and single output files written whole or not at all.

A write that fails for a reason the user can act on (permission denied, no space left, read-only
file system, quota, file too large) becomes a :class:`~vessel_lens.errors.WriteError` naming the
path and the reason; :func:`vessel_lens.outputs.claim_output` applies this to everything a
command writes into its folder. A single output file (``data check --preview``) is checked
before any work (:func:`check_output_file`) and written under a temporary name that becomes the
file only when complete (:func:`writing_file`); files a command writes into its own folder
(run configs, checkpoints, map files) are replaced whole by :func:`atomic_file`.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from vessel_lens.errors import OutputError, VesselLensError, WriteError

WRITE_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large",
}
"""``errno`` values that mean a write failed, with the reason given to the user."""


def write_reason(exc: BaseException) -> str | None:
    """Why a write failed ("permission denied", "no space left on device", ...), or None if
    ``exc`` does not say that a write failed."""
    if isinstance(exc, OSError) and exc.errno in WRITE_REASONS:
        return WRITE_REASONS[exc.errno]
    return None


def write_error(exc: BaseException, folder: Path | None = None) -> WriteError | None:
    """The one-line error for ``exc`` if it means a write failed, else None. A permission
    error on a file outside ``folder`` is a read problem and is left alone."""
    if not isinstance(exc, OSError) or exc.errno not in WRITE_REASONS:
        return None
    named = Path(os.fsdecode(exc.filename)) if isinstance(exc.filename, (str, bytes)) else None
    reading = named is not None and folder is not None and not _inside(named, Path(folder))
    if exc.errno in (errno.EACCES, errno.EPERM) and reading:
        return None
    where = named or folder
    reason = WRITE_REASONS[exc.errno]
    return WriteError(f"{where}: cannot write ({reason})" if where else f"cannot write ({reason})")


@contextmanager
def write_errors_named(folder: Path) -> Iterator[None]:
    """Turn write failures inside the block into :class:`WriteError` (see :func:`write_error`)."""
    try:
        yield
    except OSError as exc:
        error = write_error(exc, folder)
        if error is None:
            raise
        raise error from exc


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.absolute().relative_to(folder.absolute())
    except ValueError:
        return False
    return True


def cannot(exc: OSError, path: Path, what: str = "cannot write") -> VesselLensError:
    """A failed write (permission, space) is a :class:`WriteError`; anything else (a path
    through a file, a name too long) means the option names no usable place."""
    if exc.errno in WRITE_REASONS:
        return WriteError(f"{path}: {what} ({WRITE_REASONS[exc.errno]})")
    return OutputError(f"{path}: {what} ({(exc.strerror or str(exc)).lower()})")


def check_output_file(
    path: str | Path, option: str, suffixes: tuple[str, ...] = (".png",), overwrite: bool = False
) -> Path:
    """Check, before any work, a file a command will write: its suffix, its folder (which must
    exist and be writable), and that it does not exist unless ``overwrite``."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {path}: must be a {' or '.join(suffixes)} file")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{option} {path}: folder {path.parent} does not exist")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(
            f"{option} {path}: already exists; choose another name or pass --overwrite"
        )
    probe = path.parent / f".{path.name}.probe.{os.getpid()}.tmp"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        with suppress(OSError):
            probe.unlink(missing_ok=True)
        raise cannot(exc, path) from None
    return path


@contextmanager
def writing_file(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` (same suffix) to write; when the block ends
    normally the file becomes ``path``, replacing one only with ``overwrite`` (also one that
    appeared meanwhile). On any failure nothing is left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with write_errors_named(path.parent):
            yield tmp
            if overwrite:
                os.replace(tmp, path)
            else:
                _publish_new(tmp, path)
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` ``"wb"`` or ``"w"``); when
    the block ends normally it is flushed to disk, given the permissions a plain ``open``
    would give (``mkstemp`` makes files readable by their owner only) and renamed over
    ``path``, so readers see the old file or the new one, never a part. On any failure the
    temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _publish_new(tmp: Path, path: Path) -> None:
    exists = OutputError(f"{path}: already exists; choose another name or pass --overwrite")
    try:
        os.link(tmp, path)  # fails if path exists: never replaces a file
    except FileExistsError:
        raise exists from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise exists from None
        os.replace(tmp, path)


__all__ = [
    "WRITE_REASONS",
    "atomic_file",
    "check_output_file",
    "write_error",
    "write_errors_named",
    "write_reason",
    "writing_file",
]
