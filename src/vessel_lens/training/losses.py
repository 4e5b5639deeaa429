"""Losses: cross-entropy over the classes, soft Dice of the vessel class, or their sum; and
the original's weight regularisation modes.

A model with one output channel (a sigmoid head, :mod:`vessel_lens.models.heads`) gets the
same losses in their binary form: ``ce`` is the binary cross-entropy of the vessel logit, and
the Dice is taken on its sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.models.heads import class_probability

LOSSES = ("ce", "dice", "ce+dice")
REGULARISATIONS = ("none", "l1", "l2")


Loss = Callable[..., torch.Tensor]
"""``loss(logits, target, valid=None)``: ``logits`` (B, K, H, W), ``target`` (B, H, W) class
indices, ``valid`` bool (B, H, W) or None: pixels outside it add nothing, not even gradient."""


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the ``valid`` pixels (0 when there is none, not NaN); binary
    cross-entropy of the vessel logit for a one-channel model."""
    if logits.shape[1] == 1:
        vessel = (target == 1).to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], vessel, reduction="none")
        if valid is None:
            return per_pixel.mean()
    elif valid is None:
        return F.cross_entropy(logits, target)
    else:
        per_pixel = F.cross_entropy(logits, target, reduction="none")
    weight = valid.to(per_pixel.dtype)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    eps: float = 1.0,
) -> torch.Tensor:
    """1 - soft Dice of the vessel class (index 1) over the whole batch's ``valid`` pixels.

    ``logits``: (B, K, H, W); ``target``: (B, H, W) class indices. The vessel probability is
    the softmax of class 1, or the sigmoid of a one-channel model's logit.
    """
    probability = class_probability(logits)
    vessel = (target == 1).to(probability.dtype)
    if valid is not None:
        weight = valid.to(probability.dtype)
        probability, vessel = probability * weight, vessel * weight
    intersection = (probability * vessel).sum()
    return 1.0 - (2.0 * intersection + eps) / (probability.sum() + vessel.sum() + eps)


def _ce_plus_dice(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    return cross_entropy(logits, target, valid) + soft_dice_loss(logits, target, valid)


def make_loss(name: str) -> Loss:
    """The loss called ``name`` (one of :data:`LOSSES`); see :data:`Loss`."""
    losses = {"ce": cross_entropy, "dice": soft_dice_loss, "ce+dice": _ce_plus_dice}
    if name not in losses:
        raise ConfigError(f"loss {name!r}: choose one of {', '.join(LOSSES)}")
    return losses[name]


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
