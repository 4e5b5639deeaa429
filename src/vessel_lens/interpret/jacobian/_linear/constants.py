"""Constants derived from a model's parameters, kept while the parameters live and are unchanged.

Every :class:`~vessel_lens.interpret.JacobianEngine` prepares its backward weights (BatchNorm
folded into the convolution before it, GEMM operands of the small-map convolutions, stacked
weights of convolutions that share an input). They depend on the weights only, not on the image
or the pixels, so a second engine for the same model (another image, another pixel set, the
app's next view) reuses them. An entry is keyed by the identity of the tensors it was computed
from and checked against their version counters and storage, so a parameter changed in place
(an optimiser step, ``load_state_dict``) or replaced is recomputed; it is dropped with the
first tensor (:class:`torch.utils.weak.WeakIdKeyDictionary`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()
_LOCK = threading.Lock()


def _stamp(tensor: torch.Tensor | None) -> tuple:
    if tensor is None:
        return ()
    return (tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device, tuple(tensor.shape))


def derived(
    kind: object,
    tensors: Sequence[torch.Tensor | None],
    make: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """``make()``, a tensor computed from ``tensors`` (the first one not None) and ``kind``
    (a hashable naming the computation and its non-tensor arguments), cached."""
    base = tensors[0]
    if not isinstance(base, torch.Tensor) or base.is_inference() or base.requires_grad:
        return make()
    stamps = tuple(_stamp(t) for t in tensors)
    with _LOCK:
        entries = _CACHE.get(base)
        found = entries.get(kind) if entries is not None else None
    if found is not None:
        found_stamps, others, value = found
        if found_stamps == stamps and all(
            (ref is None and t is None) or (ref is not None and ref() is t)
            for ref, t in zip(others, tensors[1:], strict=True)
        ):
            return value
    value = make()
    others = tuple(None if t is None else weakref.ref(t) for t in tensors[1:])
    with _LOCK:  # one entry per kind: a changed parameter replaces what it made
        _CACHE.setdefault(base, {})[kind] = (stamps, others, value)
    return value
