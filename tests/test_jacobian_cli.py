"""``vessel-lens jacobian``: stores per image, pixel choices, overwrite rules, resume, torchrun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import zarr
from typer.main import get_command

from vessel_lens.cli.jacobian import register
from vessel_lens.errors import ConfigError, DataError
from vessel_lens.interpret import jacobian, load_jacobian
from vessel_lens.interpret.store import JacobianStore
from vessel_lens.models import create_model, load_model, save_checkpoint

RUNNER = """
import sys, typer
from typer.main import get_command
from vessel_lens.cli.jacobian import register
app = typer.Typer()
register(app)
app.callback()(lambda: None)
sys.exit(get_command(app).main(args=sys.argv[1:], standalone_mode=False))
"""


def run(*args: str) -> None:
    """Run the command in this process, as ``vessel-lens jacobian ...`` would."""
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    get_command(app).main(args=["jacobian", *args, "--no-progress"], standalone_mode=False)


@pytest.fixture
def setup(tmp_path, make_dataset):
    torch.manual_seed(0)
    model = create_model("resnet_seg", width=4)
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, "resnet_seg", {"width": 4})
    data = make_dataset(count=2, size=(24, 28))
    return checkpoint, data, tmp_path / "grads"


def common(checkpoint: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--split",
        "all",
        "--out",
        str(out),
        *extra,
    ]


def test_stores_hold_the_rows_of_the_centre_crop_and_their_provenance(setup):
    checkpoint, data, out = setup
    run(*common(checkpoint, data, out, "--crop", "16", "--images", "s01", "--dtype", "float16"))
    assert sorted(p.name for p in out.glob("*.zarr")) == ["s01.zarr"]
    rows, meta = load_jacobian(out / "s01.zarr")
    model, _ = load_model(checkpoint)
    image = meta["image"]
    assert image.shape == (1, 16, 16)
    assert meta["crop_box"] == [4, 6, 16, 16]
    assert meta["image_path"].endswith("s01.png") and meta["checkpoint"] == str(checkpoint)
    assert meta["model_name"] == "resnet_seg" and meta["model_kwargs"] == {"width": 4}
    assert meta["output"] == "probability" and meta["dtype"] == "float16"
    assert meta["pixels"].shape == (256, 2)
    expected = jacobian(model, image)
    assert torch.equal(rows, expected.half().float())
    probability = model(image[None]).softmax(1)[0, 1].detach()
    torch.testing.assert_close(meta["probability"], probability)


def test_pixel_stride_and_explicit_pixels(setup):
    checkpoint, data, out = setup
    run(*common(checkpoint, data, out, "--crop", "16", "--images", "s00", "--pixel-stride", "4"))
    rows, meta = load_jacobian(out / "s00.zarr")
    assert meta["pixels"].tolist() == [[r, c] for r in range(0, 16, 4) for c in range(0, 16, 4)]
    model, _ = load_model(checkpoint)
    torch.testing.assert_close(rows, jacobian(model, meta["image"], pixels=meta["pixels"]))
    run(*common(checkpoint, data, out / "two", "--crop", "16", "--pixels", "1:2, 15:0"))
    rows, meta = load_jacobian(out / "two" / "s01.zarr")
    assert meta["pixels"].tolist() == [[1, 2], [15, 0]] and rows.shape == (2, 1, 16, 16)


def test_finished_stores_are_skipped_never_silently_replaced(setup, capsys):
    checkpoint, data, out = setup
    args = common(checkpoint, data, out, "--crop", "8", "--chunk-rows", "16")
    run(*args)
    first = load_jacobian(out / "s00.zarr")[0]
    capsys.readouterr()
    run(*args)
    assert "computed 0 block(s)" in capsys.readouterr().out
    settings = (out / "jacobian-run.json").read_text()
    with pytest.raises(ConfigError, match="finished Jacobian computed with different output"):
        run(*args, "--output", "logit")
    assert torch.equal(load_jacobian(out / "s00.zarr")[0], first)
    assert (out / "jacobian-run.json").read_text() == settings  # a refused run changes nothing
    run(*args, "--output", "logit", "--overwrite")
    rows, meta = load_jacobian(out / "s00.zarr")
    assert meta["output"] == "logit" and not torch.equal(rows, first)


def test_store_interrupted_while_being_created_is_rebuilt_but_other_folders_are_kept(setup):
    checkpoint, data, out = setup
    args = common(checkpoint, data, out, "--crop", "8", "--images", "s00")
    run(*args)
    shutil.rmtree(out / "s00.zarr" / "done")
    run(*args)
    assert load_jacobian(out / "s00.zarr")[1]["done"] == 1.0
    shutil.rmtree(out / "s00.zarr")
    (out / "s00.zarr").mkdir()
    (out / "s00.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a readable Jacobian store"):
        run(*args)
    assert (out / "s00.zarr" / "notes.txt").read_text() == "mine"
    shutil.rmtree(out / "s00.zarr")
    (out / "s00.zarr").write_text("a file of mine")
    with pytest.raises((DataError, ConfigError)) as info:
        run(*args, "--overwrite")
    assert "s00.zarr" in str(info.value) and "\n" not in str(info.value)
    assert (out / "s00.zarr").read_text() == "a file of mine"


def test_bad_options_are_reported(setup):
    checkpoint, data, out = setup
    with pytest.raises(ConfigError, match="ROW:COL"):
        run(*common(checkpoint, data, out, "--pixels", "3"))
    with pytest.raises(ConfigError, match="exclude each other"):
        run(*common(checkpoint, data, out, "--pixels", "1:1", "--pixel-stride", "2"))
    with pytest.raises(ConfigError, match="--dtype"):
        run(*common(checkpoint, data, out, "--dtype", "int8"))


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def blocks_done(out: Path) -> int:
    return sum(1 for _ in out.glob("*.zarr/done/c/*"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bits(setup, tmp_path):
    checkpoint, data, out = setup
    options = ("--crop", "12", "--chunk-rows", "2")
    args = common(checkpoint, data, out, *options)
    total = 2 * 12 * 12 // 2
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    command = [sys.executable, str(runner), "jacobian", *args, "--no-progress"]
    process = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while blocks_done(out) < 15 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = blocks_done(out)
    assert 15 <= done_before < total, "the run was not interrupted part way"
    resumed = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, check=True
    )
    assert f"computed {total - done_before} block(s)" in resumed.stdout
    assert f"{done_before} block(s) were already done" in resumed.stdout
    reference = tmp_path / "reference"
    run(*common(checkpoint, data, reference, *options))
    for stem in ("s00", "s01"):
        resumed_store = zarr.open_group(str(out / f"{stem}.zarr"), mode="r")
        reference_store = zarr.open_group(str(reference / f"{stem}.zarr"), mode="r")
        for name in ("jacobian", "probability", "pixels", "image"):
            assert np.array_equal(resumed_store[name][...], reference_store[name][...]), name
        # done flags hold each store's own random generation: compare what they mean
        resumed_done = JacobianStore.open(out / f"{stem}.zarr", "r").done()
        assert (
            resumed_done.all() and JacobianStore.open(reference / f"{stem}.zarr", "r").done().all()
        )


@pytest.mark.slow
def test_torchrun_ranks_share_one_output_folder(setup, tmp_path):
    checkpoint, data, out = setup
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    args = common(checkpoint, data, out, "--crop", "16", "--images", "s00", "--chunk-rows", "32")
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    finished = subprocess.run(
        [*launch, str(runner), "jacobian", *args, "--device", "cpu", "--no-progress"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "computed 8 block(s)" in finished.stdout
    rows, meta = load_jacobian(out / "s00.zarr")
    model, _ = load_model(checkpoint)
    torch.testing.assert_close(rows, jacobian(model, meta["image"]), rtol=0, atol=1e-6)
