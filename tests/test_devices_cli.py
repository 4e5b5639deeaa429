"""Every command that computes takes ``--device``; asking for a device this machine lacks is one
``error:`` line and a non-zero exit, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer

from vessel_lens.cli import build_app, main
from vessel_lens.data import write_synthetic_dataset
from vessel_lens.models import create_model, save_checkpoint

COMPUTING = ("train", "evaluate", "predict", "jacobian", "report", "app", "demo", "erf")
"""Commands that run a model (``erf`` once it is wired into the command line)."""
NOT_COMPUTING = ("data", "models", "erf-stats")
"""Commands that read files or count parameters only."""


def commands() -> dict:
    return typer.main.get_command(build_app()).commands


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("devices")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet_seg", width=2, in_channels=1)
    save_checkpoint(root / "tiny.pt", model, "resnet_seg", {"width": 2})
    write_synthetic_dataset(root / "data", count=2, size=32, progress=False)
    return root


def arguments(command: str, root: Path, out: Path) -> list[str]:
    """Valid arguments for ``command`` apart from the device."""
    checkpoint, data = ["--checkpoint", str(root / "tiny.pt")], ["--data", str(root / "data")]
    return {
        "train": ["--out", str(out), *data, "--epochs", "1", "--width", "2"],
        "evaluate": [*checkpoint, *data, "--split", "all", "--out", str(out)],
        "predict": [*checkpoint, "--images", str(root / "data" / "images"), "--out", str(out)],
        "jacobian": [*checkpoint, *data, "--split", "all", "--crop", "16", "--out", str(out)],
        "report": [*checkpoint, *data, "--split", "all", "--crop", "16", "--out", str(out)],
        "app": [*checkpoint, *data, "--port", "0"],
        "demo": ["--out", str(out)],
        "erf": [*checkpoint, *data, "--split", "all", "--crop", "16", "--out", str(out)],
    }[command]


def test_every_command_is_classified():
    assert set(commands()) <= {*COMPUTING, *NOT_COMPUTING}


@pytest.mark.parametrize("name", COMPUTING)
def test_every_computing_command_takes_any_device(name):
    command = commands().get(name)
    if command is None:
        pytest.skip(f"vessel-lens {name} is not wired into the command line yet")
    options = {o: p for p in command.params for o in p.opts}
    assert "--device" in options
    assert "cuda:N" in options["--device"].help


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has CUDA; checked where there is none"
)
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("name", COMPUTING)
def test_cuda_where_there_is_none_is_one_error_line(name, device, workspace, tmp_path, capsys):
    if name not in commands():
        pytest.skip(f"vessel-lens {name} is not wired into the command line yet")
    out = tmp_path / "out"
    status = main([name, *arguments(name, workspace, out), "--device", device])
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: --device {device}: CUDA is not available on this machine"
    ]
    assert not out.exists()


@pytest.mark.parametrize("name", ["evaluate", "jacobian"])
def test_an_unknown_device_is_one_error_line(name, workspace, tmp_path, capsys):
    status = main([name, *arguments(name, workspace, tmp_path / "out"), "--device", "tpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and len(err) == 1
    assert err[0].startswith("error: --device 'tpu'")
