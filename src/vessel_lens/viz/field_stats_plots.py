"""Plots of ``vessel-lens erf-stats``: field size by outcome, and against the distance to the
centreline and the local vessel width, for predicted vessel and background pixels.

Every plot says how many pixels stand behind each number: binned plots show the mean with its
95 % confidence interval (1.96 standard errors; hollow markers for bins of fewer than
:data:`FEW` pixels) above a bar chart of the pixels per bin (log scale, numbers written on the
bars); box plots are as wide as the square root of their pixel count and name it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vessel_lens.interpret.fields.stats import (
    DISTANCE_BINS,
    OUTCOMES,
    WIDTH_BINS,
    bin_index,
    metric_names,
)

COLOURS = {"background": "#3070ff", "vessel": "#e03030"}
FEW = 30
"""Bins with fewer pixels than this are drawn with hollow markers."""
PANEL_INCHES = 3.3
"""Width of one metric's column (four fit a 1400-pixel page at 100 dpi)."""
_MODE_WORDS = {
    "global": "the image's largest |g|",
    "pixel": "each pixel's own largest |g|",
}


def _shown_metrics(table: dict[str, np.ndarray]) -> list[str]:
    metrics = metric_names(table)
    counts = [m for m in metrics if m.startswith("count_")]
    radii = [m for m in metrics if m.startswith("mass_radius_")]
    picked = counts[:1] + counts[len(counts) // 2 : len(counts) // 2 + 1] + radii
    return list(dict.fromkeys(picked))


def describe_metric(name: str, mode: str | None = None) -> tuple[str, str]:
    """(title, axis label with unit) of a metric column of the pixel table."""
    if name.startswith("count_"):
        percent = name[len("count_") :].rstrip("%")
        shown = f"{float(percent) / 100:g}" if mode == "absolute" else f"{percent} %"
        return f"count, t = {shown}", "input pixels with |g| > t"
    if name.startswith("mass_radius_"):
        share = name[len("mass_radius_") :].rstrip("%")
        return f"radius holding {share} % of the mass", "radius [pixels]"
    if name == "centroid_distance":
        return "distance of the centroid", "distance [pixels]"
    return name.replace("_", " "), name.replace("_", " ")


def threshold_note(mode: str | None) -> str:
    """What t is, for the figure titles (nothing when the mode is unknown or mixed)."""
    if mode in _MODE_WORDS:
        return f"; t as a fraction of {_MODE_WORDS[mode]}, g the gradient of P(vessel)"
    if mode == "absolute":
        return "; t an absolute |g|, g the gradient of P(vessel)"
    return ""


def bin_summary(values: np.ndarray, index: np.ndarray, bins: int):
    """Per bin: number of finite values, their mean and the half-width of its 95 % confidence
    interval (NaN where a bin has no value; 0 half-width for one value)."""
    counts = np.zeros(bins, dtype=np.int64)
    means = np.full(bins, np.nan)
    half = np.full(bins, np.nan)
    for b in range(bins):
        chosen = values[(index == b) & np.isfinite(values)]
        counts[b] = len(chosen)
        if len(chosen):
            means[b] = chosen.mean()
            spread = chosen.std(ddof=1) if len(chosen) > 1 else 0.0
            half[b] = 1.96 * spread / np.sqrt(len(chosen))
    return counts, means, half


def _by_outcome(table, path: Path, mode: str | None = None) -> Path:
    from vessel_lens.viz.figures import new_figure, save_figure

    metrics = _shown_metrics(table)
    figure = new_figure(PANEL_INCHES * len(metrics), 3.8)
    largest = max(int(np.sum(table["outcome"] == c)) for c in range(len(OUTCOMES))) or 1
    for i, name in enumerate(metrics):
        ax = figure.add_subplot(1, len(metrics), i + 1)
        groups, labels, widths = [], [], []
        for code, outcome in enumerate(OUTCOMES):
            values = table[name][table["outcome"] == code]
            values = values[np.isfinite(values)]
            if len(values):
                groups.append(values)
                labels.append(f"{outcome}\nn = {len(values):,}")
                widths.append(0.8 * max(np.sqrt(len(values) / largest), 0.05))
        if groups:
            ax.boxplot(groups, tick_labels=labels, widths=widths, showfliers=False)
        title, unit = describe_metric(name, mode)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xlabel("outcome (pixels)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(
        "Receptive-field size by outcome (T/F: prediction right/wrong; P/N: predicted vessel/"
        "background)\nboxes: quartiles, whiskers 1.5 IQR, no outliers; box width ~ "
        f"sqrt(pixels){threshold_note(mode)}",
        fontsize=9,
    )
    return save_figure(figure, path)


def _binned_plot(
    table, column: str, edges, words: str, title: str, path: Path, mode: str | None = None
) -> Path:
    from vessel_lens.viz.figures import new_figure, save_figure

    metrics = _shown_metrics(table)
    figure = new_figure(PANEL_INCHES * len(metrics), 5.0)
    grid = figure.add_gridspec(2, len(metrics), height_ratios=(3, 1.4))
    index, names = bin_index(table[column], edges)
    positions = np.arange(len(names))
    most = max(int(np.sum(index == b)) for b in range(len(names)))
    shift = {"background": -0.12, "vessel": 0.12}
    for i, name in enumerate(metrics):
        ax = figure.add_subplot(grid[0, i])
        bars = figure.add_subplot(grid[1, i], sharex=ax)
        for group, colour in COLOURS.items():
            mine = table["predicted"] == (1 if group == "vessel" else 0)
            counts, means, half = bin_summary(table[name][mine], index[mine], len(names))
            x = positions + shift[group]
            label = f"predicted {group}"
            ax.errorbar(x, means, yerr=half, color=colour, capsize=2, lw=1, label=label)
            many = counts >= FEW
            ax.plot(x[many], means[many], "o", color=colour, markersize=5)
            ax.plot(x[~many], means[~many], "o", color=colour, markerfacecolor="white", ms=5)
            bars.bar(x, np.maximum(counts, 0.0), width=0.24, color=colour)
            for spot, n in zip(x, counts, strict=True):
                if n:
                    bars.text(spot, n, f"{n:,}", ha="center", va="bottom", fontsize=5, rotation=90)
        metric_title, unit = describe_metric(name, mode)
        ax.set_title(metric_title, fontsize=9)
        ax.set_ylabel(f"mean {unit}", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=False)
        ax.grid(alpha=0.3)
        bars.set_yscale("log")
        bars.set_ylim(0.8, 40 * max(most, 1))
        bars.set_ylabel("pixels", fontsize=8)
        bars.set_xticks(positions, names, rotation=45, fontsize=7)
        bars.set_xlabel(words, fontsize=8)
        bars.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    figure.suptitle(
        f"{title}\nmean with 95 % confidence interval (hollow: fewer than {FEW} pixels in the "
        f"bin); below, the pixels per bin{threshold_note(mode)}",
        fontsize=9,
    )
    return save_figure(figure, path)


def plot_stats(table: dict[str, np.ndarray], out: Path, mode: str | None = None):
    """Write the three plots into ``out``; return their paths by name. ``table``: one row per
    pixel (bins as in the tables); ``mode``: the maps' threshold mode, ``None`` if mixed."""
    return {
        "by_outcome": _by_outcome(table, out / "stats_by_outcome.png", mode),
        "by_distance": _binned_plot(
            table,
            "distance",
            DISTANCE_BINS,
            "distance to the nearest centreline [pixels]",
            "Receptive-field size against the distance to the nearest centreline",
            out / "stats_by_distance.png",
            mode,
        ),
        "by_width": _binned_plot(
            table,
            "width",
            WIDTH_BINS,
            "local vessel width [pixels]",
            "Receptive-field size against the local vessel width",
            out / "stats_by_width.png",
            mode,
        ),
    }
