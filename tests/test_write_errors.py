"""Write failures are one line naming the path and the reason, found before computing.

The failures are real: a read-only tmpfs mount, a folder of mode 500 written by a process
without CAP_DAC_OVERRIDE (root ignores mode bits otherwise), and a small tmpfs filled up so
that torch, zarr, numpy and matplotlib meet a real ENOSPC. Mounting needs root (or
CAP_SYS_ADMIN); where it is not allowed these tests skip and say so.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FOLDER_COMMANDS, command_argv, one_error_line
from vessel_lens.cli import main

PAGE = 4096


def mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'})")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems under ``tmp_path``: ``tmpfs(name, options)``."""
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        folder = tmp_path / name
        mount_tmpfs(folder, options)
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_pages: int) -> None:
    """Fill ``folder``'s file system up to ``leave_pages`` free pages."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * (free - leave_pages * PAGE))


@pytest.fixture
def inputs(tmp_path, make_dataset, tiny_checkpoint):
    checkpoint = tiny_checkpoint
    data = make_dataset(
        count=3, size=(40, 40), splits={"train": ["s00"], "val": ["s01"], "test": ["s02"]}
    )
    return checkpoint, data


COMMANDS = [*FOLDER_COMMANDS, "data check --preview"]


@pytest.mark.parametrize("name", COMMANDS)
def test_read_only_folder_is_one_line_before_computing(name, inputs, tmpfs, tmp_path, capsys):
    readonly = tmpfs("readonly", "size=1m,ro")
    for out in (readonly, readonly / "new"):  # existing, and to be created
        if name == "data check --preview" and out == readonly / "new":
            continue  # a missing folder for --preview is an option error (data/test_check_options.py)
        args = command_argv(name, *inputs, out, tmp_path, crop=32, synth_count=2)
        capsys.readouterr()
        assert main(args) == 1
        line = one_error_line(capsys.readouterr().err)
        assert str(out) in line and "(read-only file system)" in line


def test_evaluate_checks_the_folder_before_computing(inputs, tmpfs, tmp_path, monkeypatch, capsys):
    import vessel_lens.training.evaluate as evaluate_module

    def computing(*args, **kwargs):
        raise AssertionError("evaluate computed before checking its output folder")

    monkeypatch.setattr(evaluate_module, "evaluate_model", computing)
    readonly = tmpfs("readonly", "size=1m,ro")  # exists, so creating it succeeds
    assert main(command_argv("evaluate", *inputs, readonly, tmp_path, crop=32, synth_count=2)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {readonly}: cannot write (read-only file system)"


PERMISSION_SCRIPT = """
import contextlib, io, json, sys
from vessel_lens.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def _without_dac_override() -> None:
    """In the child before exec: drop the capabilities that let root ignore mode bits."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            os._exit(97)


def test_folder_of_mode_500_is_permission_denied(inputs, tmp_path):
    """Every command, in one child process that mode bits apply to (as root: without
    CAP_DAC_OVERRIDE, which is what lets root write anywhere)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    locked.chmod(0o500)
    runs = [
        command_argv(name, *inputs, locked, tmp_path, crop=32, synth_count=2) for name in COMMANDS
    ]
    preexec = _without_dac_override if os.geteuid() == 0 else None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PERMISSION_SCRIPT, json.dumps(runs)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=preexec,
        timeout=600,
    )
    if result.returncode == 97:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here, and root ignores mode bits")
    assert result.returncode == 0, result.stderr
    for name, (code, err) in zip(COMMANDS, json.loads(result.stdout), strict=True):
        line = one_error_line(err)
        assert code == 1, (name, err)
        assert line.startswith(f"error: {locked}") and line.endswith("(permission denied)"), name
    assert list(locked.iterdir()) == []


def test_full_disk_during_a_checkpoint_save_names_the_file(inputs, tmpfs, tmp_path, capsys):
    """torch reports a full disk as ``RuntimeError: ... unexpected pos``; the user gets the
    path and the reason."""
    disk = tmpfs("disk", "size=1m")
    fill(disk, leave_pages=3)  # the lock record and config.yaml fit, the checkpoint does not
    out = disk / "run"
    assert main(command_argv("train", *inputs, out, tmp_path, crop=32, synth_count=2)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {out / 'last.pt'}: cannot write (no space left on device)"
    assert not list(out.glob(".*.tmp")) and not (out / ".vessel-lens.lock").exists()


@pytest.mark.parametrize("name", ["jacobian", "erf", "evaluate", "report"])
def test_full_disk_while_writing_results_is_one_line(name, inputs, tmpfs, tmp_path, capsys):
    disk = tmpfs("disk", "size=1m")
    fill(disk, leave_pages=3)
    out = disk / "out"
    assert main(command_argv(name, *inputs, out, tmp_path, crop=32, synth_count=2)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out}") and line.endswith("(no space left on device)")
    assert not (out / ".vessel-lens.lock").exists()


def test_atomic_file_replaces_whole_with_the_usual_permissions_or_leaves_the_old_file(tmp_path):
    from vessel_lens.write_errors import atomic_file

    path = tmp_path / "run.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path, "w") as handle:
        handle.write("half")
        raise RuntimeError("stopped mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]
    umask = os.umask(0o027)
    try:
        with atomic_file(path, "w") as handle:
            handle.write("new")
    finally:
        os.umask(umask)
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640
