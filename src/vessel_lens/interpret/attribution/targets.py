"""What to explain in a segmentation output: a set of output pixels and how to score them.

A :class:`Target` is a boolean mask over the output (H, W) plus the class and the output kind
(``probability``: the softmax probability of ``target_class``; ``logit``: its logit). Its value
for a batch of logits (B, K, H, W) is the output summed over the mask's pixels, one scalar per
sample, so every attribution method explains one number per image. A model with one output
channel is a sigmoid head: its probability is the sigmoid of that channel, its logit the
channel, and only ``target_class`` 1 (the vessel) exists (:mod:`vessel_lens.models.heads`).

Kinds of target:

``pixel``           one output pixel (row, col);
``mask``            any non-empty set of pixels;
``segment``         the vessel segment around a clicked pixel: the connected component (8-
                    connectivity) of a vessel mask (the prediction or the label) that contains
                    the click, searched inside the square window of side ``2 * radius + 1``
                    centred on the click (pieces joined only outside the window are not
                    included, which keeps a "segment" local even in a fully connected network);
``false_positive``  predicted vessel pixels outside the label;
``false_negative``  label pixels the prediction misses.

Every ambiguous or empty target raises :class:`~vessel_lens.errors.ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.models.heads import VESSEL_CLASS, class_probability, class_scores
from vessel_lens.models.inference import model_device

TARGET_KINDS = ("pixel", "mask", "segment", "false_positive", "false_negative")
TARGET_OUTPUTS = ("probability", "logit")
ERROR_KINDS = ("false_positive", "false_negative")


@dataclass(frozen=True, eq=False)
class Target:
    """Output pixels whose summed ``output`` of ``target_class`` is explained.

    ``mask``: bool (H, W), on the CPU. ``name``: a short description for titles and tables.
    """

    mask: torch.Tensor
    kind: str
    name: str
    target_class: int = 1
    output: str = "probability"

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"target kind {self.kind!r}: choose one of {', '.join(TARGET_KINDS)}")
        if self.output not in TARGET_OUTPUTS:
            raise ConfigError(
                f"target output {self.output!r}: choose one of {', '.join(TARGET_OUTPUTS)}"
            )
        if isinstance(self.target_class, bool) or int(self.target_class) < 0:
            raise ConfigError(f"target class {self.target_class!r}: must be a class index >= 0")
        if self.mask.dim() != 2 or self.mask.dtype != torch.bool:
            raise ConfigError(
                f"target {self.name}: mask must be bool (H, W), not {self.mask.dtype} "
                f"{tuple(self.mask.shape)}"
            )
        if not bool(self.mask.any()):
            raise ConfigError(f"target {self.name}: holds no pixel")

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.mask.shape[0]), int(self.mask.shape[1])

    @property
    def pixel_count(self) -> int:
        return int(self.mask.sum())

    @property
    def pixel(self) -> tuple[int, int] | None:
        """(row, col) of a one-pixel target, else ``None``."""
        if self.pixel_count != 1:
            return None
        row, col = torch.nonzero(self.mask)[0].tolist()
        return int(row), int(col)

    def check_image(self, height: int, width: int) -> None:
        if self.shape != (height, width):
            raise ConfigError(
                f"target {self.name}: mask is {self.shape[0]}x{self.shape[1]} but the image "
                f"is {height}x{width}"
            )

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """Summed output over the target: logits (B, K, H, W) -> (B,)."""
        if logits.dim() != 4:
            raise ConfigError(f"model output must be (B, K, H, W), not {tuple(logits.shape)}")
        self.check_image(int(logits.shape[-2]), int(logits.shape[-1]))
        flat = class_scores(logits, self.target_class, self.output).flatten(1)
        index = torch.nonzero(self.mask.flatten()).flatten().to(flat.device)
        return flat.index_select(1, index).sum(1)

    def with_output(self, output: str) -> Target:
        """The same pixels scored by another output kind."""
        return Target(self.mask, self.kind, self.name, self.target_class, output)


class TargetValue(nn.Module):
    """Maps an image batch (B, C, H, W) to the target's value per sample (B,).

    The per-pixel segmentation wrapper that lets Captum's image-classification methods
    explain a segmentation output: each sample's score is one scalar.
    """

    def __init__(self, model: nn.Module, target: Target):
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.target.value(self.model(images))


def _check_pixel(row: int, col: int, shape: tuple[int, int]) -> tuple[int, int]:
    height, width = shape
    if not (0 <= int(row) < height and 0 <= int(col) < width):
        raise ConfigError(f"pixel (row {row}, col {col}) is outside the {height}x{width} image")
    return int(row), int(col)


def _bool_mask(mask: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    tensor = tensor.detach().cpu()
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2:
        raise ConfigError(f"{what} must be (H, W), not {tuple(tensor.shape)}")
    return tensor.bool() if tensor.dtype != torch.bool else tensor.clone()


def pixel_target(
    row: int,
    col: int,
    shape: tuple[int, int],
    *,
    output: str = "probability",
    target_class: int = 1,
) -> Target:
    """One output pixel of an image of ``shape`` (H, W).

    Examples:
        >>> from vessel_lens.interpret import pixel_target
        >>> target = pixel_target(10, 12, (64, 64))
        >>> int(target.mask.sum()), target.name
        (1, 'pixel (10, 12)')
    """
    row, col = _check_pixel(row, col, shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[row, col] = True
    return Target(mask, "pixel", f"pixel ({row}, {col})", target_class, output)


def mask_target(
    mask: torch.Tensor | np.ndarray,
    *,
    name: str | None = None,
    output: str = "probability",
    target_class: int = 1,
) -> Target:
    """Any non-empty set of output pixels (bool or 0/1 mask (H, W)).

    Examples:
        >>> import torch
        >>> from vessel_lens.interpret import mask_target
        >>> mask = torch.zeros(64, 64, dtype=torch.bool)
        >>> mask[10:20, 30] = True
        >>> target = mask_target(mask, name="a vessel")
        >>> int(target.mask.sum()), target.name
        (10, 'a vessel')
    """
    tensor = _bool_mask(mask, "target mask")
    if not bool(tensor.any()):
        raise ConfigError("target mask is empty; select at least one pixel")
    label = name or f"mask ({int(tensor.sum())} px)"
    return Target(tensor, "mask", label, target_class, output)


def segment_target(
    vessels: torch.Tensor | np.ndarray,
    row: int,
    col: int,
    *,
    radius: int = 16,
    source: str = "mask",
    output: str = "probability",
    target_class: int = 1,
) -> Target:
    """The vessel segment around a click: the 8-connected component of ``vessels`` (H, W)
    holding (row, col), found inside the window of side ``2 * radius + 1`` centred there.

    ``source`` names the mask in messages (for example ``prediction`` or ``label``).

    Examples:
        >>> import torch
        >>> from vessel_lens.interpret import segment_target
        >>> vessels = torch.zeros(64, 64, dtype=torch.bool)
        >>> vessels[30:33, :] = True  # a horizontal vessel, 3 pixels wide
        >>> vessels[5:8, :] = True  # another one, not connected
        >>> target = segment_target(vessels, 31, 20, radius=8)
        >>> int(target.mask.sum())  # 3 x 17 pixels: the clicked vessel inside the 17 x 17 window
        51
    """
    if isinstance(radius, bool) or int(radius) < 0:
        raise ConfigError(f"segment radius {radius!r}: must be an integer >= 0")
    vessel_mask = _bool_mask(vessels, f"{source} mask")
    row, col = _check_pixel(row, col, tuple(vessel_mask.shape))
    if not bool(vessel_mask[row, col]):
        raise ConfigError(
            f"pixel (row {row}, col {col}) is not on a vessel of the {source}; click a vessel "
            "pixel or use a pixel target"
        )
    height, width = vessel_mask.shape
    top, left = max(row - radius, 0), max(col - radius, 0)
    bottom, right = min(row + radius + 1, height), min(col + radius + 1, width)
    window = vessel_mask[top:bottom, left:right].numpy()
    components, _ = ndimage.label(window, structure=np.ones((3, 3), dtype=bool))
    segment = torch.zeros((height, width), dtype=torch.bool)
    segment[top:bottom, left:right] = torch.from_numpy(
        components == components[row - top, col - left]
    )
    name = f"segment at ({row}, {col}) of the {source} (radius {radius}, {int(segment.sum())} px)"
    return Target(segment, "segment", name, target_class, output)


def error_target(
    prediction: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    kind: str,
    *,
    output: str = "probability",
    target_class: int = 1,
) -> Target:
    """False-positive (prediction and not label) or false-negative (label and not prediction)
    pixels; both masks (H, W).

    Examples:
        >>> import torch
        >>> from vessel_lens.interpret import error_target
        >>> prediction = torch.tensor([[True, True], [False, False]]).repeat(8, 8)
        >>> label = torch.tensor([[True, False], [True, False]]).repeat(8, 8)
        >>> int(error_target(prediction, label, "false_positive").mask.sum())
        64
    """
    if kind not in ERROR_KINDS:
        raise ConfigError(f"error region {kind!r}: choose one of {', '.join(ERROR_KINDS)}")
    predicted = _bool_mask(prediction, "prediction")
    truth = _bool_mask(label, "label")
    if predicted.shape != truth.shape:
        raise ConfigError(
            f"prediction is {tuple(predicted.shape)} but label is {tuple(truth.shape)}"
        )
    region = predicted & ~truth if kind == "false_positive" else truth & ~predicted
    words = kind.replace("_", "-")
    if not bool(region.any()):
        raise ConfigError(
            f"no {words} pixels: the prediction and the label leave that region empty"
        )
    return Target(region, kind, f"{words} region ({int(region.sum())} px)", target_class, output)


@torch.no_grad()
def predicted_vessels(
    model: nn.Module,
    image: torch.Tensor,
    threshold: float = 0.5,
    target_class: int = VESSEL_CLASS,
) -> torch.Tensor:
    """Bool (H, W) mask of pixels whose class probability exceeds ``threshold`` (CPU).

    The model is evaluated in eval mode and its mode restored.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import predicted_vessels
        >>> mask = predicted_vessels(model, image)
        >>> mask.shape, mask.dtype
        (torch.Size([32, 32]), torch.bool)
    """
    batch = image[None] if image.dim() == 3 else image[None, None] if image.dim() == 2 else image
    device = model_device(model)
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        probability = class_probability(model(batch.to(device)), target_class)[0]
    finally:
        for module, mode in training:
            module.training = mode
    return (probability > threshold).cpu()


__all__ = [
    "ERROR_KINDS",
    "TARGET_KINDS",
    "TARGET_OUTPUTS",
    "Target",
    "TargetValue",
    "error_target",
    "mask_target",
    "pixel_target",
    "predicted_vessels",
    "segment_target",
]
