"""Bad input to ``data synth``, ``predict`` and ``evaluate`` is one ``error:`` line and a non-zero
exit, checked before anything is written; nothing the user made is overwritten or lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vessel_lens.cli import main
from vessel_lens.data import write_synthetic_dataset
from vessel_lens.data.source import synthetic_dataset
from vessel_lens.errors import ConfigError
from vessel_lens.models import create_model, save_checkpoint


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("input_errors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        grey = create_model("resnet_seg", width=2, in_channels=1)
        colour = create_model("resnet_seg", width=2, in_channels=3)
    save_checkpoint(root / "tiny.pt", grey, "resnet_seg", {"width": 2})
    save_checkpoint(root / "rgb.pt", colour, "resnet_seg", {"width": 2, "in_channels": 3})
    write_synthetic_dataset(root / "data", count=3, size=32, progress=False)
    return root


def only_error(capsys) -> str:
    """The one ``error:`` line written (asserting there is no traceback or internal error)."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "internal error" not in lines[0]
    return lines[0]


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def grey_png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(path)
    return path


# --- data synth ---------------------------------------------------------------------------


def test_synth_bad_size_creates_nothing_so_the_corrected_rerun_works(capsys, tmp_path):
    out = tmp_path / "s8"
    assert main(["data", "synth", "--out", str(out), "--size", "8", "--count", "1"]) != 0
    assert "minimum of 16" in only_error(capsys)
    assert not out.exists()
    assert main(["data", "synth", "--out", str(out), "--size", "32", "--count", "1"]) == 0
    assert len(files_under(out)) == 3


def test_synth_huge_size_is_one_line(capsys, tmp_path):
    out = tmp_path / "big"
    assert main(["data", "synth", "--out", str(out), "--size", "100000", "--count", "1"]) != 0
    assert "above the limit of 4096" in only_error(capsys)
    assert not out.exists()


def test_synth_out_that_is_a_file_is_one_line(capsys, tmp_path):
    out = tmp_path / "afile"
    out.write_text("mine")
    assert main(["data", "synth", "--out", str(out), "--size", "32", "--count", "1"]) != 0
    line = only_error(capsys)
    assert str(out) in line and "not a folder" in line
    assert out.read_text() == "mine"


def test_synth_never_writes_beside_user_files(capsys, tmp_path):
    out = tmp_path / "mine"
    grey_png(out / "labels" / "synth0000.png", value=7)
    before = files_under(out)
    assert main(["data", "synth", "--out", str(out), "--size", "32", "--count", "1"]) != 0
    line = only_error(capsys)
    assert str(out) in line and "not empty" in line
    assert files_under(out) == before


# --- predict ------------------------------------------------------------------------------


def predict(root: Path, images: Path, out: Path, *extra: str, checkpoint: str = "tiny.pt"):
    return main(
        [
            "predict",
            "--checkpoint",
            str(root / checkpoint),
            "--images",
            str(images),
            "--out",
            str(out),
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_predict_refuses_two_inputs_with_one_stem(capsys, workspace, tmp_path):
    images = tmp_path / "images"
    png, tif = grey_png(images / "a.png"), images / "a.tif"
    Image.fromarray(np.full((32, 32), 50, dtype=np.uint8)).save(tif)
    out = tmp_path / "out"
    assert predict(workspace, images, out) != 0
    line = only_error(capsys)
    assert str(png) in line and str(tif) in line
    assert not out.exists()


def test_predict_out_that_is_a_file_is_one_line(capsys, workspace, tmp_path):
    out = tmp_path / "afile"
    out.write_text("mine")
    assert predict(workspace, workspace / "data" / "images", out) != 0
    line = only_error(capsys)
    assert str(out) in line and "exists and is not a folder" in line
    assert out.read_text() == "mine"


def test_predict_unsupported_single_file_leaves_no_folder(capsys, workspace, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    out = tmp_path / "new" / "out"
    assert predict(workspace, notes, out) != 0
    assert "unsupported file type .txt" in only_error(capsys)
    assert not (tmp_path / "new").exists()


def test_predict_failing_midway_removes_only_what_it_made(capsys, workspace, tmp_path):
    out = tmp_path / "out"
    # grey images for a colour model: refused when the first image is read
    assert predict(workspace, workspace / "data" / "images", out, checkpoint="rgb.pt") != 0
    assert "the model expects 3" in only_error(capsys)
    assert not out.exists()

    out.mkdir()
    kept = grey_png(out / "keep.png")
    assert predict(workspace, workspace / "data" / "images", out, checkpoint="rgb.pt") != 0
    only_error(capsys)
    assert files_under(out) == {kept: kept.read_bytes()}


def test_predict_never_overwrites_its_own_inputs(capsys, workspace, tmp_path):
    folder = tmp_path / "images"
    grey_png(folder / "a.png")
    grey_png(folder / "a_mask.png", value=200)
    before = files_under(folder)
    assert predict(workspace, folder, folder, "--overwrite") != 0
    line = only_error(capsys)
    assert str(folder / "a_mask.png") in line and "input" in line
    assert files_under(folder) == before


def test_predict_still_writes_every_output(capsys, workspace, tmp_path):
    out = tmp_path / "out"
    assert predict(workspace, workspace / "data" / "images", out) == 0
    assert len(files_under(out)) == 6


# --- evaluate --split ---------------------------------------------------------------------


def test_unknown_split_name_lists_the_valid_ones():
    dataset = synthetic_dataset(count=3, size=32)
    with pytest.raises(ConfigError, match="use one of train, val, test, all"):
        dataset.subset("nonexisting")
    assert len(dataset.subset("all")) == 3


def test_evaluate_unknown_split_is_one_line(capsys, workspace, tmp_path):
    out = tmp_path / "evaluation"
    status = main(
        [
            "evaluate",
            "--checkpoint",
            str(workspace / "tiny.pt"),
            "--data",
            str(workspace / "data"),
            "--split",
            "nonexisting",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert status != 0
    line = only_error(capsys)
    assert "'nonexisting'" in line and "train, val, test, all" in line
    assert not out.exists()
