"""Helpers that several test modules share (fixtures are in ``conftest.py``): the one error
line of a failed command, the command line of every folder-writing command, and a process
that holds a folder's lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vessel_lens.cli import main

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


def one_error_line(err: str, *, alone: bool = False) -> str:
    """The one ``error:`` line of a failed command's stderr (progress bars and notes aside;
    with ``alone``, the only line it printed), never with a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert not alone or lines == errors, err
    assert "Traceback" not in err and "internal error" not in err, err
    return errors[0]


FOLDER_COMMANDS = ["train", "evaluate", "predict", "jacobian", "erf", "erf-stats", "report",
                   "data synth", "demo"]  # fmt: skip
"""Every command that writes a folder."""


def command_argv(
    name: str,
    checkpoint: Path,
    data: Path,
    out: Path,
    workdir: Path,
    *,
    crop: int = 16,
    synth_count: int = 1,
) -> list[str]:
    """The command line of ``name`` (one of :data:`FOLDER_COMMANDS`, or ``data check
    --preview``) writing to ``out``, with the model ``checkpoint`` and the dataset ``data``;
    ``erf-stats`` reads the maps of an ``erf`` run made once in ``workdir``."""
    model = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "all"]
    if name == "erf-stats" and not (workdir / "maps").exists():
        assert main(["erf", *model, "--crop", "16", "--out", str(workdir / "maps"),
                     "--no-progress"]) == 0  # fmt: skip
    return {
        "train": ["train", "--out", str(out), "--data", str(data), "--width", "4", "--epochs",
                  "1", "--crop-size", "16", "--device", "cpu", "--no-progress"],
        "evaluate": ["evaluate", *model, "--out", str(out)],
        "predict": ["predict", "--checkpoint", str(checkpoint), "--images",
                    str(data / "images"), "--out", str(out)],
        "jacobian": ["jacobian", *model, "--crop", str(crop), "--out", str(out), "--no-progress"],
        "erf": ["erf", *model, "--crop", str(crop), "--out", str(out), "--no-progress"],
        "erf-stats": ["erf-stats", str(workdir / "maps"), "--data", str(data), "--out",
                      str(out)],
        "report": ["report", *model, "--crop", "16", "--max-images", "1", "--sanity-images",
                   "0", "--out", str(out), "--no-progress"],
        "data synth": ["data", "synth", "--out", str(out), "--count", str(synth_count),
                       "--size", "32"],
        "demo": ["demo", "--out", str(out), "--device", "cpu", "--no-progress"],
        "data check --preview": ["data", "check", "--data", str(data), "--preview",
                                 str(out / "preview.png")],
    }[name]  # fmt: skip


def tiny_app_files(
    root: Path, *, seed: int, size: int, count: int, width: int = 4, name: str = "tiny.pt"
):
    """``root/name``, a one-channel ``resnet_seg`` of ``width`` with the weights of ``seed``,
    and ``root/data``, ``count`` synthetic images of ``size``: what the app's tests serve.
    Returns (checkpoint path, data folder, model)."""
    import torch

    from vessel_lens.data import write_synthetic_dataset
    from vessel_lens.models import create_model, save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("resnet_seg", width=width, in_channels=1)
    checkpoint = save_checkpoint(root / name, model, "resnet_seg", {"width": width})
    write_synthetic_dataset(root / "data", count=count, size=size, progress=False)
    return checkpoint, root / "data", model
