"""``vessel-lens erf`` and ``erf-stats``: outputs, resume, overwrite rules, stored Jacobians,
torchrun, bad options, and statistics on a tiny set whose classes are known."""

from __future__ import annotations

import csv
import json
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
from typer.main import get_command

from vessel_lens.cli.erf import register
from vessel_lens.cli.jacobian import register as register_jacobian
from vessel_lens.data.source import open_dataset
from vessel_lens.errors import ConfigError, DataError
from vessel_lens.interpret.fields import run as erf_run
from vessel_lens.interpret.fields.run import ErfConfig, run_erf
from vessel_lens.interpret.fields.stats_run import StatsConfig, erf_stats
from vessel_lens.interpret.fields.store import load_receptive_field_maps, save_receptive_field_maps
from vessel_lens.interpret.fields.thresholded import receptive_field_maps
from vessel_lens.models import create_model, load_model, save_checkpoint

RUNNER = """
import sys, typer
from typer.main import get_command
from vessel_lens.cli.erf import register
app = typer.Typer()
register(app)
app.callback()(lambda: None)
sys.exit(get_command(app).main(args=sys.argv[1:], standalone_mode=False))
"""


def run(*args: str, jacobian: bool = False) -> None:
    """Run a command in this process, as ``vessel-lens erf ...`` would."""
    app = typer.Typer()
    (register_jacobian if jacobian else register)(app)
    app.callback()(lambda: None)
    get_command(app).main(args=[*args, "--no-progress"], standalone_mode=False)


@pytest.fixture
def setup(tmp_path, make_dataset, tiny_checkpoint):
    checkpoint = tiny_checkpoint
    data = make_dataset(count=3, size=(24, 28))
    return checkpoint, data, tmp_path / "erf"


def common(checkpoint, data, out, *extra: str) -> list[str]:
    return [
        "erf",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--split",
        "all",
        "--out",
        str(out),
        "--crop",
        "16",
        *extra,
    ]


def config(checkpoint, data, out, **changes) -> ErfConfig:
    options = dict(
        out=out,
        checkpoint=str(checkpoint),
        data=str(data),
        split="all",
        crop=16,
        progress=False,
        figures=False,
    )
    return ErfConfig(**{**options, **changes})


def test_outputs_per_image_and_per_run(setup):
    checkpoint, data, out = setup
    run(*common(checkpoint, data, out, "--fractions", "0.01,0.1", "--images", "s00,s02"))
    assert sorted(p.name for p in out.iterdir()) == [
        "erf-run.json",
        "s00.erf.npz",
        "s00_erf.png",
        "s02.erf.npz",
        "s02_erf.png",
        "summary.csv",
    ]
    maps = load_receptive_field_maps(out / "s00.erf.npz")
    assert maps.fractions == (0.01, 0.1) and maps.mode == "global"
    assert maps.metadata["crop_box"] == [4, 6, 16, 16] and maps.metadata["stem"] == "s00"
    model, _ = load_model(checkpoint)
    image = open_dataset(str(data)).samples["s00"].image[:, 4:20, 6:22]
    direct = receptive_field_maps(model, image, (0.01, 0.1), "global")
    assert torch.equal(maps.count, direct.count) and torch.equal(maps.bbox, direct.bbox)
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["stem"] for r in rows] == ["s00", "s02"] and rows[0]["pixels"] == "256"
    assert json.loads((out / "erf-run.json").read_text())["fractions"] == [0.01, 0.1]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("s00.erf.npz", "summary.csv", "erf-run.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_resume_skips_finished_images_and_an_interrupted_one_is_redone(setup, monkeypatch):
    checkpoint, data, out = setup
    original = erf_run._compute
    calls = []

    def stop_at_second(config, job, *args):
        calls.append(job.stem)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(config, job, *args)

    monkeypatch.setattr(erf_run, "_compute", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_erf(config(checkpoint, data, out))
    monkeypatch.setattr(erf_run, "_compute", original)
    assert [p.name for p in out.glob("*.erf.npz")] == ["s00.erf.npz"]
    (out / ".s01.erf.npz.x.tmp").write_bytes(b"half")  # what a kill mid-write leaves
    before = (out / "s00.erf.npz").stat().st_mtime_ns
    result = run_erf(config(checkpoint, data, out))
    assert (result.computed, result.skipped) == (2, 1)
    assert (out / "s00.erf.npz").stat().st_mtime_ns == before
    again = run_erf(config(checkpoint, data, out))
    assert (again.computed, again.skipped) == (0, 3)


def test_finished_outputs_are_never_replaced_without_overwrite(setup):
    checkpoint, data, out = setup
    args = ("--images", "s00", "--no-figures", "--fractions")
    run(*common(checkpoint, data, out, *args, "0.01"))
    with pytest.raises(ConfigError, match="different --fractions"):
        run(*common(checkpoint, data, out, *args, "0.02"))
    run(*common(checkpoint, data, out, *args, "0.02", "--overwrite"))
    assert load_receptive_field_maps(out / "s00.erf.npz").fractions == (0.02,)
    (out / "s01.erf.npz").write_bytes(b"a user's file")
    with pytest.raises(DataError, match="not a receptive-field file"):
        run(*common(checkpoint, data, out, "--images", "s01"))
    assert (out / "s01.erf.npz").read_bytes() == b"a user's file"


def test_from_jacobian_reuses_stored_rows(setup, tmp_path):
    checkpoint, data, out = setup
    grads = tmp_path / "grads"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "all"]
    run("jacobian", *args, "--crop", "16", "--out", str(grads), "--images", "s01", jacobian=True)
    run("erf", "--from-jacobian", str(grads), "--out", str(out), "--mode", "pixel", "--no-figures")
    stored = load_receptive_field_maps(out / "s01.erf.npz")
    assert stored.metadata["source"] == "jacobian" and stored.metadata["crop_box"] == [4, 6, 16, 16]
    direct_out = tmp_path / "direct"
    run(*common(checkpoint, data, direct_out, "--images", "s01", "--mode", "pixel", "--no-figures"))
    direct = load_receptive_field_maps(direct_out / "s01.erf.npz")
    assert torch.equal(stored.count, direct.count)
    assert torch.allclose(stored.probability, direct.probability)
    assert stored.metadata["weights_hash"] == direct.metadata["weights_hash"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--full",), "exclude each other"),
        (("--fractions", "abc"), "expected numbers"),
        (("--fractions", "1.5"), "must be in"),
        (("--mode", "median"), "mode"),
        (("--colouring", "maybe"), "colouring"),
        (("--channels", "mean"), "channels"),
        (("--mass-fractions", "0"), "mass fractions"),
        (("--pixel-stride", "0"), "pixel-stride"),
    ],
)
def test_bad_options_are_one_line_config_errors(setup, extra, message):
    checkpoint, data, out = setup
    with pytest.raises(ConfigError, match=message) as info:
        run(*common(checkpoint, data, out, *extra))
    assert "\n" not in str(info.value)
    assert not out.exists() or not list(out.glob("*.erf.npz"))


def test_source_options_exclude_each_other(setup, tmp_path):
    checkpoint, _, out = setup
    with pytest.raises(ConfigError, match="exactly one"):
        run("erf", "--out", str(out))
    with pytest.raises(ConfigError, match="does not apply"):
        run("erf", "--from-jacobian", str(tmp_path), "--checkpoint", str(checkpoint), "--out", "x")
    with pytest.raises(ConfigError, match="--target-class does not apply"):
        run("erf", "--from-jacobian", str(tmp_path), "--target-class", "0", "--out", "x")
    with pytest.raises(ConfigError, match="not a folder"):
        run("erf", "--from-jacobian", str(tmp_path / "none"), "--out", str(out))


@pytest.mark.slow
def test_torchrun_ranks_share_the_images(setup, tmp_path):
    checkpoint, data, out = setup
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    args = [*common(checkpoint, data, out)[:-2], "--crop", "16", "--no-figures"]
    finished = subprocess.run(
        [*launch, "2", str(runner), *args, "--device", "cpu", "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "computed 3 (768 pixels)" in finished.stdout
    assert len(list(out.glob("*.erf.npz"))) == 3 and (out / "summary.csv").exists()


def finished_maps(out: Path) -> list[Path]:
    return sorted(out.glob("*.erf.npz"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_maps(tmp_path, make_dataset):
    """SIGKILL part way through, rerun: finished images are not recomputed, an image that was
    being written is never taken as finished, and every map equals an uninterrupted run's."""
    torch.manual_seed(0)
    model = create_model("resnet_seg", width=4)
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, "resnet_seg", {"width": 4})
    data = make_dataset(count=8, size=(40, 40))
    out = tmp_path / "erf"
    args = [*common(checkpoint, data, out)[:-2], "--full", "--no-figures", "--device", "cpu"]
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    command = [sys.executable, str(runner), *args, "--no-progress"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while len(finished_maps(out)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(finished_maps(out))
    assert 2 <= done_before < 8, "the run was not interrupted part way"
    mtimes = {p.name: p.stat().st_mtime_ns for p in finished_maps(out)}
    resumed = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    assert f"computed {8 - done_before} (" in resumed.stdout
    assert f"{done_before} were already done" in resumed.stdout
    assert all(
        p.stat().st_mtime_ns == mtimes[p.name] for p in finished_maps(out) if p.name in mtimes
    )
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    reference = tmp_path / "reference"
    run(*[a if a != str(out) else str(reference) for a in args])
    assert [p.name for p in finished_maps(out)] == [p.name for p in finished_maps(reference)]
    for path in finished_maps(reference):
        expected, actual = (
            load_receptive_field_maps(path),
            load_receptive_field_maps(out / path.name),
        )
        for name in (
            "count",
            "bbox",
            "fulfillment",
            "centroid_offset",
            "mass_radius",
            "probability",
        ):
            assert np.array_equal(getattr(actual, name).numpy(), getattr(expected, name).numpy()), (
                name
            )


def known_maps(data: Path, out: Path, stem: str, crop: tuple[int, int, int, int]):
    """Maps of ``stem`` whose probability and counts are set by hand: predicted vessel =
    the label with its first column flipped; count 10 for predicted vessel, 20 for background."""
    sample = open_dataset(str(data)).samples[stem]
    top, left, h, w = crop
    image = sample.image[:, top : top + h, left : left + w]
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    maps = receptive_field_maps(conv, image, (0.1,), "pixel")
    label = sample.label[top : top + h, left : left + w]
    predicted = label.clone()
    predicted[:, 0] = ~predicted[:, 0]
    maps.probability = predicted.float() * 0.8 + 0.1
    maps.count[0] = torch.where(predicted, 10, 20).int()
    maps.metadata.update(stem=stem, crop_box=list(crop))
    save_receptive_field_maps(maps, out / f"{stem}.erf.npz")
    return label, predicted


def read_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_erf_stats_on_a_tiny_set_with_known_classes(tmp_path, make_dataset):
    data = make_dataset(count=2, size=(20, 24))
    erf_dir = tmp_path / "erf"
    erf_dir.mkdir()
    labels = [known_maps(data, erf_dir, stem, (2, 3, 16, 16)) for stem in ("s00", "s01")]
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    get_command(app).main(
        args=["erf-stats", str(erf_dir), "--data", str(data)], standalone_mode=False
    )
    stats = erf_dir / "stats"
    by_class = {(r["grouping"], r["group"]): r for r in read_rows(stats / "stats_by_class.csv")}
    truth = torch.stack([label for label, _ in labels])
    predicted = torch.stack([p for _, p in labels])
    expected = {
        "TP": int((predicted & truth).sum()),
        "FP": int((predicted & ~truth).sum()),
        "FN": int((~predicted & truth).sum()),
        "TN": int((~predicted & ~truth).sum()),
    }
    for outcome, pixels in expected.items():
        assert int(by_class[("outcome", outcome)]["pixels"]) == pixels
    assert float(by_class[("predicted", "vessel")]["count_10%_mean"]) == 10.0
    assert float(by_class[("predicted", "background")]["count_10%_mean"]) == 20.0
    answer = {r["metric"]: r for r in read_rows(stats / "stats_answer.csv")}
    assert float(answer["count_10%"]["ratio_background_to_vessel"]) == 2.0
    assert answer["count_10%"]["images_background_larger"] == "2"
    # The bands are 5 pixels wide: every pixel's nearest vessel has width 5.
    by_width = read_rows(stats / "stats_by_width.csv")
    assert sum(int(r["pixels"]) for r in by_width if r["width"] == "(4, 6]") == 2 * 256
    # Centreline pixels (distance 0) are inside the label: predicted vessel except column 0.
    by_distance = read_rows(stats / "stats_by_distance.csv")
    zero = {r["predicted"]: int(r["pixels"]) for r in by_distance if r["distance"] == "<= 0"}
    assert zero == {"vessel": 2 * 15, "background": 2 * 1}
    for name in ("stats_by_outcome.png", "stats_by_distance.png", "stats_by_width.png"):
        assert (stats / name).stat().st_size > 1000
    with pytest.raises(ConfigError, match="overwrite"):
        get_command(app).main(
            args=["erf-stats", str(erf_dir), "--data", str(data)], standalone_mode=False
        )


def test_erf_stats_count_only_pixels_inside_the_masks(tmp_path, make_dataset):
    data = make_dataset(count=2, size=(20, 24), masks=True)
    erf_dir = tmp_path / "erf"
    erf_dir.mkdir()
    crop = (2, 3, 16, 16)
    labels = [known_maps(data, erf_dir, stem, crop) for stem in ("s00", "s01")]
    samples = open_dataset(str(data)).samples
    result = erf_stats(StatsConfig(erf_dir=erf_dir, data=str(data)))
    inside = torch.stack([samples[s].mask[2:18, 3:19] for s in ("s00", "s01")])
    truth = torch.stack([label for label, _ in labels])[inside]
    predicted = torch.stack([p for _, p in labels])[inside]
    by_class = {
        (r["grouping"], r["group"]): r for r in read_rows(erf_dir / "stats" / "stats_by_class.csv")
    }
    assert int(by_class[("outcome", "TP")]["pixels"]) == int((predicted & truth).sum())
    assert int(by_class[("outcome", "FP")]["pixels"]) == int((predicted & ~truth).sum())
    assert int(by_class[("outcome", "TN")]["pixels"]) == int((~predicted & ~truth).sum())
    assert len(result.pixels["predicted"]) == int(inside.sum()) < 2 * 16 * 16
    outside = 2 * 16 * 16 - int(inside.sum())
    assert f"left out {outside} pixels outside the field-of-view masks" in result.lines


def test_two_stores_of_one_image_are_refused(setup, tmp_path):
    checkpoint, data, out = setup
    grads = tmp_path / "grads"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "all"]
    run("jacobian", *args, "--crop", "16", "--out", str(grads), "--images", "s01", jacobian=True)
    shutil.copytree(grads / "s01.zarr", grads / "s01_again.zarr")
    with pytest.raises(DataError, match="both hold image 's01'"):
        run("erf", "--from-jacobian", str(grads), "--out", str(out))
    assert not out.exists() or not list(out.glob("*.erf.npz"))


def test_statistics_need_maps_of_the_vessel_class(setup, tmp_path):
    checkpoint, data, out = setup
    run(*common(checkpoint, data, out, "--images", "s00", "--target-class", "0", "--no-figures"))
    summary = read_rows(out / "summary.csv")
    assert summary[0]["predicted_vessel_fraction"] == ""
    with pytest.raises(DataError, match="class 0"):
        erf_stats(StatsConfig(erf_dir=out, data=str(data)))


@pytest.mark.parametrize("crop", ["1", "15"])
def test_crops_smaller_than_the_smallest_image_are_refused(setup, crop):
    checkpoint, data, out = setup
    with pytest.raises(ConfigError) as info:
        run(*common(checkpoint, data, out)[:-2], "--crop", crop)
    message = str(info.value)
    assert message.startswith(f"--crop {crop}: crops must be at least 16 pixels a side")
    assert "(or use --full)" in message and "\n" not in message and not out.exists()


def test_rows_per_batch_that_cannot_fit_in_memory_are_refused(tmp_path, make_dataset):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "m.pt", create_model("resnet_seg", width=4), "resnet_seg", {"width": 4}
    )
    data = make_dataset(count=1, size=(512, 512))
    out = tmp_path / "erf"
    args = [*common(checkpoint, data, out)[:-2], "--full", "--chunk-rows", "1000000000"]
    with pytest.raises(ConfigError) as info:
        run(*args)
    message = str(info.value)
    assert message.startswith("--chunk-rows 1000000000: a backward pass over 262144 rows of s00")
    assert "TiB of memory, but" in message and "\n" not in message and not out.exists()


def test_rows_read_per_batch_from_stores_are_checked_too(setup, tmp_path, monkeypatch):
    from vessel_lens.interpret.jacobian import budget as _budget

    checkpoint, data, out = setup
    grads = tmp_path / "grads"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "all"]
    run("jacobian", *args, "--crop", "16", "--out", str(grads), "--images", "s01", jacobian=True)
    monkeypatch.setattr(_budget, "available_memory", lambda device: 1_000_000)
    erf = ["erf", "--from-jacobian", str(grads), "--out", str(out)]
    with pytest.raises(ConfigError, match=r"^--chunk-rows 200: reading 200 rows of s01 would need"):
        run(*erf, "--chunk-rows", "200")
    assert not out.exists()
    run(*erf, "--chunk-rows", "10")  # 10 rows of 16x16 float32: 61 KiB
    assert (out / "s01.erf.npz").exists()


def test_the_progress_label_says_which_image_of_how_many(setup, capsys):
    checkpoint, data, out = setup
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    get_command(app).main(
        args=[*common(checkpoint, data, out), "--no-figures"], standalone_mode=False
    )
    err = capsys.readouterr().err
    labels = set(re.findall(r"(image \d/\d s\d\d):", err))
    assert labels == {"image 1/3 s00", "image 2/3 s01", "image 3/3 s02"}, err[-500:]
