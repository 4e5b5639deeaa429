"""Losses: cross-entropy over the classes, soft Dice of the vessel class, or their sum; and
the original's weight regularisation modes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.errors import ConfigError

LOSSES = ("ce", "dice", "ce+dice")
REGULARISATIONS = ("none", "l1", "l2")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the vessel class (index 1) over the whole batch.

    ``logits``: (B, K, H, W); ``target``: (B, H, W) class indices.
    """
    probability = logits.softmax(1)[:, 1]
    vessel = (target == 1).to(probability.dtype)
    intersection = (probability * vessel).sum()
    return 1.0 - (2.0 * intersection + eps) / (probability.sum() + vessel.sum() + eps)


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss called ``name`` (one of :data:`LOSSES`)."""
    if name == "ce":
        return F.cross_entropy
    if name == "dice":
        return soft_dice_loss
    if name == "ce+dice":
        return lambda logits, target: (
            F.cross_entropy(logits, target) + soft_dice_loss(logits, target)
        )
    raise ConfigError(f"loss {name!r}: choose one of {', '.join(LOSSES)}")


def regularisation(model: nn.Module, mode: str, alpha: float) -> torch.Tensor | None:
    """``alpha`` times the L1 or squared L2 norm of the weights of every convolution.

    Biases and normalisation parameters are not penalised. ``mode="none"`` returns None.
    """
    if mode == "none" or alpha == 0:
        return None
    if mode not in REGULARISATIONS:
        raise ConfigError(f"regularisation {mode!r}: choose one of {', '.join(REGULARISATIONS)}")
    weights = [
        m.weight
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.weight.requires_grad
    ]
    if mode == "l1":
        return alpha * sum(w.abs().sum() for w in weights)
    return alpha * sum(w.pow(2).sum() for w in weights)
