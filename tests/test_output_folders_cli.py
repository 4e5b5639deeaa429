"""Every folder-writing command through the CLI: a folder another process holds is refused in
one line naming it, what a command would replace is refused in one message style, and ``train``
refuses a folder of unrelated files (issue 16 item 6). The messages are spelled out here, so
that these tests also run, and fail, against code without ``vessel_lens.outputs``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vessel_lens.cli import main
from vessel_lens.models import create_model, save_checkpoint

LOCK_NAME = ".vessel-lens.lock"
OVERWRITE_HINT = "choose another --out or pass --overwrite"
EMPTY_HINT = "choose a new or empty folder for --out"
HOLDER = """
import sys, time
from vessel_lens.outputs import OutputLock
OutputLock(sys.argv[1], "test-holder").acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A folder whose lock another process holds for the whole module, and that process."""
    folder = tmp_path_factory.mktemp("held") / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    yield folder, process
    process.kill()
    process.wait()


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


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
    args = command_args(name, *inputs, out, tmp_path)
    capsys.readouterr()  # what setting up said (erf-stats: the erf run of its maps)
    assert main(args) == 2
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
