"""Every folder-writing command through the CLI: a folder another process holds is refused in
one line naming it, what a command would replace is refused in one message style, and ``train``
refuses a folder of unrelated files (issue 16 item 6). The messages are spelled out here, so
that these tests also run, and fail, against code without ``vessel_lens.outputs``."""

from __future__ import annotations

import pytest

from tests.helpers import FOLDER_COMMANDS, command_argv, one_error_line
from vessel_lens.cli import main

LOCK_NAME = ".vessel-lens.lock"
OVERWRITE_HINT = "choose another --out or pass --overwrite"
EMPTY_HINT = "choose a new or empty folder for --out"


@pytest.fixture
def inputs(tmp_path, make_dataset, tiny_checkpoint):
    checkpoint = tiny_checkpoint
    return checkpoint, make_dataset(count=2, size=(24, 24))


@pytest.mark.parametrize("name", FOLDER_COMMANDS)
def test_every_folder_writing_command_refuses_a_held_folder(name, held, inputs, tmp_path, capsys):
    folder, process = held
    args = command_argv(name, *inputs, folder, tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err, alone=True)
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
    args = command_argv(name, *inputs, out, tmp_path)
    capsys.readouterr()  # what setting up said (erf-stats: the erf run of its maps)
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err, alone=True)
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
    args = command_argv("train", *inputs, out, tmp_path)
    for extra in ([], ["--overwrite"]):
        assert main([*args, *extra]) == 2
        line = one_error_line(capsys.readouterr().err, alone=True)
        assert line == (
            f"error: {out}: is not empty and holds no run (holds 'draft.tex'); choose a new or "
            "empty folder for --out"
        )
    assert sorted(p.name for p in out.iterdir()) == ["draft.tex"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(command_argv("train", *inputs, empty, tmp_path)) == 0
    (empty / "notes.txt").write_text("the user's notes on this run")  # a run may hold them
    assert main([*command_argv("train", *inputs, empty, tmp_path), "--overwrite"]) == 0
    assert (empty / "notes.txt").read_text() == "the user's notes on this run"
    assert not (empty / LOCK_NAME).exists()
