"""Grad-CAM (:mod:`.methods`) at a module of the model, and the module it uses by default."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution._common import as_image_batch, module_by_name
from vessel_lens.interpret.attribution.targets import TargetValue
from vessel_lens.models.inference import frozen_eval, model_device


@torch.no_grad()
def _map_sizes(model: nn.Module, image: torch.Tensor) -> tuple[tuple[int, int], list]:
    """One forward pass: the spatial size of the first 4-D tensor a submodule receives (the
    input after any padding the model applies itself) and, in execution order, every
    submodule's name and output height."""
    batch = as_image_batch(image).to(model_device(model))
    entered: list[tuple[int, int]] = []
    seen: list[tuple[str, int]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def enter(_module, inputs):
            first = inputs[0] if inputs else None
            if not entered and isinstance(first, torch.Tensor) and first.dim() == 4:
                entered.append((int(first.shape[-2]), int(first.shape[-1])))

        def hook(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                seen.append((name, int(output.shape[-2])))

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(hook))
    try:
        with frozen_eval(model):
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return (entered[0] if entered else tuple(batch.shape[-2:])), seen


def default_gradcam_layer(model: nn.Module, image: torch.Tensor) -> str:
    """The last module (in execution order) whose output is closest to 1/4 of the input size
    (of the padded input, for models that pad their input to a multiple of their stride)."""
    (height, _), seen = _map_sizes(model, image)
    if not seen:
        raise ConfigError("layer_gradcam: the model has no module with a 4-D output; give layer=")
    best = min(abs(math.log(max(h, 1) / height) - math.log(0.25)) for _, h in seen)
    candidates = [
        n for n, h in seen if abs(math.log(max(h, 1) / height) - math.log(0.25)) <= best + 1e-9
    ]
    return candidates[-1]


def _upsample(
    layer_map: torch.Tensor, height: int, width: int, mode: str, padded: tuple[int, int]
) -> torch.Tensor:
    """(1, 1, h, w) -> (1, 1, H, W). A model that pads its input at the bottom and right to
    ``padded`` (the size its first module receives) has layer stride padded / (h, w): scale
    the map to ``padded`` and crop; otherwise scale by ceil(H / h), ceil(W / w) and crop."""
    h, w = layer_map.shape[-2:]
    if padded[0] % h == 0 and padded[1] % w == 0 and padded[0] >= height and padded[1] >= width:
        size = tuple(padded)
    else:
        size = (h * math.ceil(height / h), w * math.ceil(width / w))
    align = False if mode in ("bilinear", "bicubic") else None
    up = F.interpolate(layer_map, size=size, mode=mode, align_corners=align)
    return up[..., :height, :width]


def layer_gradcam(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """ReLU of the channel-weighted sum of a module's feature map, upsampled to the input."""
    import captum.attr as ca

    name = o["layer"] or default_gradcam_layer(forward.model, x[0])
    layer = module_by_name(forward.model, name)
    cam = ca.LayerGradCam(forward, layer).attribute(x, relu_attributions=bool(o["relu"]))
    if not isinstance(cam, torch.Tensor) or cam.dim() != 4:
        raise ConfigError(f"layer_gradcam: layer {name!r} does not output a (B, C, h, w) map")
    padded, _ = _map_sizes(forward.model, x[0])
    up = _upsample(cam.detach(), x.shape[-2], x.shape[-1], o["interpolation"], padded)
    return up.expand(-1, x.shape[1], -1, -1)
