"""Runs that stop: SIGTERM handled like Ctrl-C, a signal during a save waiting for it, and a
run killed before its first checkpoint started again (issue 17 item 6, issue 16 item 6)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vessel_lens.cli import main
from vessel_lens.models import read_checkpoint

ARGS = ["--width", "4", "--crop-size", "16", "--crops-per-image", "2", "--batch-size", "4",
        "--device", "cpu", "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_sigterm_stops_training_like_ctrl_c(tmp_path, make_dataset):
    data = make_dataset(count=5, size=(40, 40))
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "vessel_lens", "train", "--out", str(out), "--data", str(data),
         "--epochs", "200", *ARGS],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    metrics = out / "metrics.csv"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    said = re.search(
        rf"terminated: {re.escape(str(out / 'last.pt'))} holds epoch (\d+); continue with: "
        rf"vessel-lens train --resume {re.escape(str(out))}",
        stdout,
    )
    assert said, stdout
    assert stderr.strip().splitlines()[-1] == "terminated" and "Traceback" not in stderr
    epoch = int(said.group(1))
    assert epoch >= 2 and read_checkpoint(out / "last.pt").training["epoch"] == epoch
    assert not list(out.glob(".*.tmp")) and not (out / ".vessel-lens.lock").exists()
    assert main(["train", "--resume", str(out), "--epochs", str(epoch + 1), "--no-progress"]) == 0
    assert read_checkpoint(out / "last.pt").training["epoch"] == epoch + 1


def test_a_signal_during_a_save_waits_for_the_save():
    from vessel_lens.interrupts import Terminated, interrupts_deferred, sigterm_as_interrupt

    steps = []
    with pytest.raises(Terminated), sigterm_as_interrupt() as received:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # Python runs handlers between bytecodes: here, if not deferred
            steps.append("saved")
        steps.append("not reached")
    assert steps == ["saved"] and received == [signal.SIGTERM]


def stopped_before_first_checkpoint(run, data):
    """The state of a run killed between writing config.yaml and finishing its first save:
    config.yaml, splits/ and the save's temporary file (the window is too short to hit with a
    real kill reliably, so the folder is made by a real run and cut back to that state)."""
    assert main(["train", "--out", str(run), "--data", str(data), "--epochs", "1", *ARGS]) == 0
    for name in ("last.pt", "best.pt", "metrics.csv", "curves.png"):
        (run / name).unlink()
    (run / ".last.pt.k2x9q1.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")


@pytest.mark.parametrize("how", ["resume", "restart"])
def test_run_killed_before_its_first_checkpoint_starts_again(how, tmp_path, make_dataset, capsys):
    data = make_dataset(count=5, size=(40, 40))
    run = tmp_path / "run"
    stopped_before_first_checkpoint(run, data)
    capsys.readouterr()
    if how == "resume":
        args = ["train", "--resume", str(run), "--no-progress"]
    else:
        args = ["train", "--out", str(run), "--data", str(data), "--epochs", "1", *ARGS]
    with pytest.warns(UserWarning, match="before its first checkpoint; starting") as notes:
        assert main(args) == 0, capsys.readouterr().err
    assert len(notes) == 1 and str(run) in str(notes[0].message)
    assert read_checkpoint(run / "last.pt").training["epoch"] == 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    assert not list(run.glob(".*.tmp"))  # the killed save's temporary file is gone


def test_a_finished_run_is_still_refused_without_overwrite(tmp_path, make_dataset, capsys):
    data = make_dataset(count=5, size=(40, 40))
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--data", str(data), "--epochs", "1", *ARGS]
    assert main(args) == 0
    assert main(args) == 2
    assert f"{run}: already holds a run; continue it with --resume" in capsys.readouterr().err
