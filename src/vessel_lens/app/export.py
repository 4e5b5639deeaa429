"""Exports of the current pixel: its numbers as CSV or JSON, the panels as one PNG.

The PNG is drawn on the server with matplotlib (:mod:`vessel_lens.viz.figures`), so it needs
no browser engine; it holds what the page shows (the same panels, titles in full, colour bars
and the numbers). Each panel's camera button in the page also saves that panel as PNG.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vessel_lens.app.figures import symmetric_limit, zoom_window
from vessel_lens.app.pixel import CLIP, PixelAnalysis, gradient_title, zoom_title
from vessel_lens.app.titles import title_lines
from vessel_lens.viz.figures import add_colorbar, hide_axes, new_figure

EXPORT_TITLE_CHARS = 52
"""Characters per title line in the PNG (a 3.4-inch panel at 8 pt)."""


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return value


def numbers_csv(analyses: list[PixelAnalysis]) -> str:
    """One header row and one row per model."""
    rows = [{k: _plain(v) for k, v in a.numbers().items()} for a in analyses]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def numbers_json(analyses: list[PixelAnalysis]) -> str:
    rows = [{k: _plain(v) for k, v in a.numbers().items()} for a in analyses]
    return json.dumps({"format": "vessel-lens-app-pixel", "pixels": rows}, indent=2)


def _box(ax, top, left, bottom, right, colour, style="-") -> None:
    """A rectangle around rows top..bottom, cols left..right (inclusive)."""
    ax.add_patch(
        Rectangle(
            (left - 0.5, top - 0.5),
            right - left + 1,
            bottom - top + 1,
            fill=False,
            edgecolor=colour,
            linewidth=1.2,
            linestyle=style,
        )
    )


@dataclass
class MapPanel:
    """The map panel as the page shows it: values (None when it shows a note instead), its
    title, colour scale and colour-bar label."""

    values: np.ndarray | None
    title: str
    note: str = ""
    cmap: object = "viridis"
    vmin: float | None = None
    vmax: float | None = None
    unit: str = ""


PIXEL_COLOUR, FIELD_COLOUR, BOX_COLOUR = "#00b8d4", "#00b8d4", "#ff9900"


def _title(ax, text: str) -> None:
    ax.set_title("\n".join(title_lines(text, EXPORT_TITLE_CHARS)), fontsize=8, loc="left")


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, "\n".join(title_lines(text, 40)), ha="center", va="center", fontsize=7,
            color="#555555", transform=ax.transAxes)  # fmt: skip


def _numbers(ax, caption: str, rows: list[tuple[str, str]]) -> None:
    """The numbers table of the page, as text."""
    lines = [*title_lines(caption, 44), ""]
    for name, value in rows:
        parts = title_lines(value, 30)
        lines.append(f"{name:<18} {parts[0]}")
        lines.extend(f"{'':<18} {part}" for part in parts[1:])
    ax.text(0.0, 1.0, "\n".join(lines), ha="left", va="top", fontsize=6.5, family="monospace",
            transform=ax.transAxes)  # fmt: skip
    ax.set_axis_off()


def _gradient(figure, ax, analysis: PixelAnalysis, prefix: str, clip: bool) -> None:
    limit = symmetric_limit(analysis.signed, CLIP if clip else None)
    image = ax.imshow(
        analysis.signed, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
    )
    _box(ax, analysis.row, analysis.col, analysis.row, analysis.col, PIXEL_COLOUR)
    add_colorbar(figure, image, ax, "d p / d input (summed over channels)",
                 extend="both" if clip else "neither")  # fmt: skip
    _title(ax, gradient_title(analysis.description, prefix, clip))


def _thresholded(figure, ax, analysis: PixelAnalysis, prefix: str, clip: bool) -> None:
    """|g| above the threshold around its box, the rest blank: what the page's panel shows."""
    _title(ax, zoom_title(analysis, prefix))
    if analysis.stats is None:
        _note(ax, "the threshold is not known until the global max is computed")
        return
    magnitude, threshold = analysis.magnitude, analysis.threshold_value
    t, le, b, r = zoom_window(analysis.bbox, analysis.row, analysis.col, magnitude.shape)
    window = magnitude[t : b + 1, le : r + 1].astype(np.float32, copy=True)
    window[window <= threshold] = np.nan
    top = symmetric_limit(window, CLIP if clip else None)
    low = float(threshold) if threshold < top else 0.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(window, cmap=cmap, vmin=low, vmax=top, interpolation="nearest",
                      extent=(le - 0.5, r + 0.5, b + 0.5, t - 0.5))  # fmt: skip
    if analysis.bbox is not None:
        _box(ax, *analysis.bbox, BOX_COLOUR)
    _box(ax, analysis.row, analysis.col, analysis.row, analysis.col, PIXEL_COLOUR)
    add_colorbar(figure, image, ax, f"|g| above t = {threshold:.3g}")


def _input(ax, input_rgb: np.ndarray, title: str, first: PixelAnalysis | None, overlays) -> None:
    ax.imshow(input_rgb, interpolation="nearest")
    if first is not None:
        if "field" in overlays and first.field_box is not None:
            top, bottom, left, right = first.field_box
            _box(ax, top, left, bottom - 1, right - 1, FIELD_COLOUR, "--")
        if "bbox" in overlays and first.bbox is not None:
            _box(ax, *first.bbox, BOX_COLOUR)
        _box(ax, first.row, first.col, first.row, first.col, PIXEL_COLOUR)
    _title(ax, title)


def _map(figure, ax, panel: MapPanel) -> None:
    title = panel.title + (f" ({panel.note})" if panel.note and panel.values is not None else "")
    _title(ax, title)
    if panel.values is None:
        _note(ax, panel.note)
        return
    cmap = panel.cmap
    if isinstance(cmap, str):
        cmap = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    image = ax.imshow(panel.values, cmap=cmap, vmin=panel.vmin, vmax=panel.vmax,
                      interpolation="nearest")  # fmt: skip
    if panel.unit:
        add_colorbar(figure, image, ax, panel.unit, integer="count" in panel.unit)


def panels_png(*args, **kwargs) -> bytes:
    """:func:`panels_figure` as PNG bytes."""
    buffer = io.BytesIO()
    panels_figure(*args, **kwargs).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def panels_figure(
    input_rgb: np.ndarray,
    probability: np.ndarray,
    analyses: list[PixelAnalysis],
    map_panel: MapPanel | None = None,
    *,
    input_title: str = "input",
    overlays: frozenset[str] | set[str] = frozenset(),
    clip: bool = True,
    numbers: list[tuple[str, list[tuple[str, str]]]] | None = None,
) -> Figure:
    """The page as one figure: the input (with the pixel, its receptive field and box), the
    map panel, the model mask; per model the gradient map, the thresholded map it names
    ("|g| > t") and the numbers. Titles are the page's, in full; every map has a colour bar
    naming its quantity."""
    rows = 1 + len(analyses)
    figure = new_figure(3 * 3.4, 3.3 * rows)
    axes = np.asarray(figure.subplots(rows, 3, squeeze=False))
    first = analyses[0] if analyses else None
    _input(axes[0][0], input_rgb, input_title, first, overlays)
    if map_panel is None:
        axes[0][1].set_visible(False)
    else:
        _map(figure, axes[0][1], map_panel)
    axes[0][2].imshow(probability > 0.5, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    _title(axes[0][2], "Model mask (p > 0.5)")
    for i, analysis in enumerate(analyses, start=1):
        prefix = "" if len(analyses) == 1 else ("A: ", "B: ")[i - 1]
        _gradient(figure, axes[i][0], analysis, prefix, clip)
        _thresholded(figure, axes[i][1], analysis, prefix, clip)
        caption, table = numbers[i - 1] if numbers else (analysis.model_label, [])
        _numbers(axes[i][2], f"{prefix}{caption}", table)
    hide_axes([ax for ax in np.ravel(axes) if ax.axison])
    return figure
