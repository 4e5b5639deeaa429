"""Output folders: the exclusive lock, its record and stale locks, the one guard and its
messages, and every folder-writing command refusing a folder another process holds."""

from __future__ import annotations

import errno
import os
import re
import signal

import pytest

from tests.helpers import hold
from vessel_lens.errors import ConfigError, OutputError, WriteError
from vessel_lens.outputs import (
    EMPTY_HINT,
    LOCK_NAME,
    OVERWRITE_HINT,
    OutputLock,
    OutputNote,
    claim_output,
    read_lock,
    refuse_replacing,
    require_empty,
)
from vessel_lens.write_errors import write_error


# --------------------------------------------------------------------------- the lock
def test_lock_records_its_holder_and_is_removed_with_the_folder_it_created(tmp_path):
    folder = tmp_path / "new" / "out"
    with OutputLock(folder, "jacobian") as lock:
        record = read_lock(folder)
        assert record["pid"] == os.getpid() and record["command"] == "vessel-lens jacobian"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record["started"])
        assert lock.held and (folder / LOCK_NAME).is_file()
    assert not (tmp_path / "new").exists()  # created by the lock, left empty: removed
    (tmp_path / "kept").mkdir()
    with OutputLock(tmp_path / "kept", "train"):
        (tmp_path / "kept" / "result.txt").write_text("x")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["result.txt"]


def test_second_writer_gets_one_line_naming_the_holder(held):
    folder, process = held
    with pytest.raises(OutputError) as info:
        OutputLock(folder, "train").acquire()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{folder}: in use by vessel-lens test-holder (PID {process.pid}, ")
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)", message)
    assert message.endswith("wait for it to finish or choose another --out")


def test_kill_9_releases_the_lock_and_the_next_writer_notes_the_stale_record(tmp_path):
    folder = tmp_path / "out"
    process = hold(folder)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_lock(folder)["pid"] == process.pid  # left behind by the killed holder
    with pytest.warns(OutputNote) as caught:
        lock = OutputLock(folder, "erf").acquire()
    assert len(caught) == 1
    assert f"taking over the lock left by vessel-lens test-holder (PID {process.pid}" in str(
        caught[0].message
    )
    assert read_lock(folder)["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_a_process_may_claim_a_folder_it_holds_again(tmp_path):
    with OutputLock(tmp_path, "demo"), OutputLock(tmp_path, "report") as inner:
        assert inner.held
    with OutputLock(tmp_path, "demo"):  # released completely: taken again without a note
        pass


def test_claim_checks_under_the_lock_and_releases_on_refusal(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    refusal = pytest.raises(OutputError, match=f"already holds metrics.json; {OVERWRITE_HINT}")
    with refusal, claim_output(folder, "evaluate", replaces=["metrics.json"]):
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json"]
    with claim_output(folder, "evaluate", replaces=["metrics.json"], overwrite=True) as out:
        (out / "metrics.json").write_text("new")
    assert (folder / "metrics.json").read_text() == "new"


def test_write_failures_inside_a_claim_become_one_line(tmp_path):
    full = pytest.raises(WriteError, match=r"out: cannot write \(no space left on device\)$")
    with full, claim_output(tmp_path / "out", "jacobian"):
        raise OSError(errno.ENOSPC, "No space left on device")
    inside = OSError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "x.png"))
    assert str(write_error(inside, tmp_path / "out")) == (
        f"{tmp_path / 'out' / 'x.png'}: cannot write (permission denied)"
    )
    reading = OSError(errno.EACCES, "Permission denied", "/elsewhere/image.png")
    assert write_error(reading, tmp_path / "out") is None  # reading an input: not a write


# -------------------------------------------------------------------------- the guard
def test_guard_messages_share_one_style(tmp_path):
    (tmp_path / "figures").mkdir()
    refuse_replacing(tmp_path, ["report.html", "figures"])  # an empty folder holds nothing
    (tmp_path / "figures" / "a.png").write_bytes(b"x")
    with pytest.raises(OutputError) as info:
        refuse_replacing(tmp_path, ["report.html", "figures"])
    assert str(info.value) == f"{tmp_path}: already holds figures; {OVERWRITE_HINT}"
    (tmp_path / LOCK_NAME).write_text("")
    (tmp_path / ".last.pt.abc.tmp").write_text("")
    require_empty(tmp_path, own=["figures"])  # the lock and temporaries are not the user's
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError) as info:
        require_empty(tmp_path, own=["figures"])
    assert str(info.value) == f"{tmp_path}: is not empty (holds 'notes.txt'); {EMPTY_HINT}"
    assert isinstance(info.value, ConfigError)


def test_notes_print_as_note_lines():
    from vessel_lens.cli import _one_line_warning

    assert _one_line_warning("taken over", OutputNote, "f.py", 1) == "note: taken over\n"
    assert _one_line_warning("odd", UserWarning, "f.py", 1) == "warning: odd\n"
