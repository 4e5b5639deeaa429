"""The command line, called through its entry point ``vessel_lens.cli.main``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vessel_lens.cli import main
from vessel_lens.data import index_dataset
from vessel_lens.interpret import load_receptive_field_maps
from vessel_lens.models import list_models

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def error_lines(text: str) -> list[str]:
    return re.findall(r"^error: .*$", text, flags=re.MULTILINE)


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("data", "models", "demo"):
        assert re.search(rf"^\s+{command}\s", out, flags=re.MULTILINE), command


def test_subcommand_help(capsys):
    assert main(["data", "check", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--data" in out and "--preview" in out and "--crop-size" in out


def test_unknown_option_is_one_error_line_and_status_2(capsys, make_dataset):
    root = make_dataset(count=2)
    assert main(["data", "check", "--data", str(root), "--frobnicate"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--frobnicate" in lines[0]
    assert_no_traceback(captured.out, captured.err)


def test_unknown_command_is_status_2(capsys):
    assert main(["frobnicate"]) == 2
    captured = capsys.readouterr()
    assert len(error_lines(captured.err)) == 1
    assert_no_traceback(captured.out, captured.err)


def test_missing_required_option_is_status_2(capsys):
    assert main(["data", "check"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == ["error: Missing option '--data'."]


def test_data_check_on_a_good_dataset(capsys, make_dataset):
    root = make_dataset(count=4, splits={"train": ["s00", "s01"], "val": ["s02"], "test": ["s03"]})
    assert main(["data", "check", "--data", str(root)]) == 0
    captured = capsys.readouterr()
    assert error_lines(captured.err) == []
    assert re.search(r"^\s+samples\s+4$", captured.out, flags=re.MULTILINE)
    assert re.search(r"^\s+sizes\s+32x32 \(4\)$", captured.out, flags=re.MULTILINE)
    assert "train 2, val 1, test 1" in captured.out
    assert re.search(r"^\s+errors\s+0$", captured.out, flags=re.MULTILINE)


def test_data_check_on_a_broken_dataset_reports_each_problem_once(
    capsys, make_dataset, write_image
):
    root = make_dataset(count=4)
    corrupt = root / "images" / "s00.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    mismatched = write_image(root / "labels" / "s01.png", np.zeros((20, 32), dtype=np.uint8))
    grey = np.zeros((32, 32), dtype=np.uint8)
    grey[4:9], grey[0, 0] = 255, 100
    non_binary = write_image(root / "labels" / "s02.png", grey)

    status = main(["data", "check", "--data", str(root)])

    captured = capsys.readouterr()
    assert status != 0
    errors = error_lines(captured.err)
    assert len(errors) == 2, captured.err
    assert errors[0].startswith(f"error: {corrupt}:")
    assert errors[1].startswith(f"error: {mismatched}:") and "20x32" in errors[1]
    warnings = re.findall(r"^warning: .*$", captured.err, flags=re.MULTILINE)
    assert len(warnings) == 1 and str(non_binary) in warnings[0]
    assert re.search(r"^\s+errors\s+2$", captured.out, flags=re.MULTILINE)
    assert_no_traceback(captured.out, captured.err)


def test_data_check_on_an_unindexable_dataset(capsys, make_dataset):
    root = make_dataset(count=2)
    (root / "labels" / "s01.png").unlink()
    assert main(["data", "check", "--data", str(root)]) != 0
    captured = capsys.readouterr()
    errors = error_lines(captured.err)
    assert len(errors) == 1 and str(root / "images" / "s01.png") in errors[0]
    assert_no_traceback(captured.out, captured.err)


def test_data_check_crop_size_and_preview(capsys, make_dataset, tmp_path):
    root = make_dataset(count=2)
    preview = tmp_path / "preview.png"
    assert main(["data", "check", "--data", str(root), "--crop-size", "64"]) != 0
    assert len(error_lines(capsys.readouterr().err)) == 2
    assert main(["data", "check", "--data", str(root), "--preview", str(preview)]) == 0
    assert preview.read_bytes().startswith(PNG_MAGIC)
    assert str(preview) in capsys.readouterr().out


def test_data_synth_writes_and_then_refuses_to_overwrite(capsys, tmp_path):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--count", "3", "--size", "64"]) == 0
    assert "3 samples" in capsys.readouterr().out
    index = index_dataset(out)
    assert len(index.samples) == 3 and index.has_skeletons
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == 9

    status = main(["data", "synth", "--out", str(out), "--count", "5", "--seed", "1"])

    captured = capsys.readouterr()
    assert status != 0
    errors = error_lines(captured.err)
    assert len(errors) == 1 and str(out) in errors[0] and "already" in errors[0]
    assert_no_traceback(captured.out, captured.err)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_demo_writes_what_it_prints(capsys, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    listing = text.split("demo outputs in", 1)[1].splitlines()[1:]
    printed = dict(re.findall(r"^\s+(\S+)\s+(\S+)$", "\n".join(listing), re.MULTILINE))
    expected = {"data-preview", "checkpoint", "curves", "test-metrics", "erf-figure", "erf-maps"}
    assert expected <= set(printed)
    for path in map(Path, printed.values()):
        assert path.exists() and out in path.parents
    assert Path(printed["data-preview"]).read_bytes().startswith(PNG_MAGIC)
    assert "dice" in text  # the evaluation table
    assert Path(printed["erf-figure"]).read_bytes().startswith(PNG_MAGIC)
    maps = load_receptive_field_maps(printed["erf-maps"])
    assert bool(maps.computed.all()) and (maps.height, maps.width) == (64, 64)
    assert "receptive-field maps of 4096 pixels" in text
    assert Path(printed["erf-figure"]).name in (out / "report" / "report.html").read_text()


def test_demo_with_an_unusable_device_is_a_clear_error(capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "tpu"]) == 2
    captured = capsys.readouterr()
    assert len(error_lines(captured.err)) == 1 and "tpu" in captured.err
    assert_no_traceback(captured.out, captured.err)


def test_models_lists_every_registered_name(capsys):
    assert main(["models"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    for name in list_models():
        assert name in listed


@pytest.mark.parametrize("argv", [["data", "check", "--data"], ["demo", "--out"]])
def test_option_without_value_is_status_2(capsys, argv):
    assert main(argv) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_demo_never_writes_into_a_folder_holding_other_files(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data_preview.png").write_bytes(b"my picture")
    assert main(["demo", "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "data_preview.png").read_bytes() == b"my picture"
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file"), "--device", "cpu"]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["report", "--images", "5740", "15821", "--out", "r"],
            ["report", "--images", "5740", "--images", "15821", "--out", "r"],
        ),
        (
            ["erf", "--fractions", "0.01", "0.1", "--pixel-stride", "2", "--full"],
            ["erf", "--fractions", "0.01", "--fractions", "0.1", "--pixel-stride", "2", "--full"],
        ),
        (["jacobian", "--images", "a,b"], ["jacobian", "--images", "a,b"]),
        (["erf-stats", "--images", "a", "DIR"], ["erf-stats", "--images", "a", "DIR"]),
        (["jacobian", "--", "--images", "a", "b"], ["jacobian", "--", "--images", "a", "b"]),
    ],
)
def test_multi_value_options_take_several_values_after_one_flag(argv, expected):
    import typer

    from vessel_lens.cli import build_app, expand_multiple

    assert expand_multiple(typer.main.get_command(build_app()), argv) == expected


def test_demo_replaces_only_its_own_earlier_output(capsys, tmp_path, monkeypatch):
    """``make demo`` twice works (--overwrite replaces an earlier demo), and nothing that the
    demo did not write is ever removed."""
    import vessel_lens.demo as demo

    def fake_steps(out, device, seed, progress):
        (out / "run").mkdir()
        return demo.DemoOutputs(out)

    monkeypatch.setattr(demo, "_run_demo", fake_steps)
    out = tmp_path / "demo_out"
    argv = ["demo", "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0 and (out / demo.MARKER).is_file()
    (out / "run" / "old.pt").write_text("earlier demo")
    assert main(argv) == 2
    assert "holds an earlier demo; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "run").is_dir() and not (out / "run" / "old.pt").exists()
    (out / "notes.txt").write_text("mine")
    assert main([*argv, "--overwrite"]) == 2
    assert "'notes.txt', which is not the demo's" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "run").is_dir()
