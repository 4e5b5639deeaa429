"""What every attribution method shares: the image as a batch, the target, a constant baseline,
seeded random draws, and where the model's layers are (and whether a program hides them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.targets import Target, mask_target, pixel_target


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


def constant(value: float | torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
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


def hides_layers(model: nn.Module) -> bool:
    """Whether the model runs its layers inside a program (TorchScript, ``torch.export``),
    where module hooks and Python ReLU replacements cannot reach them."""
    return any(
        isinstance(m, torch.jit.ScriptModule) or getattr(m, "hides_layers", False) is True
        for m in model.modules()
    )
