"""``data check --preview`` and ``--crop-size``: checked before the dataset, one line each,
never a silent overwrite, never exit 0 with nothing written (issue 17 item 7, issue 16 item 6)."""

from __future__ import annotations

import pytest

from vessel_lens.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err and "internal error" not in err, err
    return [line for line in err.splitlines() if line.startswith("error")]


@pytest.fixture
def dataset(make_dataset):
    return make_dataset(count=2)


def check(dataset, *args: str) -> list[str]:
    return ["data", "check", "--data", str(dataset), *args]


def test_preview_says_the_exact_file_it_wrote(dataset, tmp_path, capsys):
    preview = tmp_path / "grid.png"
    assert main(check(dataset, "--preview", str(preview))) == 0
    assert preview.read_bytes().startswith(PNG_MAGIC)
    assert f"preview written to {preview}\n" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "grid.png"]


def test_existing_preview_is_never_replaced_silently(dataset, tmp_path, capsys):
    preview = tmp_path / "grid.png"
    preview.write_bytes(b"my own figure")
    assert main(check(dataset, "--preview", str(preview))) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        f"error: --preview {preview}: already exists; choose another name or pass --overwrite"
    )
    assert preview.read_bytes() == b"my own figure"
    assert main(check(dataset, "--preview", str(preview), "--overwrite")) == 0
    assert preview.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("x.txt", "must be a .png file"),
        ("grid", "must be a .png file"),
        ("missing/dir/p.png", "does not exist"),
    ],
)
def test_bad_preview_paths_are_one_line_before_the_check(name, problem, dataset, tmp_path, capsys):
    preview = tmp_path / name
    assert main(check(dataset, "--preview", str(preview))) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith(f"error: --preview {preview}: ") and problem in line
    assert captured.out == ""  # refused before checking anything
    assert not (tmp_path / "missing").exists() and not preview.exists()


def test_preview_is_a_folder(dataset, tmp_path, capsys):
    folder = tmp_path / "figures.png"
    folder.mkdir()
    assert main(check(dataset, "--preview", str(folder))) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line == f"error: --preview {folder}: is a folder; give a file name"


def test_preview_of_a_dataset_with_no_readable_image_fails(make_dataset, tmp_path, capsys):
    root = make_dataset(count=2)
    for image in (root / "images").iterdir():
        image.write_bytes(b"not an image")
    preview = tmp_path / "grid.png"
    assert main(check(root, "--preview", str(preview))) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines[-1] == f"error: --preview {preview}: no image could be read; not written"
    assert not preview.exists()


def test_preview_is_written_when_some_files_have_errors(make_dataset, tmp_path, capsys):
    root = make_dataset(count=3)
    (root / "images" / "s01.png").write_bytes(b"not an image")
    preview = tmp_path / "grid.png"
    assert main(check(root, "--preview", str(preview))) == 1  # the check found an error
    assert preview.read_bytes().startswith(PNG_MAGIC)
    assert f"preview written to {preview}" in capsys.readouterr().out


@pytest.mark.parametrize("size", ["-5", "0"])
def test_crop_size_must_be_positive(size, dataset, capsys):
    assert main(check(dataset, "--crop-size", size)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line == f"error: --crop-size {size}: must be positive"
