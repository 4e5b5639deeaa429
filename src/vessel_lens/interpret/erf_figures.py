"""One figure per image of receptive-field maps: the input, the probability, the mass radii and
centroid distance, and the count and fulfillment maps at every fraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vessel_lens.interpret.erf_maps import ReceptiveFieldMaps


def _panel(figure, grid, position, values, title, cmap="viridis", vmin=None, vmax=None, norm=None):
    ax = figure.add_subplot(grid[position])
    if norm is not None:
        shown = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
    else:
        shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    figure.colorbar(shown, ax=ax, shrink=0.8)
    return ax


def _first_channel(values: torch.Tensor, maps: ReceptiveFieldMaps, axis: int) -> np.ndarray:
    if maps.channels == "separate":
        values = values.select(axis, 0)
    return values.float().numpy()


def erf_figure(
    maps: ReceptiveFieldMaps, image: torch.Tensor | None, path: str | Path, title: str = ""
) -> Path:
    """Save the maps of one image as a PNG at ``path`` (pixels not computed are blank; with
    ``channels="separate"`` the first channel is shown)."""
    from matplotlib.colors import PowerNorm

    from vessel_lens.viz.figures import new_figure, save_figure, to_numpy_image

    columns = max(len(maps.fractions), 5)
    figure = new_figure(2.6 * columns, 7.2)
    grid = figure.add_gridspec(3, columns)
    channel = " (channel 0)" if maps.channels == "separate" else ""
    if image is not None:
        ax = figure.add_subplot(grid[0, 0])
        ax.imshow(to_numpy_image(image), cmap="gray", interpolation="nearest")
        ax.set_title("input", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _panel(figure, grid, (0, 1), maps.probability.numpy(), "vessel probability", "gray", 0, 1)
    for index, q in enumerate(maps.mass_fractions[:2]):
        radius = _first_channel(maps.mass_radius[index], maps, 0)
        _panel(figure, grid, (0, 2 + index), radius, f"mass radius {100 * q:g} %{channel}")
    offset = _first_channel(maps.centroid_offset, maps, 0)
    _panel(figure, grid, (0, 4), np.linalg.norm(offset, axis=-1), f"centroid distance{channel}")
    for index, fraction in enumerate(maps.fractions):
        count = _first_channel(maps.count[index], maps, 0)
        count = np.where(count < 0, np.nan, count)
        label = f"{100 * fraction:g} %" if maps.mode != "absolute" else f"t = {fraction:g}"
        # Counts are heavy-tailed: a square-root scale shows the small ones too.
        norm = PowerNorm(0.5, vmin=0, vmax=max(float(np.nanmax(count)), 1.0))
        _panel(figure, grid, (1, index), count, f"count, {maps.mode} {label}{channel}", norm=norm)
        fulfil = _first_channel(maps.fulfillment[index], maps, 0)
        _panel(figure, grid, (2, index), fulfil, f"fulfillment, {label}", "magma", 0, 1)
    if title:
        figure.suptitle(title, fontsize=11)
    return save_figure(figure, path)
