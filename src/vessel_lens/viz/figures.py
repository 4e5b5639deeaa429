"""Small figure helpers shared by every plot: headless matplotlib figures saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

INTENSITY_LABEL = "input intensity (0-1)"
"""Colour-bar label of a grey input image (images are read into [0, 1])."""


def new_figure(width: float, height: float) -> Figure:
    """A figure bound to the Agg canvas (no pyplot state, safe in threads and servers)."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def add_colorbar(figure: Figure, artist, ax, label: str, *, integer: bool = False, **kwargs):
    """A colour bar beside ``ax`` (or a list of axes) naming its quantity and unit;
    ``integer`` keeps only whole-number ticks (counts). Extra ``kwargs`` go to
    ``Figure.colorbar`` (e.g. ``extend="both"`` when the colour limits clip the data)."""
    kwargs.setdefault("shrink", 0.85)
    bar = figure.colorbar(artist, ax=ax, **kwargs)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if integer:
        bar.set_ticks(integer_ticks(artist.norm.vmin, artist.norm.vmax, artist.norm))
    else:  # each tick reads alone (no "1e-5" offset above the bar)
        bar.formatter = FuncFormatter(lambda value, _: f"{value:.3g}")
        bar.update_ticks()
    return bar


def integer_ticks(low: float, high: float, norm=None, count: int = 5) -> list[int]:
    """About ``count`` whole numbers from ``low`` to ``high``: round numbers evenly spaced in the
    colour scale of a non-linear ``norm`` (e.g. a square-root scale), else MaxNLocator's."""
    low, high = float(low), float(high)
    if getattr(norm, "gamma", 1.0) != 1.0 and high > low:
        spots = np.ravel(norm.inverse(np.linspace(0.0, 1.0, count + 1)))[1:-1]
        ticks = {int(np.ceil(low)), int(np.floor(high))}
        for value in spots:
            digits = max(int(np.floor(np.log10(max(float(value), 1.0)))), 0)
            ticks.add(int(round(float(value), -digits)))
    else:
        ticks = {int(v) for v in MaxNLocator(count, integer=True).tick_values(low, high)}
    return sorted(t for t in ticks if low - 1e-9 <= t <= high + 1e-9) or [int(np.ceil(low))]


def to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) tensor/array -> (H, W) or (H, W, 3) float array for imshow: the
    first three channels as RGB, or the first channel of one- and two-channel images."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3:
        # one channel, or two (e.g. grey + alpha): the first is shown
        array = np.moveaxis(array[:3], 0, -1) if array.shape[0] >= 3 else array[0]
    return array.astype(np.float32)


def overlay(
    image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 0.45
) -> np.ndarray:
    """Blend a boolean mask in ``colour`` over a grey or RGB image; returns (H, W, 3)."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image.copy()
    rgb = np.clip(rgb, 0.0, 1.0)
    mask = np.asarray(mask, dtype=bool)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return rgb


OUTSIDE_MASK_GREY = 0.35
"""Grey of the pixels outside a field-of-view mask in error maps (they are not scored)."""


def error_map(
    prediction: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """RGB error map: true positives white, false positives red, false negatives blue; pixels
    outside a field-of-view ``mask`` grey."""
    prediction = np.asarray(prediction, dtype=bool)
    label = np.asarray(label, dtype=bool)
    out = np.zeros((*label.shape, 3), dtype=np.float32)
    out[prediction & label] = (1, 1, 1)
    out[prediction & ~label] = (1, 0.15, 0.15)
    out[~prediction & label] = (0.2, 0.45, 1)
    if mask is not None:
        out[~np.asarray(mask, dtype=bool)] = OUTSIDE_MASK_GREY
    return out


def hide_axes(axes) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
