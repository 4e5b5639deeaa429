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
    """The names :func:`create_model` accepts, sorted."""
    return sorted(MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises an error listing the valid ones."""
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
