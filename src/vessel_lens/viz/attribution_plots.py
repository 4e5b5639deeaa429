"""Figures of attributions and of their sanity checks (headless; one PNG per call).

Every map has a colour bar naming its quantity and unit (:mod:`vessel_lens.viz.map_scales`):
signed maps in diverging colours centred on zero, non-negative ones (Grad-CAM) in ``magma``
from zero, limits at the 99.5th percentile of |map|.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from vessel_lens.interpret.attribution.sanity import (
    THRESHOLDED_MASK,
    DeletionResult,
    RandomisationResult,
)
from vessel_lens.interpret.thresholds import PixelStats
from vessel_lens.viz.figures import (
    INTENSITY_LABEL,
    OUTSIDE_MASK_GREY,
    add_colorbar,
    hide_axes,
    new_figure,
    overlay,
    save_figure,
    to_numpy_image,
)
from vessel_lens.viz.map_scales import (
    SIGNED_CMAP,
    add_map_colorbar,
    attribution_label,
    gradient_label,
    is_zero,
    output_symbol,
    shared_label,
    show_map,
    show_signed,
    signed_limit,
    zero_map_reason,
)

__all__ = [
    "SIGNED_CMAP",
    "attribution_grid",
    "deletion_plot",
    "pixel_panels",
    "randomisation_plot",
    "show_map",
    "show_signed",
]

THRESHOLD_COLOUR = (1.0, 0.85, 0.1)
"""Overlay colour (yellow) of the input pixels above a pixel's threshold."""
BOX_COLOUR = "cyan"
"""Colour of their bounding box."""
METHODS_PER_LINE = 4
"""Method panels per line of the attribution grid (more wrap onto further lines)."""


def _as_map(attribution: torch.Tensor | np.ndarray) -> np.ndarray:
    array = (
        attribution.detach().cpu().numpy()
        if isinstance(attribution, torch.Tensor)
        else np.asarray(attribution)
    )
    return array.sum(0) if array.ndim == 3 else array


def mark_pixel(ax: Axes, row: int, col: int, colour: str = "lime") -> None:
    ax.plot([col], [row], marker="+", color=colour, markersize=9, markeredgewidth=1.6)


def outline(ax: Axes, mask: np.ndarray, colour: str = "lime") -> None:
    """Contour of a bool mask, or a marker when it is one pixel."""
    if mask.sum() == 1:
        row, col = np.argwhere(mask)[0]
        mark_pixel(ax, int(row), int(col), colour)
    else:
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)


def draw_box(ax: Axes, stats: PixelStats, colour: str = BOX_COLOUR) -> None:
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


def _explain_zero(ax: Axes, method: str) -> None:
    """Write on an all-zero panel why it is blank."""
    text = "all zero: " + zero_map_reason(method)
    ax.text(
        0.5,
        0.5,
        textwrap.fill(text, 26),
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=6.5,
        bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.9},
    )


def attribution_grid(
    image: torch.Tensor,
    rows: Sequence[tuple[str, np.ndarray, Mapping[str, torch.Tensor]]],
    path: str | Path,
    zoom: int = 0,
    *,
    shared_scale: bool = False,
    output: str = "probability",
    per_line: int = METHODS_PER_LINE,
) -> Path:
    """One block per target: the input with the target marked (+ for one pixel, else
    outlined), then one panel per method, ``per_line`` methods per line, each zoomed to the
    ``zoom`` x ``zoom`` window around the target (0: whole image).

    Every panel has its own colour bar naming the method's quantity and unit, or, with
    ``shared_scale``, all panels share one symmetric scale and one colour bar. A map that is
    zero everywhere says why on its panel. ``output``: what the targets explain
    (``probability`` or ``logit``), for the units.

    ``rows``: (target name, target mask (H, W) bool, {method: attribution (C, H, W)}).
    """
    methods = list(rows[0][2]) if rows else []
    per_line = max(1, min(per_line, len(methods) or 1))
    lines = max(1, math.ceil(len(methods) / per_line))
    columns = 1 + per_line
    figure = new_figure(2.65 * columns, 2.45 * lines * max(len(rows), 1) + 0.4)
    axes = figure.subplots(lines * max(len(rows), 1), columns, squeeze=False)
    shown = to_numpy_image(image)
    values = [{m: _as_map(maps[m]) for m in methods} for _, _, maps in rows]
    limit = max((signed_limit(v) for row in values for v in row.values()), default=1.0)
    shared = []
    for r, (name, mask, _) in enumerate(rows):
        mask = np.asarray(mask)
        first = axes[r * lines, 0]
        first.imshow(shown, cmap="gray", vmin=0, vmax=1)
        outline(first, mask)
        first.set_title(name, fontsize=8)
        for line in range(1, lines):
            axes[r * lines + line, 0].set_axis_off()
        for index, method in enumerate(methods):
            ax = axes[r * lines + index // per_line, 1 + index % per_line]
            panel = values[r][method]
            if is_zero(panel) or shared_scale:  # a zero map is drawn blank (centre colour)
                artist = show_signed(ax, panel, limit)
            else:
                artist = show_map(ax, panel)
            outline(ax, mask, "black")
            zoom_to(ax, mask, zoom)
            ax.set_title(method.replace("_", " "), fontsize=8)
            if is_zero(panel):
                _explain_zero(ax, method)
            elif not shared_scale:
                add_map_colorbar(figure, artist, ax, panel, attribution_label(method, output))
            shared.append((ax, artist))
        for index in range(len(methods), lines * per_line):
            axes[r * lines + index // per_line, 1 + index % per_line].set_axis_off()
    hide_axes(axes)
    if shared_scale and shared:
        every = np.concatenate([v.ravel() for row in values for v in row.values()])
        add_map_colorbar(
            figure,
            shared[0][1],
            [ax for ax, _ in shared],
            every,
            shared_label(methods, output),
            shrink=0.6,
        )
    scale = "one shared colour scale" if shared_scale else "each panel its own colour scale"
    figure.suptitle(
        f"{output_symbol(output)}: the target's {output} (summed over its pixels); x: input "
        f"intensity (0-1). Red raises {output_symbol(output)}, blue lowers it; {scale}, "
        "limits at the 99.5th percentile of |map|",
        fontsize=8,
    )
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
        if any(r["method"] == THRESHOLDED_MASK for r in result.rows):
            axes[1, col].plot(
                steps,
                result.series(THRESHOLDED_MASK, "iou"),
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
    *,
    output: str = "probability",
) -> Path:
    """The original notebook's panels: input, vessel probability, errors (with a label; grey
    outside a field-of-view ``mask``), then per chosen pixel the thresholded-gradient map (the
    input pixels with |gradient| above the pixel's threshold in yellow, their bounding box in
    cyan) and the signed gradient (diverging colours centred on zero, zoomed to ``zoom`` x
    ``zoom`` around the pixel; 0: whole image), two pixels per line. The chosen pixels are
    marked + (green on the first line, red on the thresholded maps, black on the gradients).

    ``pixels``: (row, col, why chosen); ``gradients``: (N, C, H, W), of ``output``
    (``probability`` or ``logit``); ``stats``: one per pixel.
    """
    shown = to_numpy_image(image)
    per_line = 2 if len(pixels) > 1 else 1
    columns = max(3, 2 * per_line)
    lines = 1 + math.ceil(len(pixels) / per_line)
    figure = new_figure(2.9 * columns, 2.75 * lines)
    axes = figure.subplots(lines, columns, squeeze=False)
    artist = axes[0, 0].imshow(shown, cmap="gray", vmin=0, vmax=1)
    if shown.ndim == 2:
        add_colorbar(figure, artist, axes[0, 0], INTENSITY_LABEL)
    axes[0, 0].set_title("input", fontsize=9)
    artist = axes[0, 1].imshow(probability.numpy(), cmap="gray", vmin=0, vmax=1)
    add_colorbar(figure, artist, axes[0, 1], "P(vessel)")
    axes[0, 1].set_title("vessel probability", fontsize=9)
    if label is not None:
        prediction = probability.numpy() > 0.5
        rgb = overlay(shown, prediction & ~label.numpy(), (1.0, 0.15, 0.15), 0.7)
        rgb = overlay(rgb, ~prediction & label.numpy(), (0.2, 0.45, 1.0), 0.7)
        if mask is not None:
            rgb[~mask.numpy()] = OUTSIDE_MASK_GREY
        axes[0, 2].imshow(rgb)
        outside = "" if mask is None else "\noutside the field of view grey"
        axes[0, 2].set_title(
            f"errors (P > 0.5 vs label):\nfalse positives red, false negatives blue{outside}",
            fontsize=7,
        )
    for ax in axes[0, :3]:
        for row, col, _ in pixels:
            mark_pixel(ax, row, col)
    magnitude = gradients.abs().sum(1).numpy()
    y = output_symbol(output)
    for i, ((row, col, why), stat) in enumerate(zip(pixels, stats, strict=True)):
        above = magnitude[i] > stat.threshold
        line, start = 1 + i // per_line, 2 * (i % per_line)
        ax_rf, ax_grad = axes[line, start], axes[line, start + 1]
        ax_rf.imshow(overlay(shown, above, THRESHOLD_COLOUR, 0.8))
        draw_box(ax_rf, stat)
        mark_pixel(ax_rf, row, col, "red")
        peak = float(magnitude[i].max())
        share = f" ({100 * stat.threshold / peak:.3g} % of max)" if peak > 0 else ""
        ax_rf.set_title(
            f"({row}, {col}) {why}\nyellow: |g| > t = {stat.threshold:.2g}{share}\n"
            f"{stat.count} px, cyan box {stat.height}x{stat.width} px",
            fontsize=7,
        )
        values = gradients[i].sum(0).numpy()
        artist = show_signed(ax_grad, values)
        add_map_colorbar(figure, artist, ax_grad, values, gradient_label(output))
        mark_pixel(ax_grad, row, col, "black")
        spot = np.zeros(magnitude[i].shape, dtype=bool)
        spot[row, col] = True
        zoom_to(ax_grad, spot, zoom)
        ax_grad.set_title(f"gradient g of {y} at ({row}, {col})", fontsize=7)
    hide_axes(axes)
    for ax in axes.ravel():
        if not ax.images:
            ax.set_axis_off()
    return save_figure(figure, path)
