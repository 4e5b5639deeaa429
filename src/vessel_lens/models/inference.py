"""Inference: the model kept as found while it runs (:func:`frozen_eval`), the device it lives
on (:func:`model_device`), and vessel probabilities from a model (the softmax of class 1, or the sigmoid of a
one-channel model's logit; see :mod:`vessel_lens.models.heads`), optionally with flip
averaging, and for images larger than a tile by overlapping windows blended with Gaussian
weights (MONAI's ``sliding_window_inference``, imported only when an image needs it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.models.heads import class_probability

DEFAULT_OVERLAP = 0.25
"""Fraction of a window shared with each neighbour."""
MIN_TILE = 16


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with parameters not requiring grad; both restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter (or, without parameters, its first buffer);
    ``default`` for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device(default)


def check_tiling(tile: int, overlap: float = DEFAULT_OVERLAP) -> None:
    """Refuse a tile side or overlap that sliding windows cannot use (``tile`` 0: no tiling)."""
    if tile != 0 and tile < MIN_TILE:
        raise ConfigError(f"--tile {tile}: must be 0 (whole images) or at least {MIN_TILE}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"--overlap {overlap}: must be at least 0 and below 1")


def _sliding_windows(
    model: nn.Module, batch: torch.Tensor, tile: int, overlap: float, device: torch.device
) -> torch.Tensor:
    """(B, C, H, W) on the CPU -> (B, H, W) vessel probability on the CPU; each window runs on
    ``device`` and only the blended output (and its weights) spans the whole image."""
    from monai.inferers import sliding_window_inference

    height, width = batch.shape[-2:]

    def vessel(window: torch.Tensor) -> torch.Tensor:
        return class_probability(model(window))[:, None].float()

    blended = sliding_window_inference(
        batch,
        roi_size=(min(tile, height), min(tile, width)),  # no padding along a side that fits
        sw_batch_size=1,
        predictor=vessel,
        overlap=overlap,
        mode="gaussian",
        sw_device=device,
        device="cpu",
    )
    return torch.as_tensor(blended)[:, 0]


@torch.no_grad()
def vessel_probability(
    model: nn.Module,
    image: torch.Tensor,
    device: torch.device | str | None = None,
    flip_average: bool = False,
    tile: int = 0,
    overlap: float = DEFAULT_OVERLAP,
) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) image -> (H, W) or (B, H, W) vessel probability (CPU): the
    softmax of class 1, or the sigmoid of the logit of a model with one output channel.

    The model is used as given (call ``.eval()`` first for inference) on ``device``
    (default: the device of its parameters). With ``flip_average`` the probabilities of the
    four flips are averaged. With ``tile`` > 0, an image with a side longer than ``tile`` is
    predicted in ``tile`` x ``tile`` windows overlapping by ``overlap`` whose probabilities
    are blended with Gaussian weights (memory then grows with the tile, not the image); an
    image that fits in one tile gets the plain whole-image pass.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import load_model
        >>> from vessel_lens.training import vessel_probability
        >>> model, _ = load_model("vessmap-w16")
        >>> probability = vessel_probability(model, torch.rand(1, 64, 64))
        >>> probability.shape, bool(((probability >= 0) & (probability <= 1)).all())
        (torch.Size([64, 64]), True)
    """
    check_tiling(tile, overlap)
    if device is None:
        device = model_device(model)
    device = torch.device(device)
    single = image.dim() == 3
    batch = image[None] if single else image
    tiled = tile > 0 and max(batch.shape[-2:]) > tile
    batch = batch.cpu() if tiled else batch.to(device)
    flips = [(), (-1,), (-2,), (-2, -1)] if flip_average else [()]
    total = None
    for dims in flips:
        x = batch.flip(dims) if dims else batch
        if tiled:
            p = _sliding_windows(model, x, tile, overlap, device)
        else:
            p = class_probability(model(x)).float().cpu()
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    probability = total / len(flips)
    return probability[0] if single else probability
