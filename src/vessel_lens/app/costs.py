"""How many bytes the app's computations take, measured once per architecture.

What a model costs grows with the view's pixel count: the prepared view
(:class:`~vessel_lens.interpret.JacobianEngine`) holds the recorded forward pass, and one
attribution sample holds what autograd saves for its backward pass. Both are measured on two
probe images (64x64 and 128x128, random pixels): the engine's bytes as
:func:`~vessel_lens.app.cache.held_bytes` counts them, the saved bytes through
:func:`torch.autograd.graph.saved_tensors_hooks`. A straight line through the two gives the
estimate for any view (for the width-16 reference model: 18 MiB + 1.5 KiB per pixel for the
engine, 7.5 MiB + 0.8 KiB per pixel per sample for the backward pass; both lines agree with
measurements from 64x64 to 512x512 within 1 %).

The queue reserves :data:`MARGIN` times an estimate (a view's preparation peaked at 1.04 to
1.08 times the engine it leaves, 64x64 to 512x512); ``benchmarks/app_budget.py`` measures the
server's peak against the budget these reservations keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vessel_lens.app.cache import held_bytes
from vessel_lens.interpret._inputs import frozen_eval

PROBE_SIDES = (64, 128)
MARGIN = 1.25
"""Reserved bytes per estimated byte (transient buffers beyond what the estimate counts)."""
ROW_BASE = 16 * 2**20
"""Bytes reserved for a windowed backward pass besides its output rows."""


@dataclass(frozen=True)
class Line:
    """``fixed + per_pixel * pixels`` bytes."""

    fixed: float
    per_pixel: float

    def __call__(self, pixels: int) -> int:
        return int(self.fixed + self.per_pixel * pixels)

    @classmethod
    def through(cls, small: tuple[int, int], large: tuple[int, int]) -> Line:
        """The line through two (pixels, bytes) measurements, with a slope of at least a
        quarter of the larger one's bytes per pixel and no negative part (a model whose
        probes happen to cost the same is not taken to cost nothing per pixel)."""
        (p0, b0), (p1, b1) = small, large
        per_pixel = max((b1 - b0) / (p1 - p0), b1 / p1 / 4)
        return cls(max(b1 - per_pixel * p1, 0.0), per_pixel)


@dataclass(frozen=True)
class Costs:
    """One architecture's memory per view pixel count."""

    engine: Line
    """Bytes a prepared view holds (its recorded forward pass)."""
    sample: Line
    """Bytes autograd saves for one image's backward pass."""
    parameters: int
    """Bytes of the model's parameters and buffers (a private copy costs this much)."""

    def build(self, pixels: int) -> int:
        """To reserve for preparing a view, or for its receptive field (measured peaks:
        1.04-1.16 times the engine)."""
        return int(MARGIN * self.engine(pixels))

    def samples(self, pixels: int, count: int, channels: int = 1) -> int:
        """To reserve for a batch of ``count`` attribution samples: what autograd saves,
        each sample's input gradient, a private copy of the model and a few maps the size
        of the input (the result and the method's running sums)."""
        image = 4 * channels * pixels
        per_sample = self.sample(pixels) - self.sample.fixed + 2 * image
        batch = self.sample.fixed + count * per_sample
        return int(MARGIN * batch) + self.parameters + 4 * image

    def rows(self, pixels: int, count: int, channels: int) -> int:
        """To reserve for ``count`` Jacobian rows of a prepared view (windowed backward
        passes: measured 7-12 MiB for one row, 17-42 MiB for 16, views 64² to 512²)."""
        return ROW_BASE + 8 * count * channels * pixels * 4

    def batch_size(self, pixels: int, limit: int, most: int, channels: int = 1) -> int:
        """The most samples (at least 1, at most ``most``) whose reservation fits ``limit``."""
        one = self.samples(pixels, 1, channels)
        per_sample = max(self.samples(pixels, 2, channels) - one, 1)
        return int(max(1, min(most, 1 + (limit - one) // per_sample)))

    def largest_side(self, limit: int) -> int:
        """The largest square view side whose preparation fits ``limit`` bytes."""
        pixels = (limit / MARGIN - self.engine.fixed) / max(self.engine.per_pixel, 1e-9)
        return max(math.isqrt(max(int(pixels), 0)), 0)


def saved_bytes(model: nn.Module, image: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves in ``model``'s forward pass on ``image``
    (1, C, H, W) with respect to the image."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = image.clone().requires_grad_(True)
    with frozen_eval(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def measure_costs(model: nn.Module, in_channels: int, device: torch.device) -> Costs:
    """Measure :class:`Costs` on the probe images (the caller holds the model's lock)."""
    from vessel_lens.interpret import JacobianEngine

    generator = torch.Generator().manual_seed(0)
    engines, samples = [], []
    for height, width in probe_sizes(model):
        image = torch.rand(in_channels, height, width, generator=generator)
        engine = JacobianEngine(model, image, device=device)
        engines.append((height * width, held_bytes(engine)))
        del engine
        samples.append((height * width, saved_bytes(model, image[None].to(device))))
    parameters = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if len(engines) == 1:  # a model of one input size: every view of it costs the same
        engines.insert(0, (0, 0))
        samples.insert(0, (0, 0))
    return Costs(Line.through(*engines), Line.through(*samples), parameters)


def probe_sizes(model: nn.Module) -> list[tuple[int, int]]:
    """The probe images' sizes: :data:`PROBE_SIDES` squares, or the one size a program was
    exported for (``input_shape`` of a wrapped ``torch.export`` program)."""
    shape = getattr(model, "input_shape", None)
    if shape is not None and len(shape) == 4 and None not in shape[2:]:
        return [(int(shape[2]), int(shape[3]))]
    return [(side, side) for side in PROBE_SIDES]
