"""Output folders: the exclusive lock, its record and stale locks, the one guard and its
messages, and every folder-writing command refusing a folder another process holds."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vessel_lens.cli import main
from vessel_lens.errors import ConfigError, OutputError, WriteError
from vessel_lens.models import create_model, save_checkpoint
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
    write_error,
)

HOLDER = """
import sys, time
from vessel_lens.outputs import OutputLock
OutputLock(sys.argv[1], "test-holder").acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold(folder: Path) -> subprocess.Popen:
    """A process holding ``folder``'s lock until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A folder whose lock another process holds for the whole module, and that process."""
    folder = tmp_path_factory.mktemp("held") / "out"
    process = hold(folder)
    yield folder, process
    process.kill()
    process.wait()


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


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


# ---------------------------------------------------- every command, one folder, one lock
@pytest.fixture
def inputs(tmp_path, make_dataset):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "model.pt", create_model("resnet_seg", width=4), "resnet_seg", {"width": 4}
    )
    return checkpoint, make_dataset(count=2, size=(24, 24))


def command_args(name: str, checkpoint, data: Path, out: Path, tmp_path: Path) -> list:
    model = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "all"]
    if name == "erf-stats":
        maps = tmp_path / "maps"
        assert main(["erf", *model, "--crop", "16", "--out", str(maps), "--no-progress"]) == 0
    return {
        "train": ["train", "--out", str(out), "--data", str(data), "--width", "4", "--epochs",
                  "1", "--crop-size", "16", "--device", "cpu", "--no-progress"],
        "evaluate": ["evaluate", *model, "--out", str(out)],
        "predict": ["predict", "--checkpoint", str(checkpoint), "--images",
                    str(data / "images"), "--out", str(out)],
        "jacobian": ["jacobian", *model, "--crop", "16", "--out", str(out), "--no-progress"],
        "erf": ["erf", *model, "--crop", "16", "--out", str(out), "--no-progress"],
        "erf-stats": ["erf-stats", str(tmp_path / "maps"), "--data", str(data), "--out",
                      str(out)],
        "report": ["report", *model, "--crop", "16", "--max-images", "1", "--sanity-images",
                   "0", "--out", str(out), "--no-progress"],
        "data synth": ["data", "synth", "--out", str(out), "--count", "1", "--size", "32"],
        "demo": ["demo", "--out", str(out), "--device", "cpu", "--no-progress"],
    }[name]  # fmt: skip


COMMANDS = ["train", "evaluate", "predict", "jacobian", "erf", "erf-stats", "report",
            "data synth", "demo"]  # fmt: skip


@pytest.mark.parametrize("name", COMMANDS)
def test_every_folder_writing_command_refuses_a_held_folder(name, held, inputs, tmp_path, capsys):
    folder, process = held
    args = command_args(name, *inputs, folder, tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {folder}: in use by vessel-lens test-holder (PID {process.pid}")
    assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # nothing written


@pytest.mark.parametrize(
    ("name", "present", "hint"),
    [
        ("train", "notes.txt", EMPTY_HINT),
        ("evaluate", "metrics.json", OVERWRITE_HINT),
        ("predict", "s00_mask.png", OVERWRITE_HINT),
        ("jacobian", "s00.zarr", OVERWRITE_HINT),
        ("erf", "s00.erf.npz", OVERWRITE_HINT),
        ("erf-stats", "stats_answer.csv", OVERWRITE_HINT),
        ("report", "report.html", OVERWRITE_HINT),
        ("data synth", "notes.txt", EMPTY_HINT),
        ("demo", "notes.txt", EMPTY_HINT),
    ],
)
def test_every_command_refuses_to_replace_in_one_style(
    name, present, hint, inputs, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / present).write_bytes(b"the user's")
    assert main(command_args(name, *inputs, out, tmp_path)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.endswith(hint) and str(out) in line
    assert sorted(p.name for p in out.iterdir()) == [present]
    assert (out / present).read_bytes() == b"the user's"


def test_train_refuses_a_folder_of_unrelated_files_even_with_overwrite(
    make_dataset, tmp_path, capsys
):
    inputs = (None, make_dataset(count=5, size=(24, 24)))
    out = tmp_path / "papers"
    out.mkdir()
    (out / "draft.tex").write_text("mine")
    args = command_args("train", *inputs, out, tmp_path)
    for extra in ([], ["--overwrite"]):
        assert main([*args, *extra]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line == (
            f"error: {out}: is not empty and holds no run (holds 'draft.tex'); choose a new or "
            "empty folder for --out"
        )
    assert sorted(p.name for p in out.iterdir()) == ["draft.tex"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(command_args("train", *inputs, empty, tmp_path)) == 0
    (empty / "notes.txt").write_text("the user's notes on this run")  # a run may hold them
    assert main([*command_args("train", *inputs, empty, tmp_path), "--overwrite"]) == 0
    assert (empty / "notes.txt").read_text() == "the user's notes on this run"
    assert not (empty / LOCK_NAME).exists()
