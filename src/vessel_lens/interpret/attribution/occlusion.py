"""Occlusion (:mod:`.methods`): the value lost when a patch of the input is set to a baseline."""

from __future__ import annotations

from typing import Any

import torch

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.targets import TargetValue


def occlusion(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """value(input) - value(input with a patch set to ``baseline``), averaged over the
    patches covering each pixel."""
    import captum.attr as ca

    window = int(o["window"])
    stride = int(o["stride"]) if o["stride"] is not None else max(window // 2, 1)
    if window < 1 or stride < 1:
        raise ConfigError(f"occlusion window {window} and stride {stride}: must be >= 1")
    channels = x.shape[1]
    return ca.Occlusion(forward).attribute(
        x,
        sliding_window_shapes=(channels, window, window),
        strides=(channels, stride, stride),
        baselines=float(o["baseline"]),
        perturbations_per_eval=int(o["perturbations_per_eval"]),
    )
