"""Crops anywhere: ``--crop-box TOP,LEFT,H,W`` in ``jacobian``, ``erf`` and ``report``, the same
in the configs, and the helpers that parse, check and cut a box."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from vessel_lens.cli import main
from vessel_lens.data import crop_to_box, parse_crop_box, resolve_crop
from vessel_lens.data.samples import Sample
from vessel_lens.errors import ConfigError, DataError
from vessel_lens.interpret import jacobian, load_jacobian, load_receptive_field_maps
from vessel_lens.interpret.fields.run import ErfConfig
from vessel_lens.interpret.fields.thresholded import receptive_field_maps
from vessel_lens.interpret.jacobian.run import ExtractConfig
from vessel_lens.models import load_model
from vessel_lens.viz.report import crop_sample

HEIGHT, WIDTH = 40, 48
BOX = (3, 20, 16, 24)  # off-centre, not square
BOX_TEXT = ",".join(map(str, BOX))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", "--crop-box 1,2,3: expected TOP,LEFT,HEIGHT,WIDTH, four whole numbers"),
        ("a,b,16,16", "--crop-box a,b,16,16: expected TOP,LEFT,HEIGHT,WIDTH"),
        ("1.5,0,16,16", "--crop-box 1.5,0,16,16: expected TOP,LEFT,HEIGHT,WIDTH"),
        ("0,0,16,16,1", "--crop-box 0,0,16,16,1: expected TOP,LEFT,HEIGHT,WIDTH"),
        ("-1,0,16,16", "--crop-box -1,0,16,16: TOP and LEFT must be 0 or more"),
        ("0,0,8,16", "--crop-box 0,0,8,16: HEIGHT 8 is below 16, the smallest side"),
        ("0,0,16,15", "--crop-box 0,0,16,15: WIDTH 15 is below 16"),
    ],
)
def test_bad_boxes_are_refused_in_one_line_naming_the_option_as_typed(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_crop_box(text)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_boxes_parse_from_text_and_numbers():
    assert parse_crop_box("3,20,16,24") == BOX
    assert parse_crop_box(" 3, 20 ,16,24 ") == BOX
    assert parse_crop_box([3, 20, 16, 24]) == BOX
    assert parse_crop_box(np.array(BOX)) == BOX
    for bad in ((3, 20, 16.5, 24), (True, 0, 16, 16), (3, 20, 16)):
        with pytest.raises(ConfigError, match=r"^--crop-box .*: expected TOP,LEFT"):
            parse_crop_box(bad)


def test_a_box_must_lie_inside_the_image():
    assert resolve_crop(HEIGHT, WIDTH, "s00", box=(24, 32, 16, 16)) == (24, 32, 16, 16)
    with pytest.raises(DataError, match=r"^--crop-box 25,0,16,16: reaches rows 25-40, outside "
                                        r"image s00 \(40x48\)$"):  # fmt: skip
        resolve_crop(HEIGHT, WIDTH, "s00", box=(25, 0, 16, 16))
    with pytest.raises(DataError, match="reaches rows 30-45 and columns 40-55"):
        resolve_crop(HEIGHT, WIDTH, "s00", box=(30, 40, 16, 16))
    assert resolve_crop(HEIGHT, WIDTH, "s00", crop=16) == (12, 16, 16, 16)
    assert resolve_crop(HEIGHT, WIDTH, "s00", crop=0) == (0, 0, HEIGHT, WIDTH)


def test_crop_to_box_cuts_tensors_and_every_part_of_a_sample():
    image = torch.arange(2 * HEIGHT * WIDTH, dtype=torch.float32).reshape(2, HEIGHT, WIDTH)
    label = image[0] > 1000
    mask = image[1] % 3 == 0
    sample = Sample("s", image, label, None, None, mask)
    cut = crop_to_box(sample, BOX)
    assert cut.size == (16, 24) and cut.skeleton is None
    assert torch.equal(cut.image, image[:, 3:19, 20:44])
    assert torch.equal(cut.label, label[3:19, 20:44]) and torch.equal(cut.mask, mask[3:19, 20:44])
    cut.image.zero_()
    assert image.sum() > 0  # the sample's own tensors are left alone
    assert torch.equal(crop_to_box(image, BOX), image[:, 3:19, 20:44])
    assert crop_sample(sample, box=BOX).size == (16, 24)
    assert torch.equal(crop_sample(sample, 16).image, image[:, 12:28, 16:32])
    with pytest.raises(ConfigError, match=r"^--crop and --crop-box exclude each other$"):
        crop_sample(sample, 16, BOX)
    with pytest.raises(DataError, match="outside image s"):
        crop_to_box(sample, (30, 0, 16, 16))


def test_configs_take_a_box_instead_of_the_centred_crop(tmp_path):
    assert ExtractConfig("m", tmp_path / "g").crop == 64
    config = ExtractConfig("m", tmp_path / "g", crop_box=[3, 20, 16, 24])
    assert config.crop is None and config.crop_box == BOX
    config = ErfConfig(tmp_path / "e", "m", crop_box=BOX)
    assert config.crop is None and config.crop_box == BOX
    for make in (
        lambda: ExtractConfig("m", tmp_path / "g", crop=16, crop_box=BOX),
        lambda: ErfConfig(tmp_path / "e", "m", crop=0, crop_box=BOX),
    ):
        with pytest.raises(ConfigError, match=r"^--crop and --crop-box exclude each other$"):
            make()
    with pytest.raises(ConfigError, match="WIDTH 8 is below 16"):
        ExtractConfig("m", tmp_path / "g", crop_box=(0, 0, 16, 8))
    with pytest.raises(ConfigError, match="--crop-box does not apply"):
        ErfConfig(tmp_path / "e", from_jacobian=tmp_path, crop_box=BOX)


# ---------------------------------------------------------------- the commands


@pytest.fixture
def setup(tmp_path, make_dataset, tiny_checkpoint):
    checkpoint = tiny_checkpoint
    data = make_dataset(count=2, size=(HEIGHT, WIDTH))
    return checkpoint, data, tmp_path


def jacobian_args(setup, out, *extra):
    checkpoint, data, _ = setup
    return ["jacobian", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "all",
            "--images", "s00", "--out", str(out), "--device", "cpu", "--no-progress", *extra]  # fmt: skip


def erf_args(setup, out, *extra):
    checkpoint, data, _ = setup
    return ["erf", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "all",
            "--images", "s00", "--out", str(out), "--device", "cpu", "--no-progress",
            "--no-figures", *extra]  # fmt: skip


def report_args(setup, out, *extra):
    checkpoint, data, _ = setup
    return ["report", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "all",
            "--images", "s00", "--out", str(out), "--device", "cpu", "--no-progress",
            "--methods", "saliency", "--sanity-images", "0", *extra]  # fmt: skip


def the_crop(setup) -> torch.Tensor:
    from vessel_lens.data import index_dataset, load_samples

    sample = load_samples(index_dataset(setup[1]).samples[:1])[0]
    return sample.image[:, 3:19, 20:44]


def test_jacobian_stores_the_rows_of_the_box(setup, capsys):
    out = setup[2] / "grads"
    assert main(jacobian_args(setup, out, "--crop-box", BOX_TEXT)) == 0
    rows, meta = load_jacobian(out / "s00.zarr")
    assert list(meta["crop_box"]) == list(BOX)
    crop = the_crop(setup)
    assert torch.equal(torch.as_tensor(meta["image"]), crop)
    model, _ = load_model(setup[0], "cpu")
    expected = jacobian(model, crop, pixels=[(0, 0), (7, 13), (15, 23)])
    for row, (r, c) in zip(expected, [(0, 0), (7, 13), (15, 23)], strict=True):
        torch.testing.assert_close(rows[r * 24 + c], row, rtol=1e-4, atol=1e-6)
    run = (out / "jacobian-run.json").read_text()
    assert '"crop": null' in run and re.search(r'"crop_box": \[\s*3,\s*20,\s*16,\s*24\s*\]', run)


def test_a_box_is_recorded_and_compared_like_a_centred_crop(setup, capsys):
    """The centred --crop 16 of a 40x48 image is the box 12,16,16,16: a rerun with that box
    finds the store (and map file) finished; another box is refused as another crop."""
    grads, erf = setup[2] / "grads", setup[2] / "erf"
    assert main(jacobian_args(setup, grads, "--crop", "16")) == 0
    assert main(erf_args(setup, erf, "--crop", "16")) == 0
    capsys.readouterr()
    assert main(jacobian_args(setup, grads, "--crop-box", "12,16,16,16")) == 0
    assert "computed 0 block(s) (0 rows)" in capsys.readouterr().out
    assert main(erf_args(setup, erf, "--crop-box", "12,16,16,16")) == 0
    assert "computed 0 (0 pixels)" in capsys.readouterr().out
    for args in (jacobian_args(setup, grads, "--crop-box", "12,17,16,16"),
                 erf_args(setup, erf, "--crop-box", "12,17,16,16")):  # fmt: skip
        assert main(args) == 2
        errors = re.findall(r"^error: .*$", capsys.readouterr().err, flags=re.MULTILINE)
        assert len(errors) == 1 and "different --crop/--crop-box" in errors[0]
    assert main(erf_args(setup, erf, "--crop-box", "12,17,16,16", "--overwrite")) == 0
    maps = load_receptive_field_maps(erf / "s00.erf.npz")
    assert [int(v) for v in maps.metadata["crop_box"]] == [12, 17, 16, 16]


def test_erf_maps_of_a_box_are_the_maps_of_that_crop(setup):
    out = setup[2] / "erf"
    assert main(erf_args(setup, out, "--crop-box", BOX_TEXT, "--fractions", "0.05")) == 0
    maps = load_receptive_field_maps(out / "s00.erf.npz")
    assert [int(v) for v in maps.metadata["crop_box"]] == list(BOX)
    model, _ = load_model(setup[0], "cpu")
    direct = receptive_field_maps(model, the_crop(setup), fractions=(0.05,))
    assert torch.equal(maps.count, direct.count)
    assert maps.global_max == pytest.approx(direct.global_max, rel=1e-5)


def test_the_report_shows_the_box(setup, capsys):
    out = setup[2] / "report"
    assert main(report_args(setup, out, "--crop-box", BOX_TEXT, "--pixels", "15:23")) == 0
    html = (out / "report.html").read_text()
    assert "16x24 at rows 3-18, columns 20-43" in html
    assert (
        main(report_args(setup, setup[2] / "r2", "--crop-box", BOX_TEXT, "--pixels", "16:0")) == 2
    )
    assert "--pixels 16,0: outside image s00 (16x24)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["jacobian", "erf", "report"])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--crop-box", "3,20,16"], "--crop-box 3,20,16: expected TOP,LEFT,HEIGHT,WIDTH"),
        (["--crop-box", "3,20,8,24"], "--crop-box 3,20,8,24: HEIGHT 8 is below 16"),
        (["--crop-box", "30,20,16,24"], "--crop-box 30,20,16,24: reaches rows 30-45, outside "
                                        "image s00 (40x48)"),
        (["--crop", "16", "--crop-box", BOX_TEXT], "--crop and --crop-box exclude each other"),
    ],
)  # fmt: skip
def test_bad_boxes_give_one_error_line_and_write_nothing(setup, capsys, command, extra, message):
    make = {"jacobian": jacobian_args, "erf": erf_args, "report": report_args}[command]
    out = setup[2] / "out"
    assert main(make(setup, out, *extra)) == 2
    err = capsys.readouterr().err
    errors = re.findall(r"^error: .*$", err, flags=re.MULTILINE)
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}")
    assert "Traceback" not in err
    written = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in written if n.endswith((".zarr", ".npz", ".html", ".json"))]


def test_erf_box_excludes_full_and_stored_rows(setup, capsys):
    out = setup[2] / "erf"
    assert main(erf_args(setup, out, "--full", "--crop-box", BOX_TEXT)) == 2
    assert "error: --full and --crop-box exclude each other" in capsys.readouterr().err
    grads = setup[2] / "grads"
    grads.mkdir()
    argv = ["erf", "--from-jacobian", str(grads), "--crop-box", BOX_TEXT, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --from-jacobian uses the stores' own rows: --crop-box does not apply" in err
