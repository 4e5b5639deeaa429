"""Learning curves from a run's metric history."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from vessel_lens.viz.figures import new_figure, save_figure


def learning_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Training/validation loss (left) and validation Dice/IoU (right) against epoch."""
    figure = new_figure(10, 3.6)
    loss_ax, score_ax = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    loss_ax.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    validated = [r for r in history if not math.isnan(float(r.get("val_loss", math.nan)))]
    if validated:
        val_epochs = [r["epoch"] for r in validated]
        loss_ax.plot(val_epochs, [r["val_loss"] for r in validated], label="validation loss")
        score_ax.plot(val_epochs, [r["val_dice"] for r in validated], label="validation Dice")
        score_ax.plot(val_epochs, [r["val_iou"] for r in validated], label="validation IoU")
        score_ax.legend(loc="lower right")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_yscale("log")
    loss_ax.legend(loc="upper right")
    score_ax.set_xlabel("epoch")
    score_ax.set_ylabel("score")
    score_ax.set_ylim(0, 1)
    score_ax.grid(alpha=0.3)
    loss_ax.grid(alpha=0.3)
    return save_figure(figure, path)
