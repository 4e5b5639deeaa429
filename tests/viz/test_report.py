"""``vessel-lens report``: one offline HTML page with every panel embedded."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import torch
import typer

import vessel_lens.cli as cli
from vessel_lens.cli._common import parse_pixels, split_values
from vessel_lens.cli.report import register
from vessel_lens.errors import ConfigError
from vessel_lens.models import create_model, save_checkpoint
from vessel_lens.viz.report import ReportOptions, choose_pixels, crop_sample
from vessel_lens.viz.report_sections import find_run_folder

SECTIONS = (
    "Images and chosen pixels",
    "Training",
    "Attribution methods",
    "Sanity checks",
    "Receptive-field statistics",
)
EMBEDDED = '<img src="data:image/png;base64,'


def _app_with_report() -> typer.Typer:
    """The real CLI when it already has ``report``, else the real CLI plus ``register``."""
    app = cli.build_app()
    if "report" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        register(app)
    return app


@pytest.fixture
def run_cli(monkeypatch):
    """``vessel_lens.cli.main`` (exit status, one-line errors) with the report command."""
    app = _app_with_report()
    monkeypatch.setattr(cli, "build_app", lambda: app)
    return cli.main


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A run folder holding a width-4 checkpoint, metrics.csv and curves.png."""
    from vessel_lens.viz.curves import learning_curves

    torch.manual_seed(0)
    model = create_model("resnet_seg", width=4)
    folder = tmp_path / "run"
    save_checkpoint(folder / "best.pt", model, "resnet_seg", {"width": 4}, {"epoch": 2})
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.5, "val_iou": 0.3},
        {"epoch": 2, "train_loss": 0.7, "val_loss": 0.6, "val_dice": 0.6, "val_iou": 0.4},
    ]
    (folder / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_dice,val_iou,lr,seconds\n"
        "1,0.9,0.8,0.5,0.3,0.001,1.0\n2,0.7,0.6,0.6,0.4,0.001,2.0\n"
    )
    learning_curves(history, folder / "curves.png")
    return folder


@pytest.fixture
def erf_folder(tmp_path, run_folder) -> Path:
    folder = tmp_path / "erf"
    (folder / "w4").mkdir(parents=True)
    (folder / "figure.png").write_bytes((run_folder / "curves.png").read_bytes())
    (folder / "w4" / "summary.csv").write_text("layer,count\nstem,9\nhead,<b>81</b>\n")
    (folder / "w4" / "stats_pixels.csv").write_text("pixel,area\n3,25\n")
    (folder / "w4" / "other.csv").write_text("not,shown\n1,2\n")
    return folder


def test_report_is_one_offline_page_with_every_panel(
    run_cli, run_folder, erf_folder, make_dataset, tmp_path, capsys
):
    data = make_dataset(count=3, size=(32, 32), splits={"test": ["s00", "s01", "s02"]})
    out = tmp_path / "report"
    args = [
        "report",
        "--checkpoint",
        str(run_folder / "best.pt"),
        "--data",
        str(data),
        "--split",
        "test",
        "--erf",
        str(erf_folder),
        "--methods",
        "saliency,occlusion,layer_gradcam",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert run_cli(args) == 0
    assert "wrote" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    for heading in SECTIONS:
        assert re.search(rf"<h2>{heading}</h2>", html), heading
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)  # nothing loaded from outside
    figures = sorted((out / "figures").glob("*.png"))
    names = {f.name for f in figures}
    for stem in ("s00", "s01"):  # --max-images 2 by default
        assert {f"{stem}_pixels.png", f"{stem}_attributions.png"} <= names
    assert {"s00_randomisation.png", "s00_deletion.png"} <= names  # sanity on the first image
    assert not any(n.startswith("s02") for n in names)
    for figure in figures:
        assert EMBEDDED + base64.b64encode(figure.read_bytes()).decode() in html, figure.name
    for embedded in (run_folder / "curves.png", erf_folder / "figure.png"):
        assert base64.b64encode(embedded.read_bytes()).decode() in html
    assert html.count(EMBEDDED) == len(figures) + 2
    assert "summary.csv" in html and "stats_pixels.csv" in html and "other.csv" not in html
    assert "&lt;b&gt;81&lt;/b&gt;" in html  # table cells are escaped
    assert "best validation Dice" in html
    assert (out / "tables" / "pixels.csv").read_text().count("\n") >= 3

    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0]
    again = [*args, "--overwrite", "--max-images", "1", "--sanity-images", "0"]
    assert run_cli([*again, "--methods", "saliency"]) == 0


def test_report_with_crop_given_pixels_and_no_run_folder(
    run_cli, run_folder, make_dataset, tmp_path, capsys
):
    data = make_dataset(count=1, size=(64, 64), splits={"test": ["s00"]})
    checkpoint = tmp_path / "lone.pt"
    checkpoint.write_bytes((run_folder / "best.pt").read_bytes())
    out = tmp_path / "cropped"
    status = run_cli(
        [
            "report",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(data),
            "--crop",
            "48",
            "--pixels",
            "3:4",
            "40:41",
            "--methods",
            "saliency",
            "guided_backprop",
            "--sanity-methods",
            "saliency",
            "--deletion-methods",
            "saliency",
            "--max-images",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert status == 0, capsys.readouterr().err
    html = (out / "report.html").read_text()
    assert "No run folder" in html and "No receptive-field folder given" in html
    rows = (out / "tables" / "pixels.csv").read_text().splitlines()
    assert [r.split(",")[1:3] for r in rows[1:]] == [["3", "4"], ["40", "41"]]
    assert "(48x48)" in html


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pixels", "3:99"], "outside image"),
        (["--pixels", "3;x"], "expected ROW:COL"),
        (["--methods", "lime"], "method 'lime'"),
        (["--images", "nope"], "image 'nope' is not in split"),
        (["--erf", "missing-folder"], "not a folder"),
        (["--crop", "500"], "--crop 500"),
        (["--run", "."], "holds neither metrics.csv nor curves.png"),
    ],
)
def test_report_errors_are_one_line(
    run_cli, run_folder, make_dataset, tmp_path, capsys, extra, message
):
    data = make_dataset(count=2, size=(32, 32), splits={"test": ["s00", "s01"]})
    args = ["report", "--checkpoint", str(run_folder), "--data", str(data)]
    args += ["--out", str(tmp_path / "r")]
    assert run_cli([*args, "--no-progress", "--sanity-images", "0", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_option_parsing(capsys):
    assert parse_pixels(["1:2", "3:4 5:6", "7:8,9:10;11:12"]) == [
        (1, 2),
        (3, 4),
        (5, 6),
        (7, 8),
        (9, 10),
        (11, 12),
    ]
    assert capsys.readouterr().err == ""
    assert parse_pixels(["1,2", "3,4 5:6"]) == [(1, 2), (3, 4), (5, 6)]  # the older form
    assert capsys.readouterr().err.strip() == (
        "warning: --pixels 1,2 3,4: ROW,COL pairs are deprecated; write 1:2 3:4"
    )
    assert parse_pixels(None) is None and parse_pixels([]) is None
    with pytest.raises(ConfigError, match="expected ROW:COL"):
        parse_pixels(["1,2,3"])
    assert split_values(["a,b", "c d"]) == ["a", "b", "c", "d"]
    with pytest.raises(ConfigError, match="threshold"):
        ReportOptions(threshold=0)


def test_default_pixels():
    probability = torch.full((9, 9), 0.3)
    probability[4, 2:7] = 0.95
    probability[0, 0] = 0.8  # a false positive in the corner
    probability[6:9, 6:9] = 0.01  # the clearest background: 9 of 75 background pixels
    label = probability > 0.5
    label[0, 0] = False
    label[6, 4] = True  # a false negative too
    chosen = choose_pixels(probability, label)
    assert [why for *_, why in chosen] == ["vessel", "background", "false positive"]
    assert chosen[0][:2] == (4, 4) and chosen[2][:2] == (0, 0)
    assert chosen[1][:2] == (6, 6)  # of the clearest background, the nearest to the centre
    label[0, 0] = True
    assert [why for *_, why in choose_pixels(probability, label)][-1] == "false negative"
    assert [why for *_, why in choose_pixels(probability, None)] == ["vessel", "background"]


def test_default_pixels_lie_inside_the_field_of_view_mask():
    probability = torch.full((9, 9), 0.3)
    probability[4, 2:7] = 0.95
    probability[0, 0] = 0.8  # a false positive, outside the mask
    probability[6:9, 6:9] = 0.01  # the clearest background, outside the mask
    label = probability > 0.5
    label[0, 0] = False
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[1:6, 1:6] = True
    chosen = choose_pixels(probability, label, mask)
    assert [why for *_, why in chosen] == ["vessel", "background"]
    assert all(bool(mask[r, c]) for r, c, _ in chosen)


def test_crop_and_run_folder_helpers(tmp_path, run_folder):
    from vessel_lens.data.samples import Sample

    sample = Sample("a", torch.rand(1, 40, 50), torch.zeros(40, 50, dtype=torch.bool))
    cropped = crop_sample(sample, 20)
    assert cropped.size == (20, 20) and torch.equal(cropped.image, sample.image[:, 10:30, 15:35])
    assert cropped.mask is None
    sample.mask = torch.rand(40, 50) > 0.5
    assert torch.equal(crop_sample(sample, 20).mask, sample.mask[10:30, 15:35])
    assert find_run_folder(None, run_folder / "best.pt") == (run_folder, "")
    assert find_run_folder(None, tmp_path / "x.pt")[0] is None


def test_report_leaves_a_train_mode_model_as_found_and_shows_two_channel_images(tmp_path):
    """A model in train mode is used in eval mode and handed back unchanged (BatchNorm
    statistics, mode, RNG); a deletion method missing from the methods is computed anyway;
    two-channel images are drawn."""
    from vessel_lens.data.samples import Sample
    from vessel_lens.viz.report import write_report

    torch.manual_seed(0)
    model = create_model("resnet_seg", width=2, in_channels=2)  # train mode, as built
    before = {k: v.clone() for k, v in model.state_dict().items()}
    label = torch.zeros(24, 24, dtype=torch.bool)
    label[10:14] = True
    sample = Sample("two", torch.rand(2, 24, 24), label)
    rng = torch.get_rng_state()
    options = ReportOptions(
        methods=["saliency"],
        sanity_methods=["saliency"],
        deletion_methods=["saliency", "input_x_gradient"],
    )
    report = write_report(model, [sample], tmp_path / "report", options=options, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    html = report.html.read_text()
    assert "Deletion and insertion: two" in html
    deletion = (tmp_path / "report" / "tables" / "two_deletion.csv").read_text()
    assert "input_x_gradient" in deletion


def test_named_images_are_all_shown_and_user_figures_are_kept(
    run_cli, run_folder, make_dataset, tmp_path, capsys
):
    data = make_dataset(count=3, size=(32, 32), splits={"test": ["s00", "s01", "s02"]})
    out = tmp_path / "three"
    args = ["report", "--checkpoint", str(run_folder / "best.pt"), "--data", str(data),
            "--images", "s00,s01,s02", "--methods", "saliency", "--sanity-images", "0",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert run_cli(args) == 0
    html = (out / "report.html").read_text()
    assert all(stem in html for stem in ("s00", "s01", "s02"))
    mine = tmp_path / "mine"
    (mine / "figures").mkdir(parents=True)
    (mine / "figures" / "plot.png").write_bytes(b"my figure")
    args[args.index(str(out))] = str(mine)
    assert run_cli(args) == 2
    assert "already holds figures" in capsys.readouterr().err
    assert (mine / "figures" / "plot.png").read_bytes() == b"my figure"


def test_report_reads_quantitatively(
    run_cli, run_folder, make_dataset, tmp_path, capsys, monkeypatch
):
    """A checkpoint outside any run folder shows its recorded training summary; --erf shows the
    erf-stats plots of its sub-folders; every table scrolls inside its own box; figures fit a
    1400-pixel page; an all-zero Grad-CAM map says why; --shared-scale is named."""
    from PIL import Image

    import vessel_lens.viz.report as report_module

    real = report_module.attribute

    def attribute(model, image, target, method, **options):
        values = real(model, image, target, method, **options)
        return torch.zeros_like(values) if method == "layer_gradcam" else values

    monkeypatch.setattr(report_module, "attribute", attribute)
    data = make_dataset(count=1, size=(32, 32), splits={"test": ["s00"]})
    checkpoint = tmp_path / "shipped.pt"
    recorded = {
        "epoch": 7,
        "metrics": {"val_loss": 0.4, "val_dice": 0.61},
        "config": {"epochs": 9, "lr": 0.001},
        "train_seconds": 90.0,
        "test_metrics": {"mean_over_images": {"dice": 0.55}, "pooled_over_pixels": {"dice": 0.5}},
    }
    torch.manual_seed(0)
    save_checkpoint(checkpoint, create_model("resnet_seg", width=4), "resnet_seg",
                    {"width": 4}, recorded)  # fmt: skip
    erf = tmp_path / "erf"
    (erf / "stats").mkdir(parents=True)
    (erf / "stats" / "stats_by_distance.png").write_bytes((run_folder / "curves.png").read_bytes())
    (erf / "stats" / "stats_by_class.csv").write_text("group,pixels\nvessel,3\n")
    out = tmp_path / "report"
    args = ["report", "--checkpoint", str(checkpoint), "--data", str(data), "--erf", str(erf),
            "--methods", "saliency,layer_gradcam", "--sanity-images", "0", "--shared-scale",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert run_cli(args) == 0, capsys.readouterr().err
    html = (out / "report.html").read_text()
    training = html[html.index('<section id="training">') :].split("</section>")[0]
    assert 'class="missing"' not in training
    for shown in ("weights saved at epoch", ">7<", "1.5 min", "0.61", "mean over images", "0.55"):
        assert shown in training, shown
    assert "<details><summary>training configuration (2 settings)</summary>" in training
    stats_png = base64.b64encode((erf / "stats" / "stats_by_distance.png").read_bytes()).decode()
    assert EMBEDDED + stats_png in html and "<h3>stats/</h3>" in html
    assert html.count("<table") == html.count('<div class="scroll"><table') > 5
    assert re.search(r"\.scroll \{[^}]*overflow-x: auto", html)
    zero = re.findall(r"layer gradcam \(layer [\w.]+\) at \(\d+, \d+\) [a-z ]+ is zero everywhere: "
                      r"no positive evidence at this layer", html)  # fmt: skip
    chosen = (out / "tables" / "pixels.csv").read_text().strip().splitlines()[1:]
    assert len(zero) == len(chosen) >= 2  # one note per chosen pixel
    assert "All panels share one colour scale" in html
    for figure in (out / "figures").glob("*.png"):
        with Image.open(figure) as image:
            assert image.size[0] <= 1400, figure.name
