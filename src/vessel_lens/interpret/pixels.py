"""What a caller asks for, turned into what the strategies use: flat pixel indices and the
derivative of the chosen output with respect to the logits. (The model kept as found,
``frozen_eval``, is :func:`vessel_lens.models.inference.frozen_eval`.)"""

from __future__ import annotations

import torch

from vessel_lens.errors import ConfigError
from vessel_lens.models.heads import class_scores, score_seeds


def check_image(image: object) -> None:
    """Refuse anything but a (C, H, W) or (H, W) tensor."""
    if not isinstance(image, torch.Tensor) or image.dim() not in (2, 3):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConfigError(f"image must be a (C, H, W) or (H, W) tensor, not {shape}")


def flat_pixels(pixels: object, height: int, width: int) -> torch.Tensor:
    """``None`` (all, row-major), flat indices (N,), (row, col) pairs (N, 2) or a boolean
    (H, W) mask → flat (N,)."""
    if pixels is None:
        return torch.arange(height * width)
    tensor = torch.as_tensor(pixels)
    if tensor.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if tensor.is_floating_point() or tensor.is_complex():
        raise ConfigError("pixels must be integer indices, not floating-point values")
    if tensor.dtype == torch.bool:
        if tuple(tensor.shape) not in ((height, width), (height * width,)):
            raise ConfigError(
                f"pixels: a boolean mask must be {height}x{width} (or flat), "
                f"not {tuple(tensor.shape)}"
            )
        return torch.nonzero(tensor.reshape(-1).cpu()).flatten()
    tensor = tensor.long().cpu()
    if tensor.dim() == 2 and tensor.shape[1] == 2:
        rows, cols = tensor[:, 0], tensor[:, 1]
        bad = (rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)
        if bool(bad.any()):
            r, c = tensor[bad][0].tolist()
            raise ConfigError(f"pixel (row {r}, col {c}) is outside the {height}x{width} output")
        return rows * width + cols
    if tensor.dim() == 0:
        tensor = tensor[None]
    if tensor.dim() != 1:
        raise ConfigError(
            f"pixels must be flat indices (N,) or (row, col) pairs (N, 2), not {tuple(tensor.shape)}"
        )
    bad = (tensor < 0) | (tensor >= height * width)
    if bool(bad.any()):
        raise ConfigError(
            f"pixel index {int(tensor[bad][0])} is outside the {height}x{width} output "
            f"(0..{height * width - 1})"
        )
    return tensor


def output_seeds(
    logits: torch.Tensor, flat: torch.Tensor, target: int, output: str
) -> torch.Tensor:
    """d output / d logits at each pixel: (N, K), from (1, K, H, W) logits (computed in float64;
    a one-channel head is a sigmoid, see :mod:`vessel_lens.models.heads`)."""
    z = logits[0].reshape(logits.shape[1], -1)[:, flat.to(logits.device)].T.double()
    return score_seeds(z, target, output)


def output_map(logits: torch.Tensor, target: int, output: str) -> torch.Tensor:
    """The differentiated quantity at every pixel, from (1, K, H, W) logits: (H, W)."""
    return class_scores(logits, target, output)[0]
