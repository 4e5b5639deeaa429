"""Guided-backpropagation ReLUs for models that call ``F.relu`` in ``forward``.

Captum's :class:`~captum.attr.GuidedBackprop` overrides the gradient of ``nn.ReLU`` modules
through backward hooks, so a ReLU written as ``F.relu(x)`` inside a ``forward`` (the reference
model's residual and decoder blocks) would keep its ordinary gradient and the result would be a
mixture of guided and plain backpropagation. :func:`guided_relus` closes that gap for the
duration of a ``with`` block: a :class:`~torch.overrides.TorchFunctionMode` (active in the
current thread only) replaces every ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` call by a ReLU
whose backward pass lets only positive gradients through where the input was positive. Nothing
on the model changes; leaving the block restores ordinary ReLUs.

An in-place ``F.relu(x, inplace=True)`` is computed out of place (its result is returned, as
``nn.ReLU(inplace=True)`` uses it); code that relies on the side effect and ignores the result,
and ReLUs written as ``clamp``/``max``, keep plain gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return (grad * (out > 0)).clamp(min=0)


_RELUS = (F.relu, torch.relu, torch.Tensor.relu)
_INPLACE_RELUS = (F.relu_, torch.relu_, torch.Tensor.relu_)


class guided_relus(TorchFunctionMode):
    """Within the block, functional ReLUs back-propagate the guided way (see module docs)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inplace = func in _INPLACE_RELUS or (
            func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        )
        if inplace:
            # the input is overwritten with the guided ReLU of (a copy of) itself, so code
            # that ignores the return value sees the same values and the guided gradient
            target = args[0]
            return target.copy_(_GuidedReLU.apply(target.clone()))
        if func in _RELUS:
            return _GuidedReLU.apply(args[0])
        return func(*args, **kwargs)
