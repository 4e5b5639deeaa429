"""Training in real processes: resume after SIGKILL, and DistributedDataParallel under torchrun."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vessel_lens.models import read_checkpoint
from vessel_lens.training import TrainConfig, train

pytestmark = pytest.mark.slow

ARGS = [
    "--width",
    "4",
    "--crop-size",
    "32",
    "--crops-per-image",
    "2",
    "--batch-size",
    "8",
    "--schedule",
    "cosine",
    "--device",
    "cpu",
    "--no-progress",
]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vessel_lens", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def epochs_written(run: Path) -> int:
    path = run / "metrics.csv"
    if not path.exists():
        return 0
    with path.open() as handle:
        return len(list(csv.DictReader(handle)))


def metric_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(handle)]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    reference = tmp_path / "reference"
    config = TrainConfig(
        width=4,
        crop_size=32,
        crops_per_image=2,
        batch_size=8,
        epochs=5,
        schedule="cosine",
        device="cpu",
    )
    train(config, reference, progress=False)

    run = tmp_path / "killed"
    process = subprocess.Popen(
        cli("train", "--out", str(run), "--epochs", "5", *ARGS),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while epochs_written(run) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = read_checkpoint(run / "last.pt").training["epoch"]
    assert 2 <= killed_at < 5

    result = subprocess.run(
        cli("train", "--resume", str(run), "--no-progress"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    final = read_checkpoint(run / "last.pt")
    expected = read_checkpoint(reference / "last.pt")
    assert final.training["epoch"] == 5
    for key, value in expected.state_dict.items():
        assert torch.equal(value, final.state_dict[key]), key
    assert metric_rows(run) == metric_rows(reference)
    assert not list(run.glob(".*.tmp"))


def test_torchrun_two_cpu_processes_match_one_process(tmp_path):
    """With no BatchNorm and no dropout, 2 ranks x 4 crops average the same gradients as one
    process with 8 crops, so the weights must agree; only rank 0 writes the run's files."""
    torch.set_num_threads(1)
    common = ["--norm", "none", "--dropout", "0", "--loss", "ce", "--epochs", "2"]
    single = tmp_path / "single"
    train(
        TrainConfig(
            width=4,
            crop_size=32,
            crops_per_image=2,
            batch_size=8,
            epochs=2,
            schedule="cosine",
            device="cpu",
            norm=None,
            dropout=0.0,
            loss="ce",
        ),
        single,
        progress=False,
    )
    run = tmp_path / "ddp"
    args = [a if a != "8" else "4" for a in ARGS]  # batch 4 per rank
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "vessel_lens",
            "train",
            "--out",
            str(run),
            *common,
            *args,
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size: 2" in (run / "config.yaml").read_text()
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in single.iterdir())
    ddp, ref = read_checkpoint(run / "last.pt"), read_checkpoint(single / "last.pt")
    for key, value in ref.state_dict.items():
        torch.testing.assert_close(ddp.state_dict[key], value, rtol=1e-4, atol=1e-5)
    ddp_rows, ref_rows = metric_rows(run), metric_rows(single)
    for a, b in zip(ddp_rows, ref_rows, strict=True):
        for key in ("train_loss", "val_loss", "val_dice"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-3, abs=1e-4)


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    return subprocess.run(
        [*launch, "2", "-m", "vessel_lens", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_torchrun_with_fewer_crops_than_processes_a_time_limit_and_a_taken_folder(tmp_path):
    """One training crop for two processes used to hang; a time limit measured on each
    process's own clock used to stop them at different epochs; a refused --out was an
    internal error on process 1. The time-limited run still validates and keeps best.pt."""
    from vessel_lens.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, count=6, size=48, progress=False)
    run = tmp_path / "run"
    common = ["--data", str(data), "--width", "4", "--crop-size", "32", "--device", "cpu"]
    small = ["--crops-per-image", "1", "--batch-size", "2", "--split-fractions", "0.17,0.5,0.33"]
    limited = ["--epochs", "50", "--val-every", "3", "--max-minutes", "0.0001", "--no-progress"]
    result = torchrun("train", "--out", str(run), *common, *small, *limited)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("stopped after 1 epochs (time limit") == 1
    assert (run / "best.pt").exists() and epochs_written(run) == 1
    again = torchrun("train", "--out", str(run), *common, *small, *limited)
    assert again.returncode != 0  # torchrun reports its processes' failure as 1
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, again.stderr[-2000:]  # one line from each process, the same
    assert all("already holds a run" in line for line in errors), errors
