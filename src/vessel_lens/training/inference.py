"""Whole-image inference: vessel probabilities from a model, optionally with flip averaging."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def vessel_probability(
    model: nn.Module,
    image: torch.Tensor,
    device: torch.device | str | None = None,
    flip_average: bool = False,
) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) image -> (H, W) or (B, H, W) probability of class 1 (CPU).

    The model is used as given (call ``.eval()`` first for inference) on ``device``
    (default: the device of its parameters). With ``flip_average`` the probabilities of the
    four flips are averaged.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    single = image.dim() == 3
    batch = (image[None] if single else image).to(device)
    flips = [(), (-1,), (-2,), (-2, -1)] if flip_average else [()]
    total = None
    for dims in flips:
        x = batch.flip(dims) if dims else batch
        p = model(x).softmax(1)[:, 1]
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    probability = (total / len(flips)).float().cpu()
    return probability[0] if single else probability
