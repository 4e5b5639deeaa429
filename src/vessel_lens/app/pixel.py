"""The analysis behind every hover or click: one pixel's map, threshold, box and numbers.

Pure functions of the server state and the request; the callbacks only translate between
these and Dash. Thresholds use :mod:`vessel_lens.interpret.thresholds` exactly: ``fraction``
is a fraction of the maximum (0.01 = 1 %) for modes ``global`` and ``pixel``, and the
threshold itself for ``absolute``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from vessel_lens.app import figures
from vessel_lens.app.images import View
from vessel_lens.app.methods import Pending, get_method
from vessel_lens.errors import ConfigError
from vessel_lens.interpret.thresholds import (
    THRESHOLD_MODES,
    PixelStats,
    check_fraction,
    gradient_magnitude,
    pixel_stats,
    threshold_value,
)

SLIDER_RANGE = (-5.0, 0.0)
"""The threshold slider's range in log10(fraction): 0.001 % .. 100 %."""


@dataclass(frozen=True)
class Threshold:
    fraction: float
    mode: str


def parse_threshold(fraction: object, mode: object) -> Threshold:
    """Validate the page's threshold; :class:`ConfigError` with a readable message otherwise."""
    if not isinstance(mode, str) or mode not in THRESHOLD_MODES:
        raise ConfigError(f"threshold mode {str(mode)[:20]!r}: choose {', '.join(THRESHOLD_MODES)}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, str)):
        raise ConfigError("threshold: enter a number such as 0.01 (= 1 %)")
    try:
        value = float(fraction)
    except ValueError:
        raise ConfigError(f"threshold {str(fraction)[:20]!r}: not a number") from None
    except OverflowError:
        raise ConfigError(f"threshold {str(fraction)[:20]}...: too large") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"threshold {value}: must be a positive number (0.01 means 1 %)")
    check_fraction(value, mode)
    return Threshold(value, mode)


def slider_to_fraction(position: object) -> float:
    """Slider position (log10 of the fraction) → fraction, clipped to the slider's range."""
    if isinstance(position, bool) or not isinstance(position, (int, float)):
        raise ConfigError("threshold slider: expected a number")
    try:
        position = float(position)
    except OverflowError:
        position = math.inf
    if not math.isfinite(position):
        raise ConfigError("threshold slider: expected a finite number")
    low, high = SLIDER_RANGE
    return float(10 ** min(max(position, low), high))


def fraction_to_slider(fraction: float) -> float:
    low, high = SLIDER_RANGE
    return round(min(max(math.log10(fraction), low), high), 3)


@dataclass
class PixelAnalysis:
    """One model's map for one pixel, thresholded. ``stats`` is None when the threshold is
    not known (``global`` before its maximum is)."""

    model_key: str
    model_label: str
    view: View
    row: int
    col: int
    method: str
    description: str
    signed: np.ndarray
    magnitude: np.ndarray
    threshold: Threshold
    threshold_value: float | None
    stats: PixelStats | None
    global_max: float | None
    global_note: str
    probability: float
    field_box: tuple[int, int, int, int] | None

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        if self.stats is None or self.stats.count == 0:
            return None
        return self.stats.top, self.stats.left, self.stats.bottom, self.stats.right

    def numbers(self) -> dict[str, object]:
        """Everything the page shows about this pixel, for the table and the exports."""
        stats = self.stats.as_dict() if self.stats is not None else {}
        view = self.view
        return {
            "image": view.key.split("/", 1)[-1],
            "view_top": view.top,
            "view_left": view.left,
            "view_height": view.height,
            "view_width": view.width,
            "model": self.model_label,
            "method": self.method,
            "map": self.description,
            "row": self.row,
            "col": self.col,
            "image_row": view.top + self.row,
            "image_col": view.left + self.col,
            "probability": round(self.probability, 6),
            "mode": self.threshold.mode,
            "fraction": self.threshold.fraction,
            "threshold": self.threshold_value,
            "global_max": self.global_max,
            "max_abs": float(self.magnitude.max()),
            "count": stats.get("count"),
            "bbox_top": stats.get("top"),
            "bbox_left": stats.get("left"),
            "bbox_bottom": stats.get("bottom"),
            "bbox_right": stats.get("right"),
            "x_extent": stats.get("width"),
            "y_extent": stats.get("height"),
            "area": stats.get("area"),
            "fulfillment": stats.get("fulfillment"),
        }


def analyse_pixel(
    state,
    model_key: str,
    view: View,
    row: int,
    col: int,
    threshold: Threshold,
    method: str = "gradient",
    target: str = "pixel",
    wait: bool = True,
) -> PixelAnalysis:
    """Compute (or fetch from the caches) the map of ``method`` for pixel (row, col) of the
    view, and threshold it. A slow method's map that is not cached yet is computed here when
    ``wait``; otherwise :class:`~vessel_lens.app.methods.Pending` is raised (the page runs it
    as a background task)."""
    entry = state.model(model_key)
    chosen = get_method(method)
    if target not in chosen.targets:
        raise ConfigError(f"method {method} explains only: {', '.join(chosen.targets)}")
    if not (0 <= row < view.height and 0 <= col < view.width):
        raise ConfigError(f"pixel ({row}, {col}) lies outside the {view.height}x{view.width} view")
    try:
        values, description = chosen.compute(state, model_key, view, row, col, target)
    except Pending as pending:
        if not wait:
            raise
        pending.run(threading.Event(), lambda _fraction: None)
        values, description = chosen.compute(state, model_key, view, row, col, target)
    values = values.float()
    magnitude = gradient_magnitude(values)
    if method == "gradient":
        global_max, global_note = state.global_max(model_key, view)
    else:
        global_max, global_note = None, "global applies to the exact gradient only"
    stats = value = None
    if threshold.mode != "global" or global_max is not None:
        value = threshold_value(magnitude, threshold.fraction, threshold.mode, global_max)
        stats = pixel_stats(magnitude, value)
    probability = float(state.probability(model_key, view)[row, col])
    return PixelAnalysis(
        model_key=model_key,
        model_label=entry.label,
        view=view,
        row=row,
        col=col,
        method=method,
        description=description,
        signed=values.sum(0).numpy(),
        magnitude=magnitude.numpy(),
        threshold=threshold,
        threshold_value=value,
        stats=stats,
        global_max=global_max,
        global_note=global_note,
        probability=probability,
        field_box=state.receptive_box(model_key, view, row, col),
    )


CLIP = 99.5
"""Percentile of |g| at which the colour scales saturate when clipping is on."""


def gradient_title(description: str, prefix: str = "", clip: bool = True) -> str:
    """The gradient panel's title (the page, the PNG export and the paint route), from the
    method's description of its map."""
    return prefix + description + (f" (colours clipped at p{CLIP:g} of |g|)" if clip else "")


def zoom_title(analysis: PixelAnalysis, prefix: str = "") -> str:
    """The thresholded panel's title: the threshold value, count and box."""
    if analysis.stats is None:
        return f"threshold unknown: global max {analysis.global_note}"
    stats = analysis.stats
    return (
        f"{prefix}|g| > {analysis.threshold_value:.3g}: {stats.count} px, "
        f"box {stats.height}x{stats.width}"
    )


def gradient_panel(analysis: PixelAnalysis, prefix: str = "", clip: bool = True) -> dict:
    view = analysis.view
    revision = f"{analysis.model_key}|{view.key}|{view.top},{view.left},{view.height},{view.width}"
    title = gradient_title(analysis.description, prefix, clip)
    return figures.gradient_figure(
        analysis.signed, title, revision=revision, clip=CLIP if clip else None
    )


def zoom_panel(analysis: PixelAnalysis, prefix: str = "", clip: bool = True) -> dict:
    if analysis.stats is None:
        return figures.empty_figure(zoom_title(analysis, prefix))
    title = zoom_title(analysis, prefix)
    return figures.zoom_figure(
        analysis.magnitude,
        analysis.threshold_value,
        analysis.bbox,
        analysis.row,
        analysis.col,
        title,
        clip=CLIP if clip else None,
    )


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def stats_rows(analysis: PixelAnalysis) -> list[tuple[str, str]]:
    """The table under the zoomed view (the original app's numbers, plus context)."""
    n = analysis.numbers()
    mode = analysis.threshold.mode
    if mode == "absolute":
        rule = f"absolute: t = {_fmt(n['fraction'])}"
    else:
        rule = f"{mode}: {100 * analysis.threshold.fraction:.4g} % of the max"
    if mode == "global":
        rule += f" ({analysis.global_note})"
    box = "—"
    if n["count"]:
        box = f"rows {n['bbox_top']}–{n['bbox_bottom']}, cols {n['bbox_left']}–{n['bbox_right']}"
    return [
        (
            "pixel (row, col)",
            f"({n['row']}, {n['col']}) in the view; ({n['image_row']}, {n['image_col']}) in the image",
        ),
        ("vessel probability", f"{n['probability']:.3f}"),
        (
            "threshold",
            f"{_fmt(n['threshold'])} — {rule}"
            if n["threshold"] is not None
            else f"unknown until the global max is computed — {rule}",
        ),
        ("pixel count", _fmt(n["count"])),
        ("x extent", _fmt(n["x_extent"])),
        ("y extent", _fmt(n["y_extent"])),
        ("area", _fmt(n["area"])),
        ("fulfillment", _fmt(n["fulfillment"])),
        ("bounding box", box),
        ("max |g|", _fmt(n["max_abs"])),
        (
            "global max",
            _fmt(n["global_max"]) if n["global_max"] is not None else analysis.global_note,
        ),
    ]
