"""Plots of ``vessel-lens erf-stats``: field size by outcome, and against the distance to the
centreline and the local vessel width, for predicted vessel and background pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vessel_lens.interpret.erf_stats import OUTCOMES, metric_names

COLOURS = {"background": "#3070ff", "vessel": "#e03030"}


def _shown_metrics(table: dict[str, np.ndarray]) -> list[str]:
    metrics = metric_names(table)
    counts = [m for m in metrics if m.startswith("count_")]
    radii = [m for m in metrics if m.startswith("mass_radius_")]
    picked = counts[:1] + counts[len(counts) // 2 : len(counts) // 2 + 1] + radii
    return list(dict.fromkeys(picked))


def _by_outcome(table, path: Path) -> Path:
    from vessel_lens.viz.figures import new_figure, save_figure

    metrics = _shown_metrics(table)
    figure = new_figure(3.2 * len(metrics), 3.4)
    for i, name in enumerate(metrics):
        ax = figure.add_subplot(1, len(metrics), i + 1)
        groups, labels = [], []
        for code, outcome in enumerate(OUTCOMES):
            values = table[name][table["outcome"] == code]
            values = values[np.isfinite(values)]
            if len(values):
                groups.append(values)
                labels.append(f"{outcome}\n{len(values)}")
        if groups:
            ax.boxplot(groups, tick_labels=labels, showfliers=False)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    figure.suptitle("Receptive-field size by outcome (boxes: quartiles; no outliers)", fontsize=10)
    return save_figure(figure, path)


def _binned_plot(rows: list[dict], column: str, table, title: str, path: Path) -> Path:
    from vessel_lens.viz.figures import new_figure, save_figure

    metrics = _shown_metrics(table)
    figure = new_figure(3.2 * len(metrics), 3.4)
    bins = list(dict.fromkeys(row[column] for row in rows))
    for i, name in enumerate(metrics):
        ax = figure.add_subplot(1, len(metrics), i + 1)
        for group, colour in COLOURS.items():
            means = [
                next(r[f"{name}_mean"] for r in rows if r[column] == b and r["predicted"] == group)
                for b in bins
            ]
            ax.plot(range(len(bins)), means, "o-", color=colour, label=f"predicted {group}")
        ax.set_xticks(range(len(bins)), bins, rotation=45, fontsize=7)
        ax.set_title(f"mean {name}", fontsize=9)
        ax.set_xlabel(column, fontsize=8)
        if i == 0:
            ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def plot_stats(table: dict[str, np.ndarray], tables: dict[str, list[dict]], out: Path):
    """Write the three plots into ``out``; return their paths by name."""
    return {
        "by_outcome": _by_outcome(table, out / "stats_by_outcome.png"),
        "by_distance": _binned_plot(
            tables["by_distance"],
            "distance",
            table,
            "Receptive-field size against the distance to the nearest centreline (pixels)",
            out / "stats_by_distance.png",
        ),
        "by_width": _binned_plot(
            tables["by_width"],
            "width",
            table,
            "Receptive-field size against the local vessel width (pixels)",
            out / "stats_by_width.png",
        ),
    }
