"""Attributions of a segmentation target through Captum: one function, eight methods.

``attribute(model, image, target, method, **options)`` explains the scalar value of a
:class:`~vessel_lens.interpret.attribution.targets.Target` (the vessel probability or logit summed over its
pixels) by a map over the input, (C, H, W). Captum sees the model through
:class:`~vessel_lens.interpret.attribution.targets.TargetValue`, which maps an image batch to one scalar per
sample, so its image-classification methods apply unchanged.

==================== ============================================================================
method               what the map holds (options and defaults in :data:`METHOD_OPTIONS`)
==================== ============================================================================
saliency             the gradient d value / d input; signed unless ``abs=True`` (Captum's
                     default is ``abs=True``; here the sign is kept, so the map of a one-pixel
                     target is that pixel's Jacobian row)
input_x_gradient     input times gradient
integrated_gradients input minus baseline, times the gradient averaged along the straight path
                     from ``baseline`` (a constant, default 0 = black) to the input; the map sums
                     to value(input) − value(baseline) up to the quadrature error of ``n_steps``
smoothgrad           NoiseTunnel over signed saliency: the mean gradient over ``nt_samples``
                     copies with Gaussian noise of standard deviation ``stdev`` (image units)
gradient_shap        expected gradients × (input − baseline) with baselines drawn from
                     ``baselines`` (default: a black image and a constant image at the input's
                     mean) and a random point on the path, ``n_samples`` draws
guided_backprop      the gradient with every ReLU passing back only positive gradients where its
                     input was positive; ``nn.ReLU`` modules through Captum's hooks, functional
                     ``F.relu`` calls through :func:`~vessel_lens.interpret.attribution._guided.guided_relus`
occlusion            value(input) − value(input with a ``window`` x ``window`` patch set to
                     ``baseline``), averaged over the patches covering each pixel; patches move by
                     ``stride`` (default ``window // 2``); costs one forward pass per patch
layer_gradcam        Grad-CAM at the module named ``layer``: ReLU of the channel-weighted sum of
                     its feature map, weights = spatially averaged gradients; upsampled
                     (bilinear) to the input size and repeated over the input channels. The
                     default layer is the last module, in execution order, whose output is
                     closest to a quarter of the input resolution (``decoder.1`` in
                     ``resnet_seg``, ``merge.1`` in ``unet``)
==================== ============================================================================

The methods are the entries of :data:`REGISTRY` (:class:`Method`: name, options with defaults,
run function); the run functions live in :mod:`.gradients`, :mod:`.occlusion` and
:mod:`.gradcam`. A new method is one run function and one line in :data:`REGISTRY`.

The model is evaluated in eval mode with its parameters not requiring gradients; its mode, the
parameters' ``requires_grad`` and the caller's image are left as found. Stochastic methods take
a ``seed`` and leave the global torch and NumPy random states as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution import gradcam, gradients, occlusion
from vessel_lens.interpret.attribution._common import as_image_batch, as_target, hides_layers
from vessel_lens.interpret.attribution.gradcam import default_gradcam_layer
from vessel_lens.interpret.attribution.targets import Target, TargetValue
from vessel_lens.models.inference import frozen_eval, model_device


@dataclass(frozen=True)
class Method:
    """An attribution method: its name, its options with their defaults, and
    ``run(forward, x, options)``, which maps the (1, C, H, W) input ``x`` to a (1, C, H, W)
    attribution of ``forward``'s scalar (a :class:`TargetValue`)."""

    name: str
    defaults: dict[str, Any]
    run: Callable[[TargetValue, torch.Tensor, dict[str, Any]], torch.Tensor]
    input_gradient: bool = True
    """Whether the method differentiates with respect to the input (it then gets an input
    that requires grad)."""
    needs_layers: bool = False
    """Whether it reaches into the model's layers (its ReLUs, a module's output)."""


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("saliency", {"abs": False}, gradients.saliency),
        Method("input_x_gradient", {}, gradients.input_x_gradient),
        Method(
            "integrated_gradients",
            {
                "baseline": 0.0,
                "n_steps": 50,
                "integration": "gausslegendre",
                "internal_batch_size": None,
            },
            gradients.integrated_gradients,
        ),
        Method(
            "smoothgrad",
            {
                "stdev": 0.15,
                "nt_samples": 16,
                "nt_type": "smoothgrad",
                "batch_size": None,
                "seed": 0,
            },
            gradients.smoothgrad,
        ),
        Method(
            "gradient_shap",
            {"baselines": None, "n_samples": 16, "stdev": 0.0, "seed": 0},
            gradients.gradient_shap,
        ),
        Method("guided_backprop", {}, gradients.guided_backprop, needs_layers=True),
        Method(
            "occlusion",
            {"window": 16, "stride": None, "baseline": 0.0, "perturbations_per_eval": 4},
            occlusion.occlusion,
            input_gradient=False,
        ),
        Method(
            "layer_gradcam",
            {"layer": None, "relu": True, "interpolation": "bilinear"},
            gradcam.layer_gradcam,
            input_gradient=False,
            needs_layers=True,
        ),
    )
}
"""The attribution methods by name; adding one is a run function and one line here."""

METHODS = tuple(REGISTRY)
METHOD_OPTIONS: dict[str, dict[str, Any]] = {name: m.defaults for name, m in REGISTRY.items()}
"""Every method's options and their defaults."""
LAYER_METHODS = tuple(name for name, m in REGISTRY.items() if m.needs_layers)
"""Methods that reach into the model's layers (its ReLUs, a module's output)."""


def _options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    if method not in METHODS:
        raise ConfigError(f"attribution method {method!r}: choose one of {', '.join(METHODS)}")
    defaults = METHOD_OPTIONS[method]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ConfigError(f"method {method}: unknown option {unknown[0]!r} (options: {valid})")
    return {**defaults, **given}


def _run(method: str, forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"method {method}: needs Captum (a core dependency of vessel-lens); install it with pip install captum"
        ) from None

    if method in LAYER_METHODS and hides_layers(forward.model):
        raise ConfigError(
            f"method {method}: needs the model's layers, which a TorchScript or torch.export "
            "program runs out of reach; use another method, or give the model as --model "
            "module:factory --weights FILE"
        )
    return REGISTRY[method].run(forward, x, o)


def attribute(
    model: nn.Module,
    image: torch.Tensor,
    target: Target | tuple[int, int] | torch.Tensor,
    method: str = "saliency",
    **method_kwargs: Any,
) -> torch.Tensor:
    """Attribution of ``target``'s value to the input: (C, H, W) float32 on the CPU.

    Args:
        model: maps (B, C, H, W) images to (B, K, H, W) logits; used on its own device.
        image: (C, H, W) or (H, W).
        target: a :class:`~vessel_lens.interpret.attribution.targets.Target`, a (row, col) pair (one
            pixel, vessel probability) or a bool (H, W) mask.
        method: one of :data:`METHODS`.
        method_kwargs: the method's options (:data:`METHOD_OPTIONS`).

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import attribute
        >>> attribute(model, image, (16, 16), method="saliency").shape
        torch.Size([1, 32, 32])
        >>> attribute(model, image, (16, 16), method="integrated_gradients", n_steps=8).shape
        torch.Size([1, 32, 32])
    """
    options = _options(method, method_kwargs)
    x = as_image_batch(image)
    chosen = as_target(target, (int(x.shape[-2]), int(x.shape[-1])))
    x = x.to(model_device(model))
    if REGISTRY[method].input_gradient:
        x.requires_grad_(True)
    with frozen_eval(model):
        result = _run(method, TargetValue(model, chosen), x, options)
    return result.detach()[0].float().cpu()


def target_value(model: nn.Module, image: torch.Tensor, target: Target) -> float:
    """The target's value for one image (eval mode, model state restored)."""
    x = as_image_batch(image).to(model_device(model))
    with torch.no_grad(), frozen_eval(model):
        return float(TargetValue(model, as_target(target, tuple(x.shape[-2:])))(x)[0])


__all__ = [
    "LAYER_METHODS",
    "METHODS",
    "METHOD_OPTIONS",
    "REGISTRY",
    "Method",
    "as_image_batch",
    "as_target",
    "attribute",
    "default_gradcam_layer",
    "hides_layers",
    "target_value",
]
