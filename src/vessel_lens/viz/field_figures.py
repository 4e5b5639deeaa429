"""One figure per image of receptive-field maps: the input, the probability, the mass radii and
centroid distance, and the count and fulfillment maps at every fraction.

Every map has a colour bar naming its quantity and unit (pixels, input pixels, or a fraction);
counts and radii, which are whole numbers, get whole-number ticks. Maps computed on a regular
grid of every S-th pixel (``vessel-lens erf --pixel-stride S``) are drawn as a coarse grid:
each computed pixel fills the S x S cell below and to the right of it, and the title says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vessel_lens.interpret.fields.maps import ReceptiveFieldMaps

PANEL_INCHES = 2.25
"""Width of one column of the figure (six columns fit a 1400-pixel page at 100 dpi)."""


def pixel_grid(computed: np.ndarray) -> tuple[int, int, int, int] | None:
    """(first row, first column, row step, column step) when the computed pixels are every
    pixel of a regular grid (one step or more in each direction), else ``None``."""
    computed = np.asarray(computed, dtype=bool)
    rows = np.flatnonzero(computed.any(1))
    cols = np.flatnonzero(computed.any(0))
    if not len(rows):
        return None
    steps = []
    for positions, size in ((rows, computed.shape[0]), (cols, computed.shape[1])):
        gaps = np.diff(positions)
        step = int(gaps[0]) if len(gaps) else size - int(positions[0])
        if len(gaps) and np.any(gaps != step):
            return None
        steps.append(step)
    grid = np.zeros_like(computed)
    grid[np.ix_(rows, cols)] = True
    if not np.array_equal(grid, computed):
        return None
    return int(rows[0]), int(cols[0]), steps[0], steps[1]


def fill_cells(values: np.ndarray, grid: tuple[int, int, int, int]) -> np.ndarray:
    """Spread each grid pixel's value over its step x step cell (below and to the right)."""
    top, left, row_step, col_step = grid
    height, width = values.shape
    picked = values[top::row_step, left::col_step]
    cells = np.repeat(np.repeat(picked, row_step, axis=0), col_step, axis=1)
    out = np.full(values.shape, np.nan, dtype=np.float64)
    out[top:, left:] = cells[: height - top, : width - left]
    return out


def _panel(figure, grid, position, values, title, label, cmap="viridis", integer=False, **scale):
    from vessel_lens.viz.figures import add_colorbar

    ax = figure.add_subplot(grid[position])
    shown = ax.imshow(values, cmap=cmap, interpolation="nearest", **scale)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    add_colorbar(figure, shown, ax, label, integer=integer, shrink=0.8)
    return ax


def _first_channel(values: torch.Tensor, maps: ReceptiveFieldMaps, axis: int) -> np.ndarray:
    if maps.channels == "separate":
        values = values.select(axis, 0)
    return values.float().numpy()


def _threshold_words(maps: ReceptiveFieldMaps, fraction: float) -> tuple[str, str]:
    """(short label of the fraction, what t is) for the panel titles and the figure title."""
    if maps.mode == "absolute":
        return f"t = {fraction:g}", "t: an absolute |g|"
    whose = "the image's largest |g|" if maps.mode == "global" else "each pixel's own largest |g|"
    return f"t = {100 * fraction:g} %", f"t: a fraction of {whose}"


def erf_figure(
    maps: ReceptiveFieldMaps, image: torch.Tensor | None, path: str | Path, title: str = ""
) -> Path:
    """Save the maps of one image as a PNG at ``path``: maps on a regular pixel grid fill their
    cells (module docs), other pixels not computed are blank; with ``channels="separate"`` the
    first channel is shown."""
    from matplotlib.colors import PowerNorm

    from vessel_lens.viz.figures import (
        INTENSITY_LABEL,
        add_colorbar,
        new_figure,
        save_figure,
        to_numpy_image,
    )

    computed = maps.computed.numpy()
    layout = pixel_grid(computed)
    coarse = layout is not None and (layout[2] > 1 or layout[3] > 1)

    def shown(values: np.ndarray) -> np.ndarray:
        values = np.where(computed, values, np.nan)
        return fill_cells(values, layout) if coarse else values

    columns = max(len(maps.fractions), 5)
    figure = new_figure(PANEL_INCHES * columns, 6.9)
    grid = figure.add_gridspec(3, columns)
    channel = " (channel 0)" if maps.channels == "separate" else ""
    if image is not None:
        ax = figure.add_subplot(grid[0, 0])
        picture = to_numpy_image(image)
        artist = ax.imshow(picture, cmap="gray", interpolation="nearest")
        ax.set_title("input", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if picture.ndim == 2:
            add_colorbar(figure, artist, ax, INTENSITY_LABEL, shrink=0.8)
    target = int(maps.metadata.get("target_class", 1))
    which = "vessel" if target == 1 else f"class {target}"
    probability = maps.probability.numpy()
    title_p, label_p = f"{which} probability", f"P({which})"
    _panel(figure, grid, (0, 1), probability, title_p, label_p, "gray", vmin=0, vmax=1)
    for index, q in enumerate(maps.mass_fractions[:2]):
        radius = shown(_first_channel(maps.mass_radius[index], maps, 0))
        heading = f"radius holding {100 * q:g} % of mass{channel}"
        _panel(figure, grid, (0, 2 + index), radius, heading, "radius [pixels]", integer=True)
    offset = _first_channel(maps.centroid_offset, maps, 0)
    distance = shown(np.linalg.norm(offset, axis=-1))
    _panel(figure, grid, (0, 4), distance, f"centroid distance{channel}", "distance [pixels]")
    words = ""
    for index, fraction in enumerate(maps.fractions):
        label, words = _threshold_words(maps, fraction)
        count = shown(_first_channel(maps.count[index], maps, 0).astype(np.float64))
        # Counts are heavy-tailed: a square-root scale shows the small ones too.
        top = max(float(np.nanmax(count)) if np.isfinite(count).any() else 0.0, 1.0)
        norm = PowerNorm(0.5, vmin=0, vmax=top)
        _panel(
            figure,
            grid,
            (1, index),
            count,
            f"count, {label}{channel}",
            "input pixels with |g| > t (sqrt scale)",
            integer=True,
            norm=norm,
        )
        fulfil = shown(_first_channel(maps.fulfillment[index], maps, 0))
        heading = f"fulfillment, {label}"
        scale = {"vmin": 0, "vmax": 1}
        _panel(figure, grid, (2, index), fulfil, heading, "count / box area", "magma", **scale)
    notes = [f"g: gradient of P({which}) at each pixel; {words}"]
    if coarse:
        notes.append(
            f"one pixel computed per {layout[2]} x {layout[3]} cell (pixel stride); "
            "it fills its cell"
        )
    elif not computed.all():
        notes.append(f"{int(computed.sum())} of {computed.size} pixels computed; the rest blank")
    figure.suptitle("\n".join(filter(None, [title, "; ".join(notes)])), fontsize=9)
    return save_figure(figure, path)
