"""Figures of attributions and of their sanity checks (headless; one PNG per call).

Signed maps are drawn with a diverging colour map centred on zero (``RdBu_r``: red positive,
blue negative) and symmetric limits at the 99.5th percentile of |map|, so a few extreme pixels
do not wash out the rest; non-negative maps (Grad-CAM) use ``magma`` from zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from vessel_lens.interpret.sanity import RECEPTIVE_FIELD, DeletionResult, RandomisationResult
from vessel_lens.interpret.thresholds import PixelStats
from vessel_lens.viz.figures import (
    OUTSIDE_MASK_GREY,
    hide_axes,
    new_figure,
    overlay,
    save_figure,
    to_numpy_image,
)

SIGNED_CMAP = "RdBu_r"


def _as_map(attribution: torch.Tensor | np.ndarray) -> np.ndarray:
    array = (
        attribution.detach().cpu().numpy()
        if isinstance(attribution, torch.Tensor)
        else np.asarray(attribution)
    )
    return array.sum(0) if array.ndim == 3 else array


def show_signed(ax: Axes, values: np.ndarray, percentile: float = 99.5):
    """Draw a signed map centred on zero; returns the image artist."""
    limit = float(np.percentile(np.abs(values), percentile)) if values.size else 0.0
    limit = limit if limit > 0 else float(np.abs(values).max()) or 1.0
    return ax.imshow(values, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit)


def show_map(ax: Axes, values: np.ndarray):
    """Signed colours when the map has negative values, else ``magma`` from zero."""
    if values.min() < 0:
        return show_signed(ax, values)
    top = float(np.percentile(values, 99.5)) or float(values.max()) or 1.0
    return ax.imshow(values, cmap="magma", vmin=0, vmax=top)


def mark_pixel(ax: Axes, row: int, col: int, colour: str = "lime") -> None:
    ax.plot([col], [row], marker="+", color=colour, markersize=9, markeredgewidth=1.6)


def outline(ax: Axes, mask: np.ndarray, colour: str = "lime") -> None:
    """Contour of a bool mask, or a marker when it is one pixel."""
    if mask.sum() == 1:
        row, col = np.argwhere(mask)[0]
        mark_pixel(ax, int(row), int(col), colour)
    else:
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)


def draw_box(ax: Axes, stats: PixelStats, colour: str = "yellow") -> None:
    if stats.count:
        ax.add_patch(
            Rectangle(
                (stats.left - 0.5, stats.top - 0.5),
                stats.width,
                stats.height,
                fill=False,
                edgecolor=colour,
                linewidth=1.0,
            )
        )


def zoom_to(ax: Axes, mask: np.ndarray, zoom: int) -> None:
    """Show only the ``zoom`` x ``zoom`` window centred on the mask's bounding box (grown to
    hold the box, clamped to the image); ``zoom`` 0 keeps the whole image."""
    height, width = mask.shape
    if zoom <= 0 or zoom >= max(height, width):
        return
    rows, cols = np.nonzero(mask)
    limits = []
    for low, high, size in ((rows.min(), rows.max(), height), (cols.min(), cols.max(), width)):
        side = min(max(zoom, high - low + 9), size)
        start = round(float(low + high) / 2 - side / 2)
        start = min(max(start, 0), size - side)
        limits.append((start - 0.5, start + side - 0.5))
    ax.set_xlim(*limits[1])
    ax.set_ylim(limits[0][1], limits[0][0])


def attribution_grid(
    image: torch.Tensor,
    rows: Sequence[tuple[str, np.ndarray, Mapping[str, torch.Tensor]]],
    path: str | Path,
    zoom: int = 0,
) -> Path:
    """One row per target: the input with the target outlined, then one panel per method,
    each zoomed to the ``zoom`` x ``zoom`` window around the target (0: whole image).

    ``rows``: (target name, target mask (H, W) bool, {method: attribution (C, H, W)}).
    """
    methods = list(rows[0][2]) if rows else []
    columns = 1 + len(methods)
    figure = new_figure(2.2 * columns, 2.35 * max(len(rows), 1))
    axes = figure.subplots(max(len(rows), 1), columns, squeeze=False)
    shown = to_numpy_image(image)
    for r, (name, mask, maps) in enumerate(rows):
        mask = np.asarray(mask)
        axes[r, 0].imshow(shown, cmap="gray", vmin=0, vmax=1)
        outline(axes[r, 0], mask)
        axes[r, 0].set_title(name, fontsize=7)
        for c, method in enumerate(methods, start=1):
            values = _as_map(maps[method])
            show_map(axes[r, c], values)
            outline(axes[r, c], mask, "black")
            zoom_to(axes[r, c], mask, zoom)
            axes[r, c].set_title(method.replace("_", " "), fontsize=8)
    hide_axes(axes)
    return save_figure(figure, path)


def randomisation_plot(results: Sequence[RandomisationResult], path: str | Path) -> Path:
    """Similarity (mean over targets) against the randomisation step, one column per mode.

    Top row: Spearman rank correlation of |attribution|; bottom row: SSIM, with the
    receptive-field maps' IoU dashed.
    """
    figure = new_figure(5.2 * max(len(results), 1), 6.2)
    axes = figure.subplots(2, max(len(results), 1), squeeze=False)
    for col, result in enumerate(results):
        steps = np.arange(len(result.steps))
        for method in result.methods:
            axes[0, col].plot(steps, result.series(method, "spearman"), marker="o", label=method)
            axes[1, col].plot(steps, result.series(method, "ssim"), marker="o", label=method)
        if any(r["method"] == RECEPTIVE_FIELD for r in result.rows):
            axes[1, col].plot(
                steps,
                result.series(RECEPTIVE_FIELD, "iou"),
                linestyle="--",
                marker="s",
                color="black",
                label="receptive field IoU",
            )
        prefix = "+ " if result.mode == "cascading" else ""
        for row, metric in enumerate(("Spearman of |map|", "SSIM / IoU")):
            ax = axes[row, col]
            ax.set_xticks(steps, [prefix + s for s in result.steps], rotation=60, fontsize=7)
            ax.set_ylim(-0.25, 1.05)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.grid(alpha=0.3)
            ax.set_ylabel(metric)
            ax.set_title(f"{result.mode} randomisation (head → stem)", fontsize=9)
        axes[1, col].legend(fontsize=7, loc="lower left")
    return save_figure(figure, path)


def deletion_plot(results: Sequence[DeletionResult], path: str | Path) -> Path:
    """Curves of the target's output against the fraction of pixels removed/inserted."""
    modes = sorted({r.mode for r in results}, key=["deletion", "insertion"].index)
    figure = new_figure(4.8 * max(len(modes), 1), 3.6)
    axes = figure.subplots(1, max(len(modes), 1), squeeze=False)[0]
    for ax, mode in zip(axes, modes, strict=False):
        chosen = [r for r in results if r.mode == mode]
        for result in chosen:
            ax.plot(
                result.fractions,
                result.values,
                label=f"{result.label} (AUC {result.auc:.3f})",
            )
        ax.plot(
            chosen[0].fractions,
            chosen[0].random_values,
            color="grey",
            linestyle="--",
            label=f"random order (AUC {chosen[0].random_auc:.3f})",
        )
        ax.set_xlabel(f"fraction of pixels {'removed' if mode == 'deletion' else 'inserted'}")
        ax.set_ylabel("target output")
        ax.set_title(f"{mode}: {chosen[0].target}", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(figure, path)


def pixel_panels(
    image: torch.Tensor,
    probability: torch.Tensor,
    label: torch.Tensor | None,
    pixels: Sequence[tuple[int, int, str]],
    gradients: torch.Tensor,
    stats: Sequence[PixelStats],
    path: str | Path,
    zoom: int = 0,
    mask: torch.Tensor | None = None,
) -> Path:
    """The original notebook's panels: input, vessel probability, errors (with a label; grey
    outside a field-of-view ``mask``), then
    per chosen pixel the thresholded-gradient map (bounding box in yellow) and the signed
    gradient (diverging colours centred on zero, zoomed to ``zoom`` x ``zoom`` around the
    pixel; 0: whole image).

    ``pixels``: (row, col, why chosen); ``gradients``: (N, C, H, W); ``stats``: one per pixel.
    """
    shown = to_numpy_image(image)
    columns = max(3, 2 * len(pixels))
    figure = new_figure(2.4 * columns, 2.6 * 2)
    axes = figure.subplots(2, columns, squeeze=False)
    axes[0, 0].imshow(shown, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].imshow(probability.numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0, 1].set_title("vessel probability", fontsize=9)
    if label is not None:
        prediction = probability.numpy() > 0.5
        rgb = overlay(shown, prediction & ~label.numpy(), (1.0, 0.15, 0.15), 0.7)
        rgb = overlay(rgb, ~prediction & label.numpy(), (0.2, 0.45, 1.0), 0.7)
        if mask is not None:
            rgb[~mask.numpy()] = OUTSIDE_MASK_GREY
        axes[0, 2].imshow(rgb)
        axes[0, 2].set_title("false positives red, false negatives blue", fontsize=8)
    for ax in axes[0, :3]:
        for row, col, _ in pixels:
            mark_pixel(ax, row, col)
    magnitude = gradients.abs().sum(1).numpy()
    for i, ((row, col, why), stat) in enumerate(zip(pixels, stats, strict=True)):
        above = magnitude[i] > stat.threshold
        ax_rf, ax_grad = axes[1, 2 * i], axes[1, 2 * i + 1]
        ax_rf.imshow(overlay(shown, above, (1.0, 0.85, 0.1), 0.8))
        draw_box(ax_rf, stat)
        mark_pixel(ax_rf, row, col, "red")
        ax_rf.set_title(
            f"({row}, {col}) {why}\n{stat.count} px > t, box {stat.height}x{stat.width}",
            fontsize=7,
        )
        show_signed(ax_grad, gradients[i].sum(0).numpy())
        mark_pixel(ax_grad, row, col, "black")
        spot = np.zeros(magnitude[i].shape, dtype=bool)
        spot[row, col] = True
        zoom_to(ax_grad, spot, zoom)
        ax_grad.set_title(f"gradient at ({row}, {col})", fontsize=7)
    hide_axes(axes)
    for ax in axes.ravel()[len(axes[0]) :]:
        if not ax.images:
            ax.set_axis_off()
    for ax in axes[0, 3 if label is not None else 2 :]:
        ax.set_axis_off()
    return save_figure(figure, path)
