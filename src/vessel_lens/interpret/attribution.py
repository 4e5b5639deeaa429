"""Attributions of a segmentation target through Captum: one function, eight methods.

``attribute(model, image, target, method, **options)`` explains the scalar value of a
:class:`~vessel_lens.interpret.targets.Target` (the vessel probability or logit summed over its
pixels) by a map over the input, (C, H, W). Captum sees the model through
:class:`~vessel_lens.interpret.targets.TargetValue`, which maps an image batch to one scalar per
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
                     ``F.relu`` calls through :func:`~vessel_lens.interpret._guided.guided_relus`
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

The model is evaluated in eval mode with its parameters not requiring gradients; its mode, the
parameters' ``requires_grad`` and the caller's image are left as found. Stochastic methods take
a ``seed`` and leave the global torch and NumPy random states as they were.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret._guided import guided_relus
from vessel_lens.interpret._inputs import frozen_eval
from vessel_lens.interpret.targets import Target, TargetValue, mask_target, pixel_target

METHODS = (
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "gradient_shap",
    "guided_backprop",
    "occlusion",
    "layer_gradcam",
)

METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "saliency": {"abs": False},
    "input_x_gradient": {},
    "integrated_gradients": {
        "baseline": 0.0,
        "n_steps": 50,
        "integration": "gausslegendre",
        "internal_batch_size": None,
    },
    "smoothgrad": {
        "stdev": 0.15,
        "nt_samples": 16,
        "nt_type": "smoothgrad",
        "batch_size": None,
        "seed": 0,
    },
    "gradient_shap": {"baselines": None, "n_samples": 16, "stdev": 0.0, "seed": 0},
    "guided_backprop": {},
    "occlusion": {"window": 16, "stride": None, "baseline": 0.0, "perturbations_per_eval": 4},
    "layer_gradcam": {"layer": None, "relu": True, "interpolation": "bilinear"},
}
"""Every method's options and their defaults."""


def _options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    if method not in METHODS:
        raise ConfigError(f"attribution method {method!r}: choose one of {', '.join(METHODS)}")
    defaults = METHOD_OPTIONS[method]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ConfigError(f"method {method}: unknown option {unknown[0]!r} (options: {valid})")
    return {**defaults, **given}


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and ``device``) and NumPy's global generator; restore both on exit.

    Captum draws its noise and baseline choices from these global generators.
    """
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        devices = []
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(int(seed))
            if devices:
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(int(seed))
            np.random.seed(int(seed) % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)


def as_image_batch(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) or (H, W) -> a new (1, C, H, W) float32 tensor."""
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(np.asarray(image))
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3:
        raise ConfigError(f"image must be (C, H, W) or (H, W), not {tuple(image.shape)}")
    return image.detach().float()[None].clone()


def as_target(target: Target | tuple[int, int] | torch.Tensor, shape: tuple[int, int]) -> Target:
    """A :class:`Target`, a (row, col) pair (one pixel) or a bool mask (H, W)."""
    if isinstance(target, Target):
        target.check_image(*shape)
        return target
    if isinstance(target, torch.Tensor | np.ndarray) and np.ndim(target) == 2:
        result = mask_target(target)
        result.check_image(*shape)
        return result
    if isinstance(target, tuple | list) and len(target) == 2:
        return pixel_target(int(target[0]), int(target[1]), shape)
    raise ConfigError(f"target {target!r}: give a Target, a (row, col) pair or a bool (H, W) mask")


def _constant(value: float | torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """A baseline as a tensor shaped like ``like`` (1, C, H, W)."""
    tensor = torch.as_tensor(value, dtype=like.dtype).to(like.device)
    if tensor.dim() == 0:
        return torch.full_like(like, float(tensor))
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.shape != like.shape:
        raise ConfigError(
            f"{what} must be a number or shaped like the image {tuple(like.shape[1:])}, "
            f"not {tuple(tensor.shape)}"
        )
    return tensor


def module_by_name(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        shown = [n for n in modules if n and n.count(".") <= 1][:24]
        raise ConfigError(
            f"layer {name!r} is not a module of {type(model).__name__}; "
            f"for example: {', '.join(shown)}"
        )
    return modules[name]


LAYER_METHODS = ("guided_backprop", "layer_gradcam")
"""Methods that reach into the model's layers (its ReLUs, a module's output)."""


def hides_layers(model: nn.Module) -> bool:
    """Whether the model runs its layers inside a program (TorchScript, ``torch.export``),
    where module hooks and Python ReLU replacements cannot reach them."""
    return any(
        isinstance(m, torch.jit.ScriptModule) or getattr(m, "hides_layers", False) is True
        for m in model.modules()
    )


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


def _run(method: str, forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    try:
        import captum.attr as ca
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
    if method == "saliency":
        return ca.Saliency(forward).attribute(x, abs=bool(o["abs"]))
    if method == "input_x_gradient":
        return ca.InputXGradient(forward).attribute(x)
    if method == "integrated_gradients":
        return ca.IntegratedGradients(forward).attribute(
            x,
            baselines=_constant(o["baseline"], x, "integrated_gradients baseline"),
            n_steps=int(o["n_steps"]),
            method=o["integration"],
            internal_batch_size=o["internal_batch_size"],
        )
    if method == "smoothgrad":
        tunnel = ca.NoiseTunnel(ca.Saliency(forward))
        with seeded(o["seed"], x.device):
            return tunnel.attribute(
                x,
                nt_type=o["nt_type"],
                nt_samples=int(o["nt_samples"]),
                nt_samples_batch_size=o["batch_size"],
                stdevs=float(o["stdev"]),
                abs=False,
            )
    if method == "gradient_shap":
        baselines = o["baselines"]
        if baselines is None:
            baselines = torch.cat(
                [torch.zeros_like(x), torch.full_like(x, float(x.detach().mean()))]
            )
        baselines = torch.as_tensor(baselines, dtype=x.dtype).to(x.device)
        if baselines.dim() == 3:
            baselines = baselines[None]
        if baselines.shape[1:] != x.shape[1:]:
            raise ConfigError(
                f"gradient_shap baselines must be (N, C, H, W) with (C, H, W) = "
                f"{tuple(x.shape[1:])}, not {tuple(baselines.shape)}"
            )
        with seeded(o["seed"], x.device):
            return ca.GradientShap(forward).attribute(
                x, baselines=baselines, n_samples=int(o["n_samples"]), stdevs=float(o["stdev"])
            )
    if method == "guided_backprop":
        with warnings.catch_warnings(), guided_relus():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return ca.GuidedBackprop(forward).attribute(x)
    if method == "occlusion":
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
    name = o["layer"] or default_gradcam_layer(forward.model, x[0])
    layer = module_by_name(forward.model, name)
    cam = ca.LayerGradCam(forward, layer).attribute(x, relu_attributions=bool(o["relu"]))
    if not isinstance(cam, torch.Tensor) or cam.dim() != 4:
        raise ConfigError(f"layer_gradcam: layer {name!r} does not output a (B, C, h, w) map")
    padded, _ = _map_sizes(forward.model, x[0])
    up = _upsample(cam.detach(), x.shape[-2], x.shape[-1], o["interpolation"], padded)
    return up.expand(-1, x.shape[1], -1, -1)


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
        target: a :class:`~vessel_lens.interpret.targets.Target`, a (row, col) pair (one
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
    if method not in ("occlusion", "layer_gradcam"):
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
    "attribute",
    "default_gradcam_layer",
    "hides_layers",
    "target_value",
]
