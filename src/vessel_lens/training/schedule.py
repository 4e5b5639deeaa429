"""Learning-rate schedules: ReduceLROnPlateau on the validation loss (the original's), cosine
with linear warm-up (stepped per optimisation step), or constant."""

from __future__ import annotations

import math

import torch

from vessel_lens.training.config import TrainConfig


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """The scheduler named by ``config.schedule``; plateau is stepped with the validation
    loss after each validation, the others after each optimisation step."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
        )
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = config.warmup_epochs * steps_per_epoch
    floor = config.min_lr / config.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
