"""``vessel-lens jacobian``: stores per image, pixel choices, overwrite rules, resume, torchrun."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
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
from vessel_lens.interpret.jacobian.store import JacobianStore
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
def setup(tmp_path, make_dataset, tiny_checkpoint):
    checkpoint = tiny_checkpoint
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
    args = common(checkpoint, data, out, "--crop", "16", "--chunk-rows", "16")
    run(*args)
    first = load_jacobian(out / "s00.zarr")[0]
    capsys.readouterr()
    run(*args)
    assert "computed 0 block(s)" in capsys.readouterr().out
    settings = (out / "jacobian-run.json").read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "jacobian-run.json").stat().st_mode) == 0o666 & ~umask
    with pytest.raises(ConfigError, match="finished Jacobian computed with different --output"):
        run(*args, "--output", "logit")
    assert torch.equal(load_jacobian(out / "s00.zarr")[0], first)
    assert (out / "jacobian-run.json").read_text() == settings  # a refused run changes nothing
    run(*args, "--output", "logit", "--overwrite")
    rows, meta = load_jacobian(out / "s00.zarr")
    assert meta["output"] == "logit" and not torch.equal(rows, first)


def test_store_interrupted_while_being_created_is_rebuilt_but_other_folders_are_kept(setup):
    checkpoint, data, out = setup
    args = common(checkpoint, data, out, "--crop", "16", "--images", "s00")
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
    options = ("--crop", "16", "--block-rows", "2", "--chunk-rows", "2")
    args = common(checkpoint, data, out, *options)
    total = 2 * 16 * 16 // 2
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
    args = common(checkpoint, data, out, "--crop", "16", "--images", "s00", "--block-rows", "32")
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


def test_rows_per_pass_are_never_part_of_a_store(setup, capsys):
    # A huge --chunk-rows once became the store's block size: zarr then allocated whole
    # blocks of 10^9 rows (a MemoryError) in this run and in every later one.
    checkpoint, data, out = setup
    args = common(checkpoint, data, out, "--crop", "16", "--images", "s00")
    run(*args, "--chunk-rows", "1000000000")
    rows, meta = load_jacobian(out / "s00.zarr")
    assert (
        meta["chunk_rows"] == 256 and "1000000000" not in (out / "s00.zarr/zarr.json").read_text()
    )
    model, _ = load_model(checkpoint)
    torch.testing.assert_close(rows, jacobian(model, meta["image"]), rtol=0, atol=1e-6)
    capsys.readouterr()
    run(*args)
    assert "computed 0 block(s)" in capsys.readouterr().out


@pytest.mark.parametrize("chunk_rows", ["1", "3", "8", "50"])
def test_an_interrupted_store_resumes_with_any_rows_per_pass(setup, capsys, chunk_rows):
    checkpoint, data, out = setup
    args = common(checkpoint, data, out, "--crop", "16", "--images", "s01", "--block-rows", "8")
    run(*args, "--chunk-rows", "5")
    store = out / "s01.zarr"
    assert load_jacobian(store)[1]["chunk_rows"] == 8
    for block in (3, 4, 5, 9, 31):  # as if the run had been killed before these were done
        (store / "done" / "c" / str(block)).unlink()
    capsys.readouterr()
    run(*args, "--chunk-rows", chunk_rows)
    assert "computed 5 block(s) (40 rows)" in capsys.readouterr().out
    rows, meta = load_jacobian(store)
    model, _ = load_model(checkpoint)
    torch.testing.assert_close(rows, jacobian(model, meta["image"]), rtol=0, atol=1e-6)


def test_options_whose_memory_cannot_fit_are_refused_before_anything_is_written(
    tmp_path, make_dataset
):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "m.pt", create_model("resnet_seg", width=4), "resnet_seg", {"width": 4}
    )
    data = make_dataset(count=1, size=(512, 512))
    out = tmp_path / "grads"
    args = common(checkpoint, data, out, "--crop", "0")
    # One pass over all 262,144 rows of a 512x512 image needs terabytes.
    with pytest.raises(ConfigError) as info:
        run(*args, "--chunk-rows", "1000000000", "--yes")
    message = str(info.value)
    assert message.startswith("--chunk-rows 1000000000: a backward pass over 262144 rows of s00")
    assert re.search(r"would need about [\d.]+ TiB of memory, but [\d.]+ \w+ is available", message)
    assert "\n" not in message and not out.exists()
    with pytest.raises(ConfigError, match=r"^--block-rows 1000000000: writing a block of 262144"):
        run(*args, "--block-rows", "1000000000", "--yes")
    assert not out.exists()


def test_stores_over_2_gib_need_yes_and_the_estimate_is_said(tmp_path, make_dataset):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "m.pt", create_model("resnet_seg", width=4), "resnet_seg", {"width": 4}
    )
    data = make_dataset(count=1, size=(256, 256))
    out = tmp_path / "grads"
    # 65,536 rows of 65,536 float32 values each.
    with pytest.raises(ConfigError) as info:
        run(*common(checkpoint, data, out, "--crop", "0"))
    message = str(info.value)
    assert "1 new store(s) would take up to 16.00 GiB on disk (uncompressed)" in message
    assert "pass --yes" in message and "\n" not in message
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"up to 4\.00 GiB"):
        run(*common(checkpoint, data, out, "--crop", "0", "--dtype", "uint8"))
    assert not out.exists()


def test_yes_lets_a_large_run_start(setup, monkeypatch):
    from vessel_lens.interpret.jacobian import budget as _budget

    checkpoint, data, out = setup
    monkeypatch.setattr(_budget, "CONFIRM_BYTES", 300_000)  # two 16x16 stores: 524,288 bytes
    args = common(checkpoint, data, out, "--crop", "16")
    with pytest.raises(ConfigError, match=r"2 new store\(s\) would take up to 512.00 KiB"):
        run(*args)
    assert not out.exists()
    run(*args, "--yes")
    assert load_jacobian(out / "s01.zarr")[1]["done"] == 1.0
    run(*args)  # finished stores are not new: nothing to confirm


@pytest.mark.parametrize("crop", ["1", "8", "15"])
def test_crops_smaller_than_the_smallest_image_are_refused(setup, crop):
    checkpoint, data, out = setup
    with pytest.raises(ConfigError) as info:
        run(*common(checkpoint, data, out, "--crop", crop))
    message = str(info.value)
    assert message.startswith(f"--crop {crop}: crops must be at least 16 pixels a side")
    assert "\n" not in message and not out.exists()


def test_the_progress_label_says_which_image_of_how_many(setup, capsys):
    checkpoint, data, out = setup
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    args = ["jacobian", *common(checkpoint, data, out, "--crop", "16", "--block-rows", "64")]
    get_command(app).main(args=args, standalone_mode=False)
    err = capsys.readouterr().err
    labels = re.findall(r"(image \d/\d s\d\d):", err)
    assert labels and set(labels) == {"image 1/2 s00", "image 2/2 s01"}, err[-500:]
    assert labels.index("image 2/2 s01") > labels.index("image 1/2 s00")
    assert re.search(r"image 2/2 s01: 100%.*512/512", err), err[-300:]


def test_a_store_trapped_by_an_older_version_is_rebuilt(setup, capsys):
    # Older versions stored --chunk-rows as the block size: a store of 256 rows in one block of
    # 10^9 rows could never be written, by that run or any later one.
    from vessel_lens.interpret.jacobian.store import JacobianStore

    checkpoint, data, out = setup
    args = common(checkpoint, data, out, "--crop", "16", "--images", "s00")
    run(*args)
    good, _ = load_jacobian(out / "s00.zarr")
    old = JacobianStore.open(out / "s00.zarr")
    group = old.group
    arrays = {name: torch.from_numpy(np.asarray(group[name][...])) for name in ("pixels", "image")}
    JacobianStore.create(
        out / "s00.zarr",
        pixels=arrays["pixels"],
        image=arrays["image"],
        probability=torch.from_numpy(np.asarray(group["probability"][...])),
        source_shape=tuple(old.attrs["source_shape"]),
        chunk_rows=10**9,
        dtype="float32",
        attrs={k: v for k, v in old.attrs.items() if k not in ("rows", "chunk_rows", "format")},
        replace=True,
    )
    capsys.readouterr()
    run(*args)
    assert "computed 1 block(s) (256 rows)" in capsys.readouterr().out
    rows, meta = load_jacobian(out / "s00.zarr")
    assert meta["chunk_rows"] == 256 and torch.equal(rows, good)


def test_an_unfinished_store_whose_blocks_cannot_fit_is_named(setup, monkeypatch):
    from vessel_lens.interpret.jacobian import budget as _budget

    checkpoint, data, out = setup
    args = common(checkpoint, data, out, "--crop", "16", "--images", "s00", "--block-rows", "64")
    run(*args)
    (out / "s00.zarr" / "done" / "c" / "2").unlink()
    monkeypatch.setattr(_budget, "available_memory", lambda device: 100_000)
    with pytest.raises(ConfigError) as info:
        run(*args)
    message = str(info.value)
    assert message.startswith(f"{out / 's00.zarr'}: writing one of its blocks of 64 rows")
    assert "pass --overwrite to recreate it with smaller blocks" in message
