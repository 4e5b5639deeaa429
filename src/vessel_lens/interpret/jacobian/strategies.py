"""The Jacobian strategies: what one must provide, and the registry the engine chooses from.

A strategy computes Jacobian rows from the engine's one recorded forward pass (see
:mod:`.engine` for what each of ``linear``, ``vmap`` and ``loop`` does). Adding one means
writing a class that follows :class:`Strategy` and one :class:`StrategySpec` line in
:data:`REGISTRY`; ``auto`` tries the registered strategies in the registry's order and takes
the first that can handle the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from vessel_lens.interpret.jacobian._autograd import LoopStrategy, VmapStrategy, forward_from
from vessel_lens.interpret.jacobian._linear.strategy import LinearStrategy, Unsupported
from vessel_lens.interpret.jacobian.fold import fold_batch_norm
from vessel_lens.interpret.pixels import output_seeds

if TYPE_CHECKING:
    from torch import nn

    from vessel_lens.interpret.jacobian.engine import JacobianEngine


class Strategy(Protocol):
    """What the engine asks of a strategy, once it is built on the engine's forward pass."""

    name: str
    """The name it is registered under."""

    def rows(self, flat: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Jacobian rows of the flat output pixels ``flat`` (N,), each the gradient of
        ``seeds[n]`` (N, K) · logits[:, pixel] with respect to the source: (N, *source shape),
        on the engine's device."""
        ...


class Unavailable(Exception):
    """The strategy cannot handle this model; the message says why."""


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy."""

    build: Callable[
        [JacobianEngine, nn.Module, torch.Tensor, nn.Module | None, torch.Tensor], Strategy
    ]
    """``build(engine, model, image batch, layer module or None, source)``; raises
    :class:`Unavailable` when the model is beyond it."""
    max_chunk: int
    """Most rows per chunk on a CPU."""
    max_chunk_cuda: int
    """Most rows per chunk on a CUDA device."""
    row_elements: Callable[[JacobianEngine], int]
    """Elements one row of a batched backward pass holds (the chunk size is chosen from it)."""
    uses_tape: bool = False
    """Whether it reads the engine's recorded tape (otherwise the tape is freed first)."""
    low_precision: bool = False
    """Whether it computes in bfloat16 and float16."""


def _linear(engine, model, image, module, source) -> Strategy:
    try:
        return LinearStrategy(engine.tape, engine.dtype)
    except Unsupported as exc:
        raise Unavailable(str(exc)) from None


def _vmap(engine, model, image, module, source) -> Strategy:
    """The vmap strategy, tried on one row: torch.func refuses some models (custom
    autograd.Functions without ``setup_context`` or a vmap rule) only when it runs."""
    work = model if module is not None else fold_batch_norm(model, image)
    try:
        impl = VmapStrategy(forward_from(work, image, module), source)
        flat = torch.zeros(1, dtype=torch.long)
        seeds = output_seeds(engine.logits, flat, engine.target_class, engine.output)
        impl.rows(flat.to(engine.device), seeds.to(engine.device, engine.dtype))
    except RuntimeError as exc:
        text = str(exc)
        if "autograd.Function" in text or "functorch" in text or "vmap" in text:
            raise Unavailable(
                "the model uses a custom autograd.Function that torch.func cannot "
                "transform (it needs setup_context and a vmap rule)"
            ) from None
        raise
    return impl


def _loop(engine, model, image, module, source) -> Strategy:
    function = forward_from(model, image, module)
    return LoopStrategy(function, source, engine.target_class, engine.output)


def _windowed_elements(engine) -> int:
    return 6 * max(engine.largest_elements, int(torch.tensor(engine.source_shape).prod()))


def _whole_graph_elements(engine) -> int:
    return 3 * engine.total_elements


REGISTRY: dict[str, StrategySpec] = {
    "linear": StrategySpec(
        _linear, 256, 2048, _windowed_elements, uses_tape=True, low_precision=True
    ),
    "vmap": StrategySpec(_vmap, 64, 512, _whole_graph_elements),
    "loop": StrategySpec(_loop, 64, 64, _whole_graph_elements),
}
"""The strategies by name, in the order ``auto`` tries them."""
