"""Segmentation metrics on whole images: confusion counts, overlap scores, ROC AUC, clDice.

Conventions for empty cases (documented in the manual, docs/training.md):

- Dice and IoU are 1 when prediction and label are both empty;
- sensitivity is 1 when the label has no vessel, specificity 1 when it has no background,
  precision 1 when nothing is predicted;
- MCC is 0 when any of its four marginals is empty;
- AUC is undefined (NaN) when the label is all one class;
- clDice's precision (tprec) is 1 when the prediction has no skeleton, its recall (tsens) 1
  when the label has no skeleton.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from skimage.morphology import skeletonize

METRIC_NAMES = (
    "dice",
    "iou",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "mcc",
    "auc",
    "cldice",
)


@dataclass
class Confusion:
    """Pixel counts of true/false positives/negatives."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.tp, self.fp, self.fn, self.tn], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> Confusion:
        tp, fp, fn, tn = (round(float(v)) for v in values)
        return cls(tp, fp, fn, tn)


def confusion(prediction: torch.Tensor, label: torch.Tensor) -> Confusion:
    """Counts for boolean ``prediction`` and ``label`` of the same shape.

    Examples:
        >>> import torch
        >>> from vessel_lens.training import confusion
        >>> prediction = torch.tensor([[True, True], [False, False]])
        >>> label = torch.tensor([[True, False], [True, False]])
        >>> confusion(prediction, label)
        Confusion(tp=1, fp=1, fn=1, tn=1)
    """
    prediction = prediction.bool()
    label = label.bool()
    tp = int((prediction & label).sum())
    fp = int((prediction & ~label).sum())
    fn = int((~prediction & label).sum())
    return Confusion(tp, fp, fn, label.numel() - tp - fp - fn)


def _ratio(num: float, den: float, empty: float) -> float:
    return num / den if den > 0 else empty


def overlap_scores(c: Confusion) -> dict[str, float]:
    """Dice, IoU, accuracy, sensitivity, specificity, precision and MCC from counts.

    Examples:
        >>> import torch
        >>> from vessel_lens.training import confusion, overlap_scores
        >>> prediction = torch.tensor([[True, True], [False, False]])
        >>> label = torch.tensor([[True, False], [True, False]])
        >>> scores = overlap_scores(confusion(prediction, label))
        >>> scores["dice"], scores["iou"], scores["accuracy"]
        (0.5, 0.3333333333333333, 0.5)
    """
    total = c.tp + c.fp + c.fn + c.tn
    den = math.sqrt(float(c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn))
    return {
        "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, 1.0),
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn, 1.0),
        "accuracy": _ratio(c.tp + c.tn, total, 1.0),
        "sensitivity": _ratio(c.tp, c.tp + c.fn, 1.0),
        "specificity": _ratio(c.tn, c.tn + c.fp, 1.0),
        "precision": _ratio(c.tp, c.tp + c.fp, 1.0),
        "mcc": _ratio(c.tp * c.tn - c.fp * c.fn, den, 0.0),
    }


def roc_auc(scores: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted as one half).

    Examples:
        >>> import torch
        >>> from vessel_lens.training import roc_auc
        >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
        0.75
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    label = np.asarray(label, dtype=bool).ravel()
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][label].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def skeleton_of(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    return skeletonize(np.asarray(mask, dtype=bool))


@dataclass
class SkeletonCounts:
    """Pixel counts behind clDice, summable over images for a pooled score."""

    pred_skeleton_in_label: int = 0
    pred_skeleton: int = 0
    label_skeleton_in_pred: int = 0
    label_skeleton: int = 0

    def __add__(self, other: SkeletonCounts) -> SkeletonCounts:
        return SkeletonCounts(
            self.pred_skeleton_in_label + other.pred_skeleton_in_label,
            self.pred_skeleton + other.pred_skeleton,
            self.label_skeleton_in_pred + other.label_skeleton_in_pred,
            self.label_skeleton + other.label_skeleton,
        )

    def scores(self) -> dict[str, float]:
        tprec = _ratio(self.pred_skeleton_in_label, self.pred_skeleton, 1.0)
        tsens = _ratio(self.label_skeleton_in_pred, self.label_skeleton, 1.0)
        return {
            "tprec": tprec,
            "tsens": tsens,
            "cldice": _ratio(2 * tprec * tsens, tprec + tsens, 0.0),
        }


def skeleton_counts(
    prediction: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    label_skeleton: torch.Tensor | np.ndarray,
) -> SkeletonCounts:
    prediction = np.asarray(prediction, dtype=bool)
    label = np.asarray(label, dtype=bool)
    label_skeleton = np.asarray(label_skeleton, dtype=bool)
    prediction_skeleton = skeleton_of(prediction)
    return SkeletonCounts(
        int((prediction_skeleton & label).sum()),
        int(prediction_skeleton.sum()),
        int((label_skeleton & prediction).sum()),
        int(label_skeleton.sum()),
    )


def cl_dice(
    prediction: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    label_skeleton: torch.Tensor | np.ndarray,
) -> dict[str, float]:
    """Centreline Dice: harmonic mean of tprec = |S_pred ∩ label| / |S_pred| and
    tsens = |S_label ∩ pred| / |S_label|, where S_pred is the prediction's skeleton.

    Examples:
        >>> import torch
        >>> from vessel_lens.training import cl_dice
        >>> label = torch.zeros(16, 16, dtype=torch.bool)
        >>> label[6:10, 2:14] = True  # a horizontal vessel, 4 pixels wide
        >>> skeleton = torch.zeros_like(label)
        >>> skeleton[8, 2:14] = True
        >>> cl_dice(label, label, skeleton)["cldice"]  # a perfect prediction
        1.0
    """
    return skeleton_counts(prediction, label, label_skeleton).scores()


def image_metrics(
    probability: torch.Tensor,
    label: torch.Tensor,
    skeleton: torch.Tensor | None = None,
    threshold: float = 0.5,
    mask: torch.Tensor | None = None,
) -> tuple[dict[str, float], Confusion, SkeletonCounts | None]:
    """All metrics of one image: (H, W) vessel probability against a boolean label.

    With a field-of-view ``mask`` (bool (H, W)) only the pixels inside count: the confusion
    counts and AUC are taken over them, and clDice over the prediction, label and skeleton
    cut to the mask (skeletons are taken after the cut). Returns the metrics and the counts
    behind them (for pooling over images).
    """
    prediction = probability > threshold
    label = label.bool()
    if mask is not None:
        mask = mask.bool()
        counts = confusion(prediction[mask], label[mask])
        metrics = overlap_scores(counts)
        metrics["auc"] = roc_auc(probability[mask].numpy(), label[mask].numpy())
        prediction, label = prediction & mask, label & mask
        skeleton = None if skeleton is None else skeleton.bool() & mask
    else:
        counts = confusion(prediction, label)
        metrics = overlap_scores(counts)
        metrics["auc"] = roc_auc(probability.numpy(), label.numpy())
    skeleton_hits = None
    if skeleton is not None:
        skeleton_hits = skeleton_counts(prediction.numpy(), label.numpy(), skeleton.numpy())
        metrics.update(skeleton_hits.scores())
    return metrics, counts, skeleton_hits
