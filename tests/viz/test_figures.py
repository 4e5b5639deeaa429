"""Figures can be read quantitatively: every map has a colour bar naming its quantity and unit,
counts get whole-number ticks, strided maps fill their cells, statistics show how many pixels
stand behind each number, and wide figures fit a 1400-pixel page."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vessel_lens.viz.attribution_plots as attribution_plots
import vessel_lens.viz.figures as viz_figures
from vessel_lens.interpret.fields.thresholded import receptive_field_maps_from_jacobian
from vessel_lens.interpret.thresholds import gradient_magnitude, pixel_stats, threshold_value
from vessel_lens.viz.field_figures import erf_figure, fill_cells, pixel_grid
from vessel_lens.viz.field_stats_plots import bin_summary, plot_stats
from vessel_lens.viz.map_scales import attribution_label

PAGE = 1400
"""Width of the report's page in pixels: no figure should need shrinking to fit it."""


@pytest.fixture
def captured(monkeypatch):
    """Figures passed to ``save_figure`` (written as usual), wherever it is called from."""
    figures = []
    original = viz_figures.save_figure

    def capture(figure, path, *args, **kwargs):
        figures.append(figure)
        return original(figure, path, *args, **kwargs)

    monkeypatch.setattr(viz_figures, "save_figure", capture)
    monkeypatch.setattr(attribution_plots, "save_figure", capture)
    import vessel_lens.training.evaluate as evaluate

    monkeypatch.setattr(evaluate, "save_figure", capture)
    return figures


def colour_bars(figure) -> dict[str, object]:
    """{panel title: its image's colour bar (None without one)}."""
    return {
        ax.get_title(): image.colorbar for ax in figure.axes for image in ax.images if ax.images
    }


def bar_label(bar) -> str:
    return bar.ax.get_ylabel()


def width_px(path) -> int:
    with Image.open(path) as image:
        return image.size[0]


def _pixel_inputs(n_pixels: int = 2, size: int = 16):
    torch.manual_seed(0)
    image = torch.rand(1, size, size)
    probability = torch.rand(size, size)
    label = probability > 0.4
    pixels = [(3, 4, "vessel"), (10, 12, "background"), (7, 7, "false positive")][:n_pixels]
    gradients = torch.randn(n_pixels, 1, size, size)
    magnitude = gradient_magnitude(gradients)
    stats = [pixel_stats(m, threshold_value(m, 0.01, "pixel")) for m in magnitude]
    return image, probability, label, pixels, gradients, stats


@pytest.mark.parametrize("output, symbol", [("probability", "P"), ("logit", "logit")])
def test_pixel_panels_name_quantity_and_unit_of_every_map(tmp_path, captured, output, symbol):
    image, probability, label, pixels, gradients, stats = _pixel_inputs(3)
    path = attribution_plots.pixel_panels(
        image, probability, label, pixels, gradients, stats, tmp_path / "p.png", output=output
    )
    bars = colour_bars(captured[-1])
    assert bar_label(bars["input"]) == "input intensity (0-1)"
    assert bar_label(bars["vessel probability"]) == "P(vessel)"
    for row, col, _ in pixels:
        bar = bars[f"gradient g of {symbol} at ({row}, {col})"]
        assert bar_label(bar) == f"∂{symbol}/∂x [{symbol} / intensity]"
        assert bar.extend in ("both", "min", "max")  # limits at the 99.5th percentile clip
    thresholded = [t for t in bars if "yellow: |g| > t" in t]
    assert len(thresholded) == 3 and all("1 % of max" in t for t in thresholded)
    assert width_px(path) <= PAGE


def _grid_rows(methods: list[str], size: int = 20, zero: str | None = None):
    generator = torch.Generator().manual_seed(1)
    rows = []
    for row, col in ((5, 6), (14, 12)):
        mask = np.zeros((size, size), dtype=bool)
        mask[row, col] = True
        maps = {}
        for method in methods:
            values = torch.randn(1, size, size, generator=generator)
            if method == "layer_gradcam":
                values = values.clamp(min=0)
            if method == zero:
                values = torch.zeros(1, size, size)
            maps[method] = values
        rows.append((f"({row}, {col})", mask, maps))
    return rows


EIGHT = [
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "gradient_shap",
    "guided_backprop",
    "occlusion",
    "layer_gradcam",
]


def test_attribution_grid_gives_each_method_its_own_stated_scale(tmp_path, captured):
    image = torch.rand(1, 20, 20)
    path = attribution_plots.attribution_grid(image, _grid_rows(EIGHT), tmp_path / "a.png")
    figure = captured[-1]
    panels = [ax for ax in figure.axes if ax.get_title().replace(" ", "_") in EIGHT]
    assert len(panels) == 2 * len(EIGHT)
    for ax in panels:
        method = ax.get_title().replace(" ", "_")
        bar = ax.images[0].colorbar
        assert bar is not None and bar_label(bar) == attribution_label(method)
        if method == "layer_gradcam":
            assert ax.images[0].norm.vmin == 0  # non-negative: magma from zero
    assert "[P / intensity]" in attribution_label("saliency")
    assert attribution_label("occlusion").endswith("[P]")
    assert len({id(ax.images[0].colorbar) for ax in panels}) == len(panels)
    assert width_px(path) <= PAGE  # eight methods wrap onto two lines per target


def test_attribution_grid_can_share_one_scale(tmp_path, captured):
    image = torch.rand(1, 20, 20)
    methods = ["saliency", "occlusion", "layer_gradcam"]
    rows = _grid_rows(methods)
    attribution_plots.attribution_grid(image, rows, tmp_path / "a.png", shared_scale=True)
    figure = captured[-1]
    panels = [ax for ax in figure.axes if ax.get_title().replace(" ", "_") in methods]
    limits = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in panels}
    assert len(limits) == 1
    low, high = limits.pop()
    biggest = max(
        np.percentile(np.abs(m.numpy()), 99.5) for _, _, maps in rows for m in maps.values()
    )
    assert low == -high and high == pytest.approx(biggest)
    bars = {id(ax.images[0].colorbar): ax.images[0].colorbar for ax in panels}
    bars.pop(id(None), None)
    assert len(bars) == 1
    assert "one scale for every panel" in bar_label(next(iter(bars.values())))


def test_an_all_zero_gradcam_panel_says_why(tmp_path, captured):
    image = torch.rand(1, 20, 20)
    methods = ["saliency", "layer_gradcam"]
    rows = _grid_rows(methods, zero="layer_gradcam")
    attribution_plots.attribution_grid(image, rows, tmp_path / "a.png")
    cams = [ax for ax in captured[-1].axes if ax.get_title() == "layer gradcam"]
    assert len(cams) == 2
    for ax in cams:
        words = " ".join(t.get_text().replace("\n", " ") for t in ax.texts)
        assert "all zero" in words and "no positive evidence at this layer" in words
        assert ax.images[0].colorbar is None  # a scale of nothing would say nothing


def test_evaluate_panel_has_a_probability_colour_bar(tmp_path, captured):
    from vessel_lens.data.samples import Sample
    from vessel_lens.training.evaluate import write_panel

    torch.manual_seed(0)
    sample = Sample("s", torch.rand(1, 24, 24), torch.rand(24, 24) > 0.5, None, None)
    path = write_panel(sample, torch.rand(24, 24), {"dice": 0.5, "iou": 0.3}, tmp_path / "e.png")
    bars = colour_bars(captured[-1])
    assert bar_label(bars["prediction (probability)"]) == "P(vessel)"
    assert bars["prediction (probability)"].mappable.norm.vmin == 0
    assert bar_label(bars["input"]) == "input intensity (0-1)"
    assert width_px(path) <= PAGE


def test_pixel_grid_finds_regular_strides_only():
    computed = np.zeros((10, 11), dtype=bool)
    computed[::4, ::3] = True
    assert pixel_grid(computed) == (0, 0, 4, 3)
    assert pixel_grid(np.ones((5, 5), dtype=bool)) == (0, 0, 1, 1)
    shifted = np.zeros((10, 10), dtype=bool)
    shifted[2::4, 1::4] = True
    assert pixel_grid(shifted) == (2, 1, 4, 4)
    holed = computed.copy()
    holed[4, 3] = False
    assert pixel_grid(holed) is None
    uneven = np.zeros((10, 10), dtype=bool)
    uneven[[0, 3, 4], 0] = True
    assert pixel_grid(uneven) is None
    values = np.arange(100, dtype=float).reshape(10, 10)
    filled = fill_cells(values, (0, 0, 4, 4))
    assert filled[0:4, 0:4].tolist() == [[0.0] * 4] * 4
    assert filled[9, 9] == values[8, 8] and filled[5, 2] == values[4, 0]


def _strided_maps(stride: int, size: int = 12):
    torch.manual_seed(0)
    rows = torch.arange(0, size, stride)
    pixels = (rows[:, None] * size + rows[None, :]).reshape(-1)
    jacobian = torch.randn(len(pixels), 1, size, size)
    return receptive_field_maps_from_jacobian(
        jacobian, fractions=(0.01, 0.5), pixels=pixels, probability=torch.rand(size, size)
    )


def test_strided_receptive_field_maps_fill_their_cells(tmp_path, captured):
    maps = _strided_maps(stride=3)
    path = erf_figure(maps, torch.rand(1, 12, 12), tmp_path / "erf.png", "s00")
    figure = captured[-1]
    assert "one pixel computed per 3 x 3 cell" in figure.get_suptitle()
    bars = colour_bars(figure)
    for title, bar in bars.items():
        if title in ("input", "vessel probability"):
            continue
        ax = next(a for a in figure.axes if a.get_title() == title)
        shown = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
        assert np.isfinite(shown).all(), f"{title}: blank cells inside the computed grid"
        if title.startswith("count"):
            assert bar_label(bar) == "input pixels with |g| > t (sqrt scale)"
            ticks = bar.get_ticks()
            assert len(ticks) >= 2 and np.all(ticks == np.round(ticks))
        if title.startswith("radius"):
            assert bar_label(bar) == "radius [pixels]"
            assert np.all(bar.get_ticks() == np.round(bar.get_ticks()))
        if title.startswith("centroid"):
            assert bar_label(bar) == "distance [pixels]"
    count = next(a for a in figure.axes if a.get_title() == "count, t = 1 %")
    shown = count.images[0].get_array()
    expected = maps.count[0].numpy()
    assert shown[1, 2] == expected[0, 0] and shown[5, 4] == expected[3, 3]
    assert width_px(path) <= PAGE


def test_full_maps_are_drawn_pixel_for_pixel(tmp_path, captured):
    maps = _strided_maps(stride=1, size=8)
    erf_figure(maps, None, tmp_path / "erf.png")
    figure = captured[-1]
    assert "cell" not in figure.get_suptitle()
    count = next(a for a in figure.axes if a.get_title() == "count, t = 1 %")
    assert np.array_equal(count.images[0].get_array(), maps.count[0].numpy())


def test_bin_summary_by_hand():
    values = np.array([1.0, 2.0, 3.0, 10.0, np.nan])
    index = np.array([0, 0, 0, 1, 1])
    counts, means, half = bin_summary(values, index, 3)
    assert counts.tolist() == [3, 1, 0]
    assert means[:2].tolist() == [2.0, 10.0] and np.isnan(means[2])
    assert half[0] == pytest.approx(1.96 / np.sqrt(3)) and half[1] == 0.0


def _stats_table(few: int = 5, many: int = 5000):
    """Pixels in two distance bins: ``few`` at distance 0.5 and ``many`` at distance 3,
    with the same spread of counts."""
    generator = np.random.default_rng(0)
    n = few + many
    predicted = np.zeros(n, dtype=np.int8)
    return {
        "predicted": predicted,
        "label": predicted.copy(),
        "outcome": predicted.copy(),
        "distance": np.r_[np.full(few, 0.5), np.full(many, 3.0)],
        "width": np.full(n, 5.0),
        "count_1%": 100 + 20 * generator.standard_normal(n),
        "mass_radius_50%": np.full(n, 7.0),
    }


def test_stats_plots_show_pixels_per_bin_and_confidence(tmp_path, captured):
    plots = plot_stats(_stats_table(), tmp_path, mode="global")
    figure = next(f for f in captured if "distance to the nearest centreline" in f.get_suptitle())
    axes = {ax.get_title(): ax for ax in figure.axes}
    mean_ax = axes["count, t = 1 %"]
    assert mean_ax.get_ylabel() == "mean input pixels with |g| > t"
    assert "largest |g|" in figure.get_suptitle()
    errorbars = [c for c in mean_ax.containers if type(c).__name__ == "ErrorbarContainer"]
    background = next(c for c in errorbars if c.get_label() == "predicted background")
    segments = background.lines[2][0].get_segments()
    spans = {
        round(float(s[0][0])): float(s[1][1] - s[0][1])
        for s in segments
        if len(s) and np.isfinite(s).all()
    }
    assert spans[1] > 10 * spans[3]  # 5 pixels: a much wider interval than 5,000
    bars_ax = next(ax for ax in figure.axes if ax.get_ylabel() == "pixels" and ax.patches)
    heights = sorted(round(p.get_height()) for p in bars_ax.patches if p.get_height() > 0)
    assert heights == [5, 5000]
    texts = {t.get_text() for t in bars_ax.texts}
    assert {"5", "5,000"} <= texts
    assert bars_ax.get_xlabel() == "distance to the nearest centreline [pixels]"
    outcome = next(f for f in captured if "by outcome" in f.get_suptitle())
    ticks = [t.get_text() for t in outcome.axes[0].get_xticklabels()]
    assert ticks == ["TN\nn = 5,005"]
    assert outcome.axes[0].get_ylabel() == "input pixels with |g| > t"
    for path in plots.values():
        assert width_px(path) <= PAGE


def test_report_text_names_the_markers_and_colours_drawn(tmp_path, captured):
    from matplotlib.colors import rgb_to_hsv, to_rgba

    from vessel_lens.viz.report_sections import attribution_intro, images_intro

    image, probability, label, pixels, gradients, stats = _pixel_inputs(2)
    attribution_plots.pixel_panels(
        image, probability, label, pixels, gradients, stats, tmp_path / "p.png"
    )
    axes = {ax.get_title(): ax for ax in captured[-1].axes}

    def markers(ax):
        return {(line.get_marker(), to_rgba(line.get_color())) for line in ax.lines}

    assert markers(axes["input"]) == {("+", to_rgba("lime"))}
    thresholded = next(ax for title, ax in axes.items() if title.startswith("(3, 4) vessel"))
    assert markers(thresholded) == {("+", to_rgba("red"))}
    (box,) = thresholded.patches
    assert box.get_edgecolor() == to_rgba("cyan")
    assert markers(axes["gradient g of P at (3, 4)"]) == {("+", to_rgba("black"))}
    text = images_intro(0.01, 96)
    for words in ("marked + in green", "in yellow", "bounding box in cyan", "red +", "black +"):
        assert words in text, words
    hue = rgb_to_hsv(attribution_plots.THRESHOLD_COLOUR)[0] * 360
    assert 45 <= hue <= 65  # yellow

    attribution_plots.attribution_grid(image, _grid_rows(["saliency"]), tmp_path / "a.png")
    grid = {ax.get_title(): ax for ax in captured[-1].axes}
    assert markers(grid["(5, 6)"]) == {("+", to_rgba("lime"))} and not grid["(5, 6)"].collections
    assert ("+", to_rgba("black")) in markers(grid["saliency"])
    assert "marked +, green on the input and black on the maps" in attribution_intro(False)
