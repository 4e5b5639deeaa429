"""Sections of the HTML report that read other outputs or run the sanity checks: training run
folders, receptive-field folders, the randomisation test and deletion/insertion curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vessel_lens.data.samples import Sample
from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.methods import default_gradcam_layer
from vessel_lens.interpret.attribution.sanity import (
    THRESHOLDED_MASK,
    deletion_curves,
    randomisation_test,
)
from vessel_lens.interpret.attribution.targets import pixel_target
from vessel_lens.viz import html_page as hp
from vessel_lens.viz.attribution_plots import deletion_plot, randomisation_plot
from vessel_lens.viz.map_scales import is_zero, zero_map_reason
from vessel_lens.viz.report_options import ReportOptions, report_method_options

ERF_TABLE_PATTERNS = ("summary*.csv", "stats*.csv")
"""CSV files of a receptive-field folder shown as tables (searched in every sub-folder)."""


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def images_intro(threshold: float, zoom: int) -> str:
    """What the per-image panels show, with the colours and markers they are drawn in."""
    zoomed = f", zoomed to {zoom} px around the pixel" if zoom else ""
    return hp.paragraph(
        "Per image: the input and the vessel probability P, each with its colour bar, and the "
        "errors against the label (false positives red, false negatives blue); the chosen "
        "pixels are marked + in green. Then per chosen pixel: the input pixels whose "
        f"|gradient| exceeds t = {threshold:g} x that pixel's largest |gradient| in yellow, "
        "their bounding box in cyan, the pixel as a red +; and the signed gradient of P "
        f"(pixel: black +) in P per unit of input intensity (0-1){zoomed}."
    )


def attribution_intro(shared_scale: bool) -> str:
    scale = "All panels share one colour scale" if shared_scale else "Each panel has its own"
    return hp.paragraph(
        "Each block explains one chosen pixel's vessel probability P (the pixel is marked +, "
        "green on the input and black on the maps); red raises P, blue lowers it. "
        f"{scale} colour scale, with limits at the 99.5th percentile of |map| (pointed "
        "colour-bar ends: the map goes beyond them); gradients are in P per unit of input "
        "intensity (0-1), the other maps in units of P; Grad-CAM is non-negative. A map that "
        "is zero everywhere is blank and says why. Settings per method:"
    )


def zero_map_notes(model: nn.Module, image: torch.Tensor, grid_rows: list) -> str:
    """A line per attribution map that is zero everywhere, saying why (its panel is blank).

    ``grid_rows``: (target name, mask, {method: map}) as for ``attribution_grid``."""
    notes = []
    for name, _, maps in grid_rows:
        for method, values in maps.items():
            if not is_zero(values.detach().cpu().numpy()):
                continue
            where = method.replace("_", " ")
            if method == "layer_gradcam":
                where += f" (layer {default_gradcam_layer(model, image)})"
            notes.append(f"{where} at {name} is zero everywhere: {zero_map_reason(method)}.")
    return "".join(hp.paragraph(note) for note in notes)


def find_run_folder(run: Path | None, checkpoint_path: Path | None) -> tuple[Path | None, str]:
    """The run folder to show: ``run`` if given, else the checkpoint's folder when it holds a
    ``metrics.csv``; with ``None``, the reason there is none."""
    if run is not None:
        run = Path(run)
        if not ((run / "metrics.csv").is_file() or (run / "curves.png").is_file()):
            raise ConfigError(f"--run {run}: holds neither metrics.csv nor curves.png")
        return run, ""
    if checkpoint_path is not None and (Path(checkpoint_path).parent / "metrics.csv").is_file():
        return Path(checkpoint_path).parent, ""
    return None, "No run folder: pass --run, or a checkpoint that lies in its run folder."


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def training_section(
    run_dir: Path | None, note: str = "", recorded: dict[str, Any] | None = None
) -> str:
    """Learning curves (the run's ``curves.png``) and its best and last epochs; without a run
    folder, the training summary ``recorded`` in the checkpoint's metadata."""
    if run_dir is None:
        if recorded:
            return recorded_training(recorded)
        return hp.paragraph(note or "No run folder given.", "missing")
    parts = [hp.paragraph(f"Run folder: {run_dir}")]
    if (run_dir / "curves.png").is_file():
        parts.append(hp.embed_png(run_dir / "curves.png", "learning curves"))
    else:
        parts.append(hp.paragraph("The run folder holds no curves.png.", "missing"))
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        with metrics.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            scored = [r for r in rows if not math.isnan(_float(r.get("val_dice", "")))]
            shown = []
            if scored:
                best = max(scored, key=lambda r: _float(r["val_dice"]))
                shown.append({"row": "best validation Dice", **best})
            shown.append({"row": "last epoch", **rows[-1]})
            typed = [{k: v if k == "row" else _number(v) for k, v in r.items()} for r in shown]
            parts += [hp.table(typed), hp.paragraph(f"{len(rows)} epochs in metrics.csv.")]
    return "".join(parts)


def _metric_rows(name: str, value: Any) -> list[dict[str, Any]]:
    """Table rows of a recorded metrics dict: one row, or one per sub-dict."""
    if not isinstance(value, dict) or not value:
        return []
    if all(isinstance(v, dict) for v in value.values()):
        return [r for k, v in value.items() for r in _metric_rows(f"{name}, {k}", v)]
    return [{"recorded": name.replace("_", " "), **value}]


def recorded_training(metadata: dict[str, Any]) -> str:
    """The training summary a checkpoint recorded when it was saved (its ``metadata``): epoch,
    time, data, the validation (and any test) metrics, and the training configuration."""
    parts = [
        hp.paragraph(
            "No run folder (pass --run to show learning curves); the checkpoint recorded this "
            "summary of its training when it was saved."
        )
    ]
    facts = {
        "weights saved at epoch": metadata.get("epoch"),
        "training time": (
            f"{float(metadata['train_seconds']) / 60:.1f} min"
            if isinstance(metadata.get("train_seconds"), int | float)
            else None
        ),
        "data": metadata.get("data"),
        "split source": metadata.get("split_source"),
        "torch": metadata.get("torch"),
    }
    parts.append(hp.table([{"item": k, "value": v} for k, v in facts.items() if v is not None]))
    validation = _metric_rows("validation at the saved epoch", metadata.get("metrics"))
    tests = [
        row
        for key in sorted(metadata)
        if key.startswith("test_metrics")
        for row in _metric_rows(key, metadata[key])
    ]
    for rows in (validation, tests):
        if rows:
            columns = list(dict.fromkeys(c for r in rows for c in r))
            parts.append(hp.table(rows, columns))
    config = metadata.get("config")
    if isinstance(config, dict) and config:
        rows = [{"setting": k, "value": str(v)} for k, v in config.items()]
        parts.append(hp.details(f"training configuration ({len(rows)} settings)", hp.table(rows)))
    return "".join(parts)


def _number(text: str) -> Any:
    value = _float(text)
    if math.isnan(value):
        return text
    return int(value) if value.is_integer() and "." not in text else value


def erf_section(erf_dir: Path | None) -> str:
    """Every ``*.png`` of the folder and its sub-folders (the ``erf`` maps and the
    ``erf-stats`` plots), then its ``summary*.csv`` / ``stats*.csv`` tables, folder by folder."""
    if erf_dir is None:
        return hp.paragraph(
            "No receptive-field folder given (--erf DIR, the output of the receptive-field "
            "command).",
            "missing",
        )
    erf_dir = Path(erf_dir)
    if not erf_dir.is_dir():
        raise ConfigError(f"--erf {erf_dir}: not a folder")
    images = set(erf_dir.rglob("*.png"))
    tables = {p for pattern in ERF_TABLE_PATTERNS for p in erf_dir.rglob(pattern)}
    if not images and not tables:
        return hp.paragraph(
            f"{erf_dir} holds no PNG figure and no summary*.csv or stats*.csv table.", "missing"
        )
    parts = [hp.paragraph(f"From {erf_dir}.")]
    for folder in sorted({p.parent for p in images | tables}):
        if folder != erf_dir:
            parts.append(f"<h3>{hp.escape(folder.relative_to(erf_dir))}/</h3>")
        for path in sorted(p for p in images if p.parent == folder):
            parts += [f"<h4>{hp.escape(path.name)}</h4>", hp.embed_png(path, path.stem)]
        for path in sorted(p for p in tables if p.parent == folder):
            parts += [f"<h4>{hp.escape(path.name)}</h4>", hp.csv_table(path)]
    return "".join(parts)


def sanity_section(
    model: nn.Module,
    sample: Sample,
    pixels: list[tuple[int, int, str]],
    first_maps: dict[str, torch.Tensor],
    options: ReportOptions,
    figures: Path,
    tables: Path,
    bar: tqdm,
) -> tuple[str, list[Path]]:
    """Randomisation test (both modes) for every chosen pixel, and deletion/insertion curves
    of the first pixel ordered by the attributions in ``first_maps``."""
    stem = sample.stem
    height, width = sample.size
    targets = [pixel_target(r, c, (height, width)) for r, c, _ in pixels]
    settings = {
        m: report_method_options(m, height, width, options.seed) for m in options.sanity_methods
    }
    runs = []
    for mode in ("cascading", "independent"):
        bar.set_postfix_str(f"{stem} {mode} randomisation")
        runs.append(
            randomisation_test(
                model,
                sample.image,
                targets,
                options.sanity_methods,
                mode,
                seed=options.seed,
                rf_fraction=options.threshold,
                method_options=settings,
            )
        )
        bar.update(1)
    plot = randomisation_plot(runs, figures / f"{stem}_randomisation.png")
    csv_path = write_csv(
        tables / f"{stem}_randomisation.csv", [row for run in runs for row in run.rows]
    )
    summary = []
    for run in runs:
        for method in (*run.methods, THRESHOLDED_MASK):
            metrics = ("iou", "ssim") if method == THRESHOLDED_MASK else ("spearman", "ssim")
            for metric in metrics:
                entry: dict[str, Any] = {"mode": run.mode, "method": method, "metric": metric}
                entry.update(zip(run.steps, run.series(method, metric), strict=True))
                summary.append(entry)
    parts = [
        f"<h3>Model-parameter randomisation: {hp.escape(stem)}</h3>",
        hp.paragraph(
            f"Targets: {', '.join(t.name for t in targets)}. Similarity between the trained "
            "model's map and the map after re-initialising the named stage (cascading: that "
            "stage and every stage nearer the head), mean over the targets. Receptive-field "
            f"rows compare the masks |gradient| > {options.threshold:g} x its maximum. A "
            "method that depends on the learned weights falls towards 0 as more of the model "
            "is random."
        ),
        hp.embed_png(plot, f"{stem}: randomisation test"),
        hp.table(summary),
    ]
    outputs = [plot, csv_path]
    chosen = [m for m in options.deletion_methods if m in first_maps]
    if chosen and targets:
        curves = []
        bar.set_postfix_str(f"{stem} deletion and insertion")
        for mode in ("deletion", "insertion"):
            curves += deletion_curves(
                model,
                sample.image,
                targets[0],
                {method: first_maps[method] for method in chosen},
                mode=mode,
                steps=16,
                random_repeats=2,
                seed=options.seed,
            )
        bar.update(1)
        curve_plot = deletion_plot(curves, figures / f"{stem}_deletion.png")
        auc_rows = [
            {
                "curve": c.mode,
                "method": c.label,
                "target": c.target,
                "AUC": c.auc,
                "random-order AUC": c.random_auc,
                "better than random": "yes" if c.better_than_random else "no",
            }
            for c in curves
        ]
        auc_csv = write_csv(tables / f"{stem}_deletion.csv", auc_rows)
        parts += [
            f"<h3>Deletion and insertion: {hp.escape(stem)}</h3>",
            hp.paragraph(
                "Pixels are replaced by the image mean (deletion) or put back into a mean image "
                "(insertion) in order of |attribution|, in 16 steps; the dashed curve is the "
                "mean of 2 random orders. Deletion: a smaller area is better; insertion: larger."
            ),
            hp.embed_png(curve_plot, f"{stem}: deletion and insertion"),
            hp.table(auc_rows),
        ]
        outputs += [curve_plot, auc_csv]
    else:
        bar.update(1)
    return "".join(parts), outputs
