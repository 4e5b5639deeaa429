"""Two writers, one folder (issue 17, item 1), reproduced with real processes: run A is paused
with SIGSTOP part way, run B writes into the same folder with --overwrite, then A resumes.

The lock refuses B in one line naming A. Where no lock can be taken (a file system without
locks, simulated by making ``flock`` fail with ENOLCK), the generations recorded in stores and
run folders still catch the mix: A says that its folder was taken over, ``load_jacobian`` and
``train --resume`` refuse the mixed results, and a rerun computes the foreign blocks again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.helpers import one_error_line
from vessel_lens.cli import main
from vessel_lens.errors import DataError
from vessel_lens.interpret import load_jacobian
from vessel_lens.models import create_model, read_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vessel_lens", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pause_when(process: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGSTOP)
    assert process.poll() is None, process.stderr.read()


def without_locks(monkeypatch) -> None:
    """A file system where ``flock`` is not supported (some network mounts)."""

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)


def test_jacobian_second_writer_is_refused_and_mixed_blocks_are_caught(
    tmp_path, make_dataset, monkeypatch, capsys
):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "model.pt", create_model("resnet_seg", width=4), "resnet_seg", {"width": 4}
    )
    data = make_dataset(count=1, size=(24, 24))
    out = tmp_path / "grads"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "all", "--crop",
            "16", "--block-rows", "2", "--chunk-rows", "2", "--strategy", "loop", "--out", str(out),
            "--no-progress"]  # fmt: skip
    store = out / "s00.zarr"

    def blocks_done() -> int:
        return sum(1 for _ in store.glob("done/c/*"))

    run_a = start("jacobian", *args, "--output", "probability")
    pause_when(run_a, lambda: blocks_done() >= 12)
    paused_at = blocks_done()
    try:
        assert 12 <= paused_at < 128, "run A was not paused part way"
        assert main(["jacobian", *args, "--output", "logit", "--overwrite"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {out}: in use by vessel-lens jacobian (PID {run_a.pid}, ")
        with monkeypatch.context() as patch, pytest.warns(UserWarning, match="cannot be locked"):
            without_locks(patch)
            assert main(["jacobian", *args, "--output", "logit", "--overwrite"]) == 0
    finally:
        run_a.send_signal(signal.SIGCONT)
    _, err = run_a.communicate(timeout=240)
    assert run_a.returncode != 0
    assert "was created again by another run while this one wrote into it" in one_error_line(err)

    foreign = 128 - paused_at  # A's blocks written after B had finished
    with pytest.raises(DataError, match=f"{foreign} of 128 blocks were written by another run"):
        load_jacobian(store)
    with pytest.warns(UserWarning, match=f"{foreign} blocks were written by another run"):
        assert main(["jacobian", *args, "--output", "logit"]) == 0
    assert f"computed {foreign} block(s)" in capsys.readouterr().out
    rows, meta = load_jacobian(store)
    reference = tmp_path / "reference"
    clean = [*args[:-3], "--out", str(reference), "--no-progress", "--output", "logit"]
    assert main(["jacobian", *clean]) == 0
    expected, _ = load_jacobian(reference / "s00.zarr")
    assert meta["output"] == "logit"
    assert np.array_equal(rows.numpy(), expected.numpy())


def test_train_second_writer_is_refused_and_a_mixed_run_is_not_resumed(
    tmp_path, make_dataset, monkeypatch, capsys
):
    data = make_dataset(count=5, size=(40, 40))
    out = tmp_path / "run"
    args = ["--data", str(data), "--width", "4", "--crop-size", "16", "--crops-per-image", "2",
            "--batch-size", "4", "--device", "cpu", "--no-progress"]  # fmt: skip

    def epochs_written() -> int:
        path = out / "metrics.csv"
        return max(len(path.read_text().splitlines()) - 1, 0) if path.exists() else 0

    run_a = start("train", "--out", str(out), "--epochs", "6", *args)
    pause_when(run_a, lambda: epochs_written() >= 1)
    try:
        assert main(["train", "--out", str(out), "--overwrite", "--epochs", "1", *args]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {out}: in use by vessel-lens train (PID {run_a.pid}, ")
        with monkeypatch.context() as patch, pytest.warns(UserWarning, match="cannot be locked"):
            without_locks(patch)
            assert main(["train", "--out", str(out), "--overwrite", "--epochs", "1", *args]) == 0
    finally:
        run_a.send_signal(signal.SIGCONT)
    _, err = run_a.communicate(timeout=240)
    assert run_a.returncode == 1
    assert "config.yaml was replaced by another run while this one trained" in one_error_line(err)

    # config.yaml (and best.pt) are B's, last.pt and metrics.csv A's
    config_id = re.search(r"run_id: (\w+)", (out / "config.yaml").read_text()).group(1)
    assert read_checkpoint(out / "last.pt").metadata["run_id"] != config_id
    assert len((out / "metrics.csv").read_text().splitlines()) == 7  # A's six epochs
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "last.pt belongs to another run" in line and "start it again with --overwrite" in line
