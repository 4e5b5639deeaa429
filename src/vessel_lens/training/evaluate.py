"""Evaluation on whole images: per-image and pooled metrics, tables, CSV/JSON, panels."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vessel_lens.data.samples import Sample
from vessel_lens.models.inference import DEFAULT_OVERLAP, vessel_probability
from vessel_lens.threads import work_starts
from vessel_lens.training.metrics import (
    METRIC_NAMES,
    Confusion,
    SkeletonCounts,
    image_metrics,
    overlap_scores,
    roc_auc,
)
from vessel_lens.viz.figures import (
    INTENSITY_LABEL,
    add_colorbar,
    error_map,
    hide_axes,
    new_figure,
    save_figure,
    to_numpy_image,
)


@dataclass
class Evaluation:
    """Metrics per image (rows), their mean over images, pooled over all pixels, and the
    pooled confusion counts behind them."""

    per_image: list[dict[str, float | str]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)
    counts: Confusion = field(default_factory=Confusion)

    @property
    def predicted_fraction(self) -> float:
        """Fraction of the counted pixels predicted vessel."""
        c = self.counts
        return (c.tp + c.fp) / max(c.tp + c.fp + c.fn + c.tn, 1)

    def to_json(self) -> dict:
        return {
            "mean_over_images": self.mean,
            "pooled_over_pixels": self.pooled,
            "images": len(self.per_image),
        }


def _mean(rows: list[dict], name: str) -> float:
    values = [float(r[name]) for r in rows if name in r and not math.isnan(float(r[name]))]
    return float(np.mean(values)) if values else float("nan")


def evaluate_model(
    model: nn.Module,
    samples: Sequence[Sample],
    device: torch.device | str | None = None,
    panels: Path | None = None,
    flip_average: bool = False,
    progress: bool = True,
    tile: int = 0,
    overlap: float = DEFAULT_OVERLAP,
) -> Evaluation:
    """Evaluate ``model`` (put in eval mode) on labelled whole images; in samples with a
    field-of-view mask only the pixels inside count. ``tile``/``overlap``: sliding windows
    for images with a longer side (see :func:`vessel_probability`).

    Examples:
        >>> from vessel_lens import load_model, open_dataset
        >>> from vessel_lens.training import evaluate_model
        >>> model, checkpoint = load_model("vessmap-w16")
        >>> samples = open_dataset(None, checkpoint=checkpoint).subset("test")[:2]  # synthetic vessels
        >>> result = evaluate_model(model, samples, progress=False)
        >>> len(result.per_image), 0 <= result.pooled["dice"] <= 1
        (2, True)
    """
    model.eval()
    result = Evaluation()
    total = Confusion()
    all_prob, all_label = [], []
    skeleton_total = SkeletonCounts()
    has_skeletons = False
    work_starts()
    for sample in tqdm(samples, desc="evaluating", unit="img", disable=not progress):
        probability = vessel_probability(
            model, sample.image, device, flip_average, tile=tile, overlap=overlap
        )
        metrics, counts, skeleton_hits = image_metrics(
            probability, sample.label, sample.skeleton, mask=sample.mask
        )
        total = total + counts
        inside = slice(None) if sample.mask is None else sample.mask.bool()
        all_prob.append(probability[inside].numpy().ravel())
        all_label.append(sample.label[inside].numpy().ravel())
        if skeleton_hits is not None:
            skeleton_total = skeleton_total + skeleton_hits
            has_skeletons = True
        result.per_image.append({"stem": sample.stem, **metrics})
        if panels is not None:
            write_panel(sample, probability, metrics, panels / f"{sample.stem}.png")
    result.mean = {name: _mean(result.per_image, name) for name in METRIC_NAMES}
    result.counts = total
    result.pooled = overlap_scores(total)
    result.pooled["auc"] = roc_auc(np.concatenate(all_prob), np.concatenate(all_label))
    if has_skeletons:
        result.pooled.update(skeleton_total.scores())
    result.mean = {k: v for k, v in result.mean.items() if not math.isnan(v)}
    return result


def write_panel(sample: Sample, probability: torch.Tensor, metrics: dict, path: Path) -> Path:
    """Input / ground truth / prediction / error map (grey outside the field-of-view mask),
    with Dice and IoU in the title; the input and the probability have colour bars."""
    prediction = (probability > 0.5).numpy()
    figure = new_figure(13.5, 3.6)
    axes = figure.subplots(1, 4)
    shown = to_numpy_image(sample.image)
    artist = axes[0].imshow(shown, cmap="gray")
    if shown.ndim == 2:
        add_colorbar(figure, artist, axes[0], INTENSITY_LABEL)
    axes[0].set_title("input")
    axes[1].imshow(sample.label.numpy(), cmap="gray")
    axes[1].set_title("ground truth (white: vessel)")
    artist = axes[2].imshow(probability.numpy(), cmap="gray", vmin=0, vmax=1)
    add_colorbar(figure, artist, axes[2], "P(vessel)")
    axes[2].set_title("prediction (probability)")
    mask = None if sample.mask is None else sample.mask.numpy()
    axes[3].imshow(error_map(prediction, sample.label.numpy(), mask))
    axes[3].set_title(
        "P > 0.5 vs truth: TP white, FP red, FN blue" + ("" if mask is None else ", outside grey"),
        fontsize=10,
    )
    hide_axes(axes)
    figure.suptitle(f"{sample.stem}   Dice {metrics['dice']:.3f}   IoU {metrics['iou']:.3f}")
    return save_figure(figure, path)


def _json_numbers(value):
    """``value`` with every NaN or infinite number (an undefined metric) as ``None``: JSON has
    no NaN, and ``null`` is what readers of ``metrics.json`` understand."""
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_evaluation(result: Evaluation, out: Path, extra: dict | None = None) -> dict[str, Path]:
    """``metrics.json`` and ``per_image.csv`` in ``out``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens import load_model, open_dataset
        >>> from vessel_lens.training import evaluate_model, write_evaluation
        >>> model, checkpoint = load_model("vessmap-w16")
        >>> result = evaluate_model(model, open_dataset(None).subset("test")[:1], progress=False)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     written = write_evaluation(result, Path(folder))
        ...     names = sorted(path.name for path in written.values())
        >>> names
        ['metrics.json', 'per_image.csv']
    """
    out.mkdir(parents=True, exist_ok=True)
    payload = result.to_json()
    if extra:
        payload.update(extra)
    (out / "metrics.json").write_text(json.dumps(_json_numbers(payload), indent=2, allow_nan=False))
    columns = ["stem", *[c for c in (*METRIC_NAMES, "tprec", "tsens") if c in result.per_image[0]]]
    with (out / "per_image.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in result.per_image:
            writer.writerow(
                {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    return {"metrics": out / "metrics.json", "per_image": out / "per_image.csv"}


def _cell(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def format_table(result: Evaluation) -> list[str]:
    """Every metric, one line each; ``n/a`` where it is undefined (clDice without skeletons,
    AUC of labels that are all one class)."""
    lines = [f"{'metric':<12} {'mean/image':>10} {'pooled':>10}"]
    for name in METRIC_NAMES:
        mean, pooled = _cell(result.mean.get(name)), _cell(result.pooled.get(name))
        lines.append(f"{name:<12} {mean:>10} {pooled:>10}")
    return lines


__all__ = ["Evaluation", "evaluate_model", "format_table", "write_evaluation"]
