"""Model registry: ``create_model(name, **kwargs)`` looks the name up in one dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.models.resnet_seg import ResNetSeg
from vessel_lens.models.unet import UNet


def _resnet_seg_nonorm(**kwargs: Any) -> ResNetSeg:
    kwargs.setdefault("norm", None)
    return ResNetSeg(**kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet_seg": ResNetSeg,
    "resnet_seg_nonorm": _resnet_seg_nonorm,
    "unet": UNet,
}
"""Registered architectures. ``resnet_seg`` is the reference model; ``resnet_seg_nonorm`` is
the same without BatchNorm; ``unet`` is a plain U-Net of similar size."""


def list_models() -> list[str]:
    """The names :func:`create_model` accepts, sorted.

    Examples:
        >>> from vessel_lens.models import list_models
        >>> list_models()
        ['resnet_seg', 'resnet_seg_nonorm', 'unet']
    """
    return sorted(MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises an error listing the valid ones.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> model = create_model("resnet_seg", width=4)  # the reference model, 4 channels in its stem
        >>> model(torch.rand(1, 1, 32, 32)).shape  # (B, K, H, W) logits
        torch.Size([1, 2, 32, 32])
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}"
        ) from None
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
