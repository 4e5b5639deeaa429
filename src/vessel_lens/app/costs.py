"""How many bytes the app's computations take, measured once per architecture.

What a model costs grows with the view's pixel count: the prepared view
(:class:`~vessel_lens.interpret.JacobianEngine`) holds the recorded forward pass, one
attribution sample holds what autograd saves for its backward pass, a hovered pixel's
windowed backward pass and the view's receptive field (:func:`~vessel_lens.interpret.fields.structural.
receptive_field`) need working memory while they run. All are measured on two probe images
(128x128 and 256x256, random pixels): the engine's bytes as
:func:`~vessel_lens.app.cache.held_bytes` counts them, the saved bytes through
:func:`torch.autograd.graph.saved_tensors_hooks`, and the working memory as the peak of the
tensors alive at once while the computation runs (:func:`peak_bytes`). A straight line
through the two gives the estimate for any view. For the width-16 reference model: 18 MiB +
1.5 KiB per pixel for the engine, 0.3 KiB per pixel for a pixel's backward pass, 1.6 KiB per
pixel for the receptive field; for a width-1 model the receptive field takes four times its
engine (119 MiB at 512x512, where a backward pass takes 8 MiB). The probes are not smaller
because below 128x128 a backward pass's fixed costs hide its growth (the width-16 model's
pass takes 11 MiB at 64x64 and 128x128, 25 MiB at 256x256, 84-88 MiB at 512x512).

The queue reserves :data:`MARGIN` times an estimate (a view's preparation peaked at 1.04 to
1.08 times the engine it leaves, 64x64 to 512x512); ``benchmarks/app_budget.py`` measures the
server's peak against the budget these reservations keep.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vessel_lens.app.cache import held_bytes
from vessel_lens.errors import ConfigError
from vessel_lens.models.inference import frozen_eval

PROBE_SIDES = (128, 256)
MARGIN = 1.25
"""Reserved bytes per estimated byte (transient buffers beyond what the estimate counts)."""
ROW_CHUNK = 16
"""Rows of one measured chunk of backward passes (the global maximum's chunk size)."""


class _PeakTensors(TorchDispatchMode):
    """Counts the bytes of the tensor storages that operations create and that are still
    alive, and the largest such count (storages are counted once, until they are freed)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def _freed(self, key: int, nbytes: int) -> None:
        with self._lock:
            self.live -= nbytes
            self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = id(storage), storage.nbytes()
            with self._lock:
                if key in self._seen:
                    continue
                self._seen.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, nbytes)
        return out


def peak_bytes(compute: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
    """(``compute(*args, **kwargs)``, the most bytes of tensors it had alive at once):
    tensors created by its operations, on any device, counted until freed (its result's
    included)."""
    tracker = _PeakTensors()
    with tracker:
        result = compute(*args, **kwargs)
    return result, tracker.peak


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
    row: Line
    """Peak bytes of one pixel's backward pass on a prepared view (its map included)."""
    chunk: Line
    """Peak bytes of :data:`ROW_CHUNK` pixels' backward passes computed together."""
    field: Line
    """Peak bytes of computing the view's receptive field (its boxes included)."""

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

    def rows(self, pixels: int, count: int) -> int:
        """To reserve for ``count`` Jacobian rows of a prepared view (windowed backward
        passes): one row's peak and, per further row, the chunk's growth per row."""
        one = self.row(pixels)
        extra = max(self.chunk(pixels) - one, 0) / (ROW_CHUNK - 1)
        return int(MARGIN * (one + max(count - 1, 0) * extra))

    def receptive_field(self, pixels: int) -> int:
        """To reserve for computing a view's receptive field."""
        return int(MARGIN * self.field(pixels))

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
    from vessel_lens.interpret.fields.structural import receptive_field

    generator = torch.Generator().manual_seed(0)
    measured: dict[str, list[tuple[int, int]]] = {
        name: [] for name in ("engine", "sample", "row", "chunk", "field")
    }
    for height, width in probe_sizes(model):
        pixels = height * width
        image = torch.rand(in_channels, height, width, generator=generator)
        engine = JacobianEngine(model, image, device=device)
        measured["engine"].append((pixels, held_bytes(engine)))
        centre = (height // 2) * width + width // 2
        chunk = torch.arange(centre, min(centre + ROW_CHUNK, pixels))
        measured["row"].append((pixels, peak_bytes(engine.rows, chunk[:1])[1]))
        measured["chunk"].append((pixels, peak_bytes(engine.rows, chunk)[1]))
        del engine
        measured["sample"].append((pixels, saved_bytes(model, image[None].to(device))))
        try:
            field = peak_bytes(
                receptive_field, model, (height, width), in_channels=in_channels, device=device
            )[1]
        except ConfigError:  # the app shows no field for such a model: never reserved
            field = measured["engine"][-1][1]
        measured["field"].append((pixels, field))
    parameters = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if len(measured["engine"]) == 1:  # a model of one input size: every view costs the same
        for points in measured.values():
            points.insert(0, (0, 0))
    lines = {name: Line.through(*points) for name, points in measured.items()}
    return Costs(
        lines["engine"],
        lines["sample"],
        parameters,
        row=lines["row"],
        chunk=lines["chunk"],
        field=lines["field"],
    )


def probe_sizes(model: nn.Module) -> list[tuple[int, int]]:
    """The probe images' sizes: :data:`PROBE_SIDES` squares, or the one size a program was
    exported for (``input_shape`` of a wrapped ``torch.export`` program)."""
    shape = getattr(model, "input_shape", None)
    if shape is not None and len(shape) == 4 and None not in shape[2:]:
        return [(int(shape[2]), int(shape[3]))]
    return [(side, side) for side in PROBE_SIDES]
