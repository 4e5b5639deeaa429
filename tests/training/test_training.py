"""Training runs on the synthetic default: files, determinism, exact resume, failure modes."""

from __future__ import annotations

import csv
import errno
import re
from pathlib import Path

import pytest
import torch

from vessel_lens.cli import main
from vessel_lens.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    TrainingError,
    WriteError,
)
from vessel_lens.models import load_model, read_checkpoint
from vessel_lens.training import TrainConfig, resume, train
from vessel_lens.training.config import read_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def tiny(**overrides) -> TrainConfig:
    values = dict(
        width=4,
        epochs=2,
        crops_per_image=1,
        batch_size=8,
        crop_size=32,
        schedule="cosine",
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).state_dict


def test_config_validation_and_yaml_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="loss 'hinge'"):
        TrainConfig(loss="hinge")
    with pytest.raises(ConfigError, match="model 'vgg'"):
        TrainConfig(model="vgg")
    with pytest.raises(ConfigError, match="crop_size 8"):
        TrainConfig(crop_size=8)
    # YAML reads 1e-6 as text; numbers given as text are converted, other types refused
    assert TrainConfig(min_lr="1e-6", lr="1e-3").min_lr == 1e-6
    assert TrainConfig(epochs=3.0).epochs == 3 and isinstance(TrainConfig(epochs=3.0).epochs, int)
    for bad, message in [
        ({"batch_size": 2.5}, "batch_size 2.5: expected a whole number"),
        ({"lr": "fast"}, "lr 'fast': expected a number"),
        ({"flips": "yes"}, "flips 'yes': expected true or false"),
        ({"epochs": True}, "epochs True: expected a number"),
        ({"min_lr": -1.0}, "min_lr -1.0: must be non-negative"),
        ({"schedule": "cosine", "lr": 1e-3, "min_lr": 1e-2}, "must not exceed lr"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"plateau_patience": -2}, "plateau_patience"),
        ({"seed": 2**40}, "seed"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig(**bad)
    (tmp_path / "bad.yaml").write_text("epochs: 3\nunknown_key: 1\n")
    with pytest.raises(ConfigError, match="unknown_key"):
        read_config(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("epochs: [3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config(tmp_path / "broken.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_files_are_valid(path):
    config = TrainConfig.from_dict(read_config(path), str(path))
    assert config.model == "resnet_seg"


def test_run_writes_its_files_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny(), out, progress=False)
    assert summary.epochs_done == 2
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    history = rows(out / "metrics.csv")
    assert [r["epoch"] for r in history] == ["1", "2"]
    # resolved: the synthetic data has no masks, so the loss counts every pixel
    assert TrainConfig.from_dict(read_config(out / "config.yaml")) == tiny(mask_loss=False)
    assert (out / "splits" / "train.txt").is_file()  # synthetic data: seeded split saved
    _, ckpt = load_model(out / "best.pt")
    assert ckpt.metadata["epoch"] == summary.best_epoch
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny(), out, progress=False)
    assert (out / "last.pt").read_bytes() == before
    train(tiny(epochs=1), out, overwrite=True, progress=False)
    assert len(rows(out / "metrics.csv")) == 1


def interrupt_at_validation(monkeypatch, number: int) -> None:
    """Make the ``number``-th validation raise KeyboardInterrupt (as Ctrl-C would)."""
    import vessel_lens.training.trainer as trainer_module

    calls = {"n": 0}
    real = trainer_module.Trainer.validate

    def validate(self, samples):
        calls["n"] += 1
        if calls["n"] == number:
            raise KeyboardInterrupt
        return real(self, samples)

    monkeypatch.setattr(trainer_module.Trainer, "validate", validate)


def test_same_seed_same_weights_and_resume_is_exact(tmp_path, monkeypatch):
    train(tiny(epochs=3), tmp_path / "full", progress=False)
    train(tiny(epochs=3), tmp_path / "again", progress=False)
    full, again = weights(tmp_path / "full/last.pt"), weights(tmp_path / "again/last.pt")
    assert all(torch.equal(full[k], again[k]) for k in full)

    with monkeypatch.context() as patch:
        interrupt_at_validation(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(tiny(epochs=3), tmp_path / "cut", progress=False)
    assert len(rows(tmp_path / "cut/metrics.csv")) == 1
    resume(tmp_path / "cut", progress=False)
    cut = weights(tmp_path / "cut/last.pt")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "cut/metrics.csv")) == strip(rows(tmp_path / "full/metrics.csv"))


def test_time_limit_stops_after_an_epoch(tmp_path):
    summary = train(tiny(epochs=3, max_minutes=1e-9), tmp_path / "run", progress=False)
    assert summary.stop_reason == "time limit" and summary.epochs_done == 1


def test_different_seed_differs(tmp_path):
    train(tiny(epochs=1), tmp_path / "a", progress=False)
    train(tiny(epochs=1, seed=1), tmp_path / "b", progress=False)
    a, b = weights(tmp_path / "a/last.pt"), weights(tmp_path / "b/last.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(epochs=1), out, progress=False)
    good = (out / "last.pt").read_bytes()
    import vessel_lens.training.trainer as trainer_module

    monkeypatch.setattr(
        trainer_module, "make_loss", lambda name: lambda a, b, valid=None: a.sum() * float("nan")
    )
    with pytest.raises(TrainingError, match="loss became nan at epoch 2"):
        resume(out, progress=False, epochs=2)
    assert (out / "last.pt").read_bytes() == good


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(epochs=1), out, progress=False)
    good = (out / "last.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)  # part of the data reaches the disk ...
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteError, match=r"cannot write \(no space left on device\); the previous"):
        resume(out, progress=False, epochs=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert (out / "last.pt").read_bytes() == good
    assert not list(out.glob(".*.tmp"))


def test_resume_refuses_mismatched_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny(epochs=1), out, progress=False)
    train(tiny(epochs=1, width=6), tmp_path / "other", progress=False)
    (out / "last.pt").write_bytes((tmp_path / "other/last.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"last\.pt belongs to another run .* config\.yaml"):
        resume(out, progress=False)
    config = (out / "config.yaml").read_text()  # a run from before run ids: the model decides
    (out / "config.yaml").write_text(re.sub(r"\n  run_id: \w+", "", config))
    with pytest.raises(CheckpointError, match=r"config\.yaml asks for"):
        resume(out, progress=False)


def test_ctrl_c_exits_130_and_keeps_last(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt_at_validation(monkeypatch, 2)
    code = main(
        [
            "train",
            "--out",
            str(out),
            "--width",
            "4",
            "--epochs",
            "3",
            "--crop-size",
            "32",
            "--crops-per-image",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 130
    err = capsys.readouterr()
    assert "last.pt holds epoch 1" in err.out and "interrupted" in err.err
    assert read_checkpoint(out / "last.pt").training["epoch"] == 1


def test_cli_train_resume_evaluate_predict(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--width",
        "4",
        "--epochs",
        "1",
        "--crop-size",
        "32",
        "--crops-per-image",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert len(rows(out / "metrics.csv")) == 2
    assert main(["train", "--resume", str(out), "--width", "8"]) == 2
    assert "drop --width" in capsys.readouterr().err

    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(out), "--split", "val", "--out", str(ev)]) == 0
    printed = capsys.readouterr().out
    assert "dice" in printed and "cldice" in printed
    assert (ev / "metrics.json").is_file() and (ev / "per_image.csv").is_file()
    assert len(list((ev / "panels").glob("*.png"))) == len(rows(ev / "per_image.csv"))
    assert main(["evaluate", "--checkpoint", str(out), "--split", "val", "--out", str(ev)]) == 2

    from vessel_lens.data.synthetic import write_synthetic_dataset

    images = tmp_path / "synth"
    write_synthetic_dataset(images, count=2, size=48, progress=False)
    preds = tmp_path / "preds"
    predict = ["predict", "--checkpoint", str(out / "best.pt"), "--images",
               str(images / "images"), "--out", str(preds)]  # fmt: skip
    assert main(predict) == 0
    assert sorted(p.name for p in preds.iterdir()) == [
        "synth0000_mask.png",
        "synth0000_probability.png",
        "synth0001_mask.png",
        "synth0001_probability.png",
    ]
    assert main(predict) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_bad_inputs_are_one_line(tmp_path, capsys):
    cases = [
        ["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "missing")],
        ["train", "--out", str(tmp_path / "r"), "--loss", "hinge"],
        ["train", "--resume", str(tmp_path / "nothing")],
        ["evaluate", "--checkpoint", str(tmp_path / "none.pt")],
        ["evaluate", "--checkpoint", "vessmap-w64"],
        ["train", "--out", str(tmp_path / "r"), "--device", "tpu"],
    ]
    for args in cases:
        assert main(args) != 0, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (args, err)
        assert "Traceback" not in err[0]


def test_seeded_split_is_recorded_and_reused_for_evaluation(tmp_path):
    from vessel_lens.data.source import open_dataset
    from vessel_lens.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    stems = write_synthetic_dataset(data, count=6, size=48, progress=False)
    train(tiny(data=str(data), epochs=1, split_fractions=(0.5, 0.25, 0.25)), tmp_path / "run",
          progress=False)  # fmt: skip
    checkpoint = read_checkpoint(tmp_path / "run/best.pt")
    recorded = checkpoint.metadata["splits"]
    assert sorted(s for names in recorded.values() for s in names) == sorted(stems)
    assert (tmp_path / "run/splits/test.txt").read_text().split() == recorded["test"]
    plain = open_dataset(data)  # default fractions 0.6/0.2/0.2 would split differently
    assert plain.split_source == "seeded" and plain.splits != recorded
    reused = open_dataset(data, checkpoint=checkpoint)
    assert reused.split_source == "checkpoint" and reused.splits == recorded


def test_resume_keeps_the_split_it_started_with(tmp_path):
    """Images added to a dataset without a split of its own do not move into training on
    --resume, and a changed dataset split is refused."""
    import shutil

    from vessel_lens.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, count=5, size=48, progress=False)
    run = tmp_path / "run"
    train(tiny(data=str(data), epochs=1, split_fractions=(0.6, 0.2, 0.2)), run, progress=False)
    recorded = read_checkpoint(run / "last.pt").metadata["splits"]
    extra = tmp_path / "extra"
    write_synthetic_dataset(extra, count=4, size=48, seed=9, progress=False)
    for folder in ("images", "labels", "skeletons"):
        for path in (extra / folder).iterdir():
            shutil.copy(path, data / folder / f"new_{path.name}")
    resume(run, progress=False, epochs=2)
    assert read_checkpoint(run / "last.pt").metadata["splits"] == recorded
    # a dataset whose own split moves a validation image into training is refused
    (data / "splits").mkdir()
    (data / "splits" / "train.txt").write_text("\n".join(recorded["train"] + recorded["val"]))
    (data / "splits" / "val.txt").write_text("\n".join(recorded["test"]))
    (data / "splits" / "test.txt").write_text("new_synth0000\n")
    with pytest.raises(DataError, match="train split differs"):
        resume(run, progress=False, epochs=3)


def test_a_folder_with_files_a_run_writes_is_not_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("my numbers")
    with pytest.raises(ConfigError, match=r"holds metrics\.csv"):
        train(tiny(), out, progress=False)
    assert (out / "metrics.csv").read_text() == "my numbers"


def test_overwrite_keeps_the_old_run_when_the_new_inputs_are_bad(tmp_path):
    out = tmp_path / "run"
    train(tiny(epochs=1), out, progress=False)
    before = (out / "last.pt").read_bytes()
    with pytest.raises(DataError):
        train(tiny(data=str(tmp_path / "typo")), out, overwrite=True, progress=False)
    assert (out / "last.pt").read_bytes() == before and (out / "metrics.csv").exists()


def test_evaluate_refuses_user_files_and_a_channel_mismatch(tmp_path, capsys):
    from vessel_lens.models import create_model, save_checkpoint

    run = tmp_path / "run"
    train(tiny(epochs=1), run, progress=False)
    out = tmp_path / "ev"
    out.mkdir()
    (out / "per_image.csv").write_text("mine")
    args = ["evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--no-panels"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "per_image.csv" in err[0]
    assert (out / "per_image.csv").read_text() == "mine"
    rgb = create_model("resnet_seg", width=4, in_channels=3)
    save_checkpoint(tmp_path / "rgb.pt", rgb, "resnet_seg", {"width": 4, "in_channels": 3})
    args = ["evaluate", "--checkpoint", str(tmp_path / "rgb.pt"), "--out", str(tmp_path / "e2")]
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channel" in err[0] and "expects 3" in err[0]
    assert not (tmp_path / "e2").exists()


def test_a_run_that_stopped_early_is_finished_on_resume(tmp_path, monkeypatch):
    """Early stopping ends the run: ``--resume`` trains no further (it used to train at least
    one more epoch, since the stop was not part of the saved state)."""
    import vessel_lens.training.trainer as trainer_module

    dice = iter([0.5, 0.4, 0.3, 0.2, 0.1])  # the first validation is the best one
    monkeypatch.setattr(
        trainer_module.Trainer,
        "validate",
        lambda self, samples: {"val_loss": 1.0, "val_dice": next(dice), "val_iou": 0.1},
    )
    summary = train(tiny(epochs=5, patience=1), tmp_path / "run", progress=False)
    assert (summary.stop_reason, summary.epochs_done) == ("early stopping", 2)
    again = resume(tmp_path / "run", progress=False)
    assert (again.stop_reason, again.epochs_done) == ("early stopping", 2)
    assert len(rows(tmp_path / "run/metrics.csv")) == 2
