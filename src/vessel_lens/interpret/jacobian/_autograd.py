"""The ``loop`` and ``vmap`` strategies, built on PyTorch's own autograd.

``loop`` is the original method: one ``torch.autograd.grad`` per output pixel through the
retained graph of a single forward pass. It is the reference every faster strategy is checked
against. ``vmap`` pushes a chunk of one-hot output cotangents through ``torch.func.vjp`` at
once; it works for any differentiable model and runs on a BatchNorm-folded copy. (Folding
moves one rounding step, so a ReLU whose input lies within float rounding of zero could in
principle switch; the ``linear`` strategy avoids this by reading masks from the original
forward pass.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vessel_lens.interpret.pixels import output_map


def forward_from(
    model: nn.Module, batch: torch.Tensor, layer: nn.Module | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of the source (input batch, or ``layer``'s output) returning the logits."""
    if layer is None:
        return model

    def run(features: torch.Tensor) -> torch.Tensor:
        # a copy, so that in-place operations of the model never touch the leaf
        handle = layer.register_forward_hook(lambda module, inputs, output: features.clone())
        try:
            return model(batch)
        finally:
            handle.remove()

    return run


class LoopStrategy:
    """One backward pass per output pixel (the original method)."""

    name = "loop"

    def __init__(self, function, source: torch.Tensor, target: int, output: str):
        self.source = source.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            self.values = output_map(function(self.source), target, output).reshape(-1)

    def rows(self, flat: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        grads = []
        with torch.enable_grad():
            for index in flat.tolist():
                (grad,) = torch.autograd.grad(self.values[index], self.source, retain_graph=True)
                grads.append(grad[0])
        return torch.stack(grads)


class VmapStrategy:
    """VJPs of a chunk of one-hot output cotangents at once (``torch.func.vjp`` + ``vmap``)."""

    name = "vmap"

    def __init__(self, function, source: torch.Tensor):
        from torch.func import vjp, vmap

        with torch.enable_grad():
            logits, pullback = vjp(function, source.detach())
        self.shape = logits.shape
        self.batched = vmap(pullback)

    def rows(self, flat: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        n, classes = seeds.shape
        height, width = self.shape[-2:]
        cotangents = seeds.new_zeros((n, 1, classes, height * width))
        cotangents[torch.arange(n), 0, :, flat] = seeds
        cotangents = cotangents.reshape(n, *self.shape)
        with torch.enable_grad():
            (grads,) = self.batched(cotangents)
        return grads[:, 0]
