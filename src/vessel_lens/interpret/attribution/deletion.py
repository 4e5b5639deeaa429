"""Deletion and insertion curves (Petsiuk et al., RISE, 2018) for a segmentation target.

Input pixels are ranked by attribution: by default (``order="absolute"``) by |map| summed over
channels, largest first, because removing a pixel moves its intensity towards the replacement
in either direction, so a strongly negative gradient marks a pixel whose removal matters as
much as a strongly positive one; ``order="signed"`` ranks by the signed sum (positive evidence
first). Ties keep row-major order. **Deletion** replaces the top-ranked fraction f of pixels (all channels) by a
*replacement image* and tracks the target's mean output over its pixels (for a one-pixel
target with ``output="probability"``: that pixel's vessel probability) as f goes from 0 to 1;
a faithful ranking makes it fall early, so a *smaller* area under the curve is better.
**Insertion** starts from the replacement image and puts the top-ranked original pixels back; a
*larger* area is better. Both are compared with random rankings (seeded, averaged over
``random_repeats``).

Replacement (``replacement``): ``mean`` (default) a constant image at the per-channel mean of
the image; ``blur`` the image blurred by a Gaussian of standard deviation ``sigma`` pixels;
``zero`` a black image. ``mean`` is the default because it removes a vessel whatever its width:
a blur of sigma 5 leaves a bright ridge along synthetic vessels as wide as the blur, and the
model still labels it vessel (measured: deletion curves stay at the saturated probability), while
``zero`` makes any deleted pixel near a bright vessel read as a vessel border.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.integrate import trapezoid
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.methods import (
    as_image_batch,
    as_target,
)
from vessel_lens.interpret.attribution.targets import Target, TargetValue
from vessel_lens.models.inference import frozen_eval, model_device

CURVE_MODES = ("deletion", "insertion")
REPLACEMENTS = ("mean", "blur", "zero")
ORDERS = ("absolute", "signed")


@dataclass
class DeletionResult:
    """One curve and its random-order baseline.

    ``fractions`` (steps + 1,) of pixels removed (deletion) or inserted (insertion);
    ``values`` the target's mean output there with the attribution's order (``order``); ``random_values``
    the mean over random orders; ``auc`` / ``random_auc`` their trapezoidal areas over [0, 1].
    """

    mode: str
    order: str
    label: str
    target: str
    replacement: str
    fractions: np.ndarray
    values: np.ndarray
    random_values: np.ndarray
    auc: float
    random_auc: float

    @property
    def better_than_random(self) -> bool:
        """Deletion: a smaller area than random; insertion: a larger one."""
        if self.mode == "deletion":
            return self.auc < self.random_auc
        return self.auc > self.random_auc


def replacement_image(
    image: torch.Tensor, replacement: str = "mean", sigma: float = 5.0
) -> torch.Tensor:
    """What removed pixels become: (C, H, W) -> (C, H, W) (see module docs)."""
    batch = as_image_batch(image)[0]
    if replacement == "blur":
        if not sigma > 0:
            raise ConfigError(f"blur sigma {sigma}: must be positive")
        blurred = [ndimage.gaussian_filter(c.numpy(), sigma, mode="reflect") for c in batch]
        return torch.from_numpy(np.stack(blurred)).float()
    if replacement == "mean":
        return batch.mean(dim=(-2, -1), keepdim=True).expand_as(batch).clone()
    if replacement == "zero":
        return torch.zeros_like(batch)
    raise ConfigError(f"replacement {replacement!r}: choose one of {', '.join(REPLACEMENTS)}")


@torch.no_grad()
def _curve(
    forward: TargetValue,
    start: torch.Tensor,
    end: torch.Tensor,
    order: torch.Tensor,
    counts: list[int],
    batch_size: int,
) -> np.ndarray:
    """Target value for images equal to ``end`` at the first ``counts[k]`` pixels of
    ``order`` and to ``start`` elsewhere."""
    _, height, width = start.shape
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    rank = rank.view(height, width)
    values = []
    for first in range(0, len(counts), batch_size):
        chunk = torch.tensor(counts[first : first + batch_size], device=start.device)
        switched = (rank[None] < chunk[:, None, None])[:, None]
        images = torch.where(switched, end[None], start[None])
        values.append(forward(images).float().cpu())
    return (torch.cat(values) / forward.target.pixel_count).double().numpy()


def deletion_curves(
    model: nn.Module,
    image: torch.Tensor,
    target: Target | tuple[int, int],
    attributions: Mapping[str, torch.Tensor],
    *,
    mode: str = "deletion",
    order: str = "absolute",
    steps: int = 32,
    replacement: str = "mean",
    sigma: float = 5.0,
    random_repeats: int = 3,
    seed: int = 0,
    batch_size: int = 8,
) -> list[DeletionResult]:
    """Deletion or insertion curves of ``target``, one per attribution (by label), sharing
    one random-order baseline.

    Args:
        image: (C, H, W) or (H, W); attributions: (C, H, W) or (H, W) maps, same size.
        order: ``absolute`` or ``signed`` ranking (see module docs).
        steps: each curve has ``steps + 1`` points at fractions k / steps.
        random_repeats: random orders averaged for the baseline (seeded by ``seed``).
        batch_size: images per forward pass.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import attribute, deletion_curves
        >>> saliency = attribute(model, image, (16, 16), method="saliency")
        >>> result = deletion_curves(model, image, (16, 16), {"saliency": saliency}, steps=4)
        >>> [(curve.label, len(curve.fractions)) for curve in result]  # 4 steps: 5 points
        [('saliency', 5)]
    """
    if mode not in CURVE_MODES:
        raise ConfigError(f"curve mode {mode!r}: choose deletion or insertion")
    if order not in ORDERS:
        raise ConfigError(f"deletion order {order!r}: choose absolute or signed")
    if steps < 1 or random_repeats < 1 or batch_size < 1:
        raise ConfigError("steps, random_repeats and batch_size must be at least 1")
    x = as_image_batch(image)[0]
    height, width = int(x.shape[-2]), int(x.shape[-1])
    chosen = as_target(target, (height, width))
    device = model_device(model)
    rankings = {}
    for label, attribution in attributions.items():
        scores = attribution.detach().float().cpu()
        scores = scores.abs() if order == "absolute" else scores
        scores = scores.sum(0) if scores.dim() == 3 else scores
        if tuple(scores.shape) != (height, width):
            raise ConfigError(
                f"attribution {label!r} is {tuple(scores.shape)} but the image is {height}x{width}"
            )
        ranking = torch.argsort(scores.flatten(), descending=True, stable=True)
        rankings[label] = ranking.to(device)
    removed = replacement_image(x, replacement, sigma).to(device)
    x = x.to(device)
    start, end = (x, removed) if mode == "deletion" else (removed, x)
    total = height * width
    counts = [round(total * k / steps) for k in range(steps + 1)]
    fractions = np.array([c / total for c in counts])
    generator = torch.Generator().manual_seed(int(seed))
    forward = TargetValue(model, chosen)
    with frozen_eval(model):
        randoms = [
            _curve(
                forward,
                start,
                end,
                torch.randperm(total, generator=generator).to(device),
                counts,
                batch_size,
            )
            for _ in range(random_repeats)
        ]
        curves = {
            label: _curve(forward, start, end, ranking, counts, batch_size)
            for label, ranking in rankings.items()
        }
    random_values = np.mean(randoms, axis=0)
    random_auc = float(trapezoid(random_values, fractions))
    return [
        DeletionResult(
            mode,
            order,
            label,
            chosen.name,
            replacement,
            fractions,
            values,
            random_values,
            float(trapezoid(values, fractions)),
            random_auc,
        )
        for label, values in curves.items()
    ]


def deletion_curve(
    model: nn.Module,
    image: torch.Tensor,
    target: Target | tuple[int, int],
    attribution: torch.Tensor,
    *,
    label: str = "",
    **options: Any,
) -> DeletionResult:
    """One curve: :func:`deletion_curves` with a single attribution (same options)."""
    return deletion_curves(model, image, target, {label: attribution}, **options)[0]
