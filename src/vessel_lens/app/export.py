"""Exports of the current pixel: its numbers as CSV or JSON, the panels as one PNG.

The PNG is drawn on the server with matplotlib (:mod:`vessel_lens.viz.figures`), so it needs
no browser engine; each panel's camera button in the page also saves that panel as PNG.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
from matplotlib.patches import Rectangle

from vessel_lens.app.figures import symmetric_limit
from vessel_lens.app.pixel import CLIP, PixelAnalysis
from vessel_lens.viz.figures import hide_axes, new_figure


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


def panels_png(
    input_rgb: np.ndarray,
    probability: np.ndarray,
    analyses: list[PixelAnalysis],
    map_values: np.ndarray | None = None,
    map_title: str = "",
) -> bytes:
    """Input (with overlays and the pixel), model mask, optional map, and per model the
    gradient map and its thresholded bounding box."""
    top_row = [("input", input_rgb), ("model mask (p > 0.5)", probability > 0.5)]
    if map_values is not None:
        top_row.append((map_title, map_values))
    columns = max(len(top_row), 2)
    rows = 1 + len(analyses)
    figure = new_figure(3.3 * columns, 3.2 * rows)
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False))
    for ax, (title, values) in zip(axes[0], top_row, strict=False):
        cmap = None if values.ndim == 3 else "viridis" if values.dtype != bool else "gray"
        image = ax.imshow(values, cmap=cmap, interpolation="nearest")
        if values.ndim == 2 and values.dtype != bool:
            figure.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=9)
    for i, analysis in enumerate(analyses, start=1):
        limit = symmetric_limit(analysis.signed, CLIP)
        for ax in axes[i][:2]:
            image = ax.imshow(
                analysis.signed, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
            )
            _box(ax, analysis.row, analysis.col, analysis.row, analysis.col, "#00b8d4")
        figure.colorbar(image, ax=axes[i][1], shrink=0.8)
        axes[i][0].set_title(f"{analysis.model_label}\n{analysis.description}", fontsize=8)
        stats = analysis.stats
        if stats is not None and analysis.bbox is not None:
            _box(axes[i][1], *analysis.bbox, "#ff9900")
            margin = 4
            axes[i][1].set_xlim(stats.left - margin - 0.5, stats.right + margin + 0.5)
            axes[i][1].set_ylim(stats.bottom + margin + 0.5, stats.top - margin - 0.5)
            axes[i][1].set_title(
                f"|g| > {analysis.threshold_value:.3g}: count {stats.count}, "
                f"{stats.height}x{stats.width}, fulfillment {stats.fulfillment:.3f}",
                fontsize=8,
            )
        for ax in axes[i][2:]:
            ax.set_visible(False)
    for ax in axes[0][len(top_row) :]:
        ax.set_visible(False)
    hide_axes(axes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
