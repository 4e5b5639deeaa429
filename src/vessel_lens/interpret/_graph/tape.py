"""Record one forward pass as a list of ATen operations (a "tape").

The model runs once, for real, under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
that notes every ATen call, which earlier call produced each of its tensor arguments and what it
returned. The values are those of an ordinary eager forward (the same kernels on the same
inputs), so ReLU masks and max-pool choices read from the tape are exactly the model's own.
This is much cheaper than ``make_fx`` (about one forward pass) and needs no symbolic tracing,
so shape-dependent Python (padding to a multiple of 16) is simply executed.

Tensors that no recorded call produced (parameters, buffers, constants) are kept as values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

_CANONICAL = {torch.ops.aten._convolution.default: (torch.ops.aten.convolution.default, 9)}
"""Calls recorded as the public operation they compute, with its first arguments: traced
TorchScript models call ``aten._convolution``, whose four further arguments (benchmark,
deterministic, cudnn_enabled, allow_tf32) choose a kernel, not the values."""


@dataclass(frozen=True)
class Ref:
    """A tensor argument produced by tape entry ``node`` (element ``index`` of a tuple output)."""

    node: int
    index: int | None = None


@dataclass
class Entry:
    """One ATen call: ``args``/``kwargs`` hold :class:`Ref` where a recorded tensor was used."""

    func: Any
    args: tuple
    kwargs: dict
    value: Any
    name: str = ""
    grad_enabled: bool = True
    """Whether gradients were enabled when the model ran it (False inside its own no_grad)."""
    refs: list[Ref] | None = field(default=None, repr=False, compare=False)
    """The :class:`Ref` leaves of ``args`` and ``kwargs`` (filled on first use)."""

    def tensor(self, index: int | None = None) -> torch.Tensor:
        return self.value if index is None else self.value[index]


@dataclass
class Tape:
    """Entries in execution order; ``source`` is the entry differentiated against."""

    entries: list[Entry] = field(default_factory=list)
    source: int = -1
    output: Ref | None = None
    result: Any = None
    unsupported: str = ""
    """Why the tape cannot be linearised whatever the path (e.g. an in-place write to a view)."""

    def value(self, ref: Ref) -> torch.Tensor:
        return self.entries[ref.node].tensor(ref.index)

    def users(self) -> list[list[int]]:
        users: list[list[int]] = [[] for _ in self.entries]
        for i, entry in enumerate(self.entries):
            for ref in refs_in(entry):
                users[ref.node].append(i)
        return users


def needed_entries(tape: Tape) -> list[bool]:
    """Per entry: on a path from the source to the output (its cotangent can be non-zero)."""
    count = len(tape.entries)
    reaches = [False] * count
    if tape.source < 0 or tape.output is None:
        return reaches
    reaches[tape.source] = True
    for i, entry in enumerate(tape.entries):
        if i != tape.source and any(
            reaches[r.node] and _differentiable(tape.value(r)) for r in refs_in(entry)
        ):
            reaches[i] = _differentiable(entry.value)
    needed = [False] * count
    needed[tape.output.node] = reaches[tape.output.node]
    for i in range(count - 1, -1, -1):
        if needed[i]:
            for ref in refs_in(tape.entries[i]):
                if reaches[ref.node] and _differentiable(tape.value(ref)):
                    needed[ref.node] = True
    return needed


def _differentiable(value: Any) -> bool:
    """Whether a gradient can flow through an output: comparisons, indices and masks are
    integer or boolean tensors, and nothing is differentiated through them."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in values)


def refs_in(entry: Entry) -> list[Ref]:
    if entry.refs is None:
        leaves = _leaves((entry.args, entry.kwargs))
        entry.refs = [leaf for leaf in leaves if isinstance(leaf, Ref)]
    return entry.refs


_CONTAINERS = (tuple, list, dict)


def _leaves(tree: Any) -> list[Any]:
    """``pytree.tree_leaves`` for the plain tuples, lists and dicts of ATen arguments (about
    ten times faster; recording calls it for every operation of the forward pass)."""
    kind = type(tree)
    if kind is tuple or kind is list:
        return [leaf for item in tree for leaf in _leaves(item)]
    if kind is dict:
        return [leaf for item in tree.values() for leaf in _leaves(item)]
    if isinstance(tree, _CONTAINERS) and not isinstance(tree, torch.Size):
        return pytree.tree_leaves(tree)
    return [tree]


def _map(function: Any, tree: Any) -> Any:
    """``pytree.tree_map`` for the same plain containers."""
    kind = type(tree)
    if kind is tuple:
        return tuple(_map(function, item) for item in tree)
    if kind is list:
        return [_map(function, item) for item in tree]
    if kind is dict:
        return {key: _map(function, item) for key, item in tree.items()}
    if isinstance(tree, _CONTAINERS) and not isinstance(tree, torch.Size):
        return pytree.tree_map(function, tree)
    return function(tree)


class Recorder(TorchDispatchMode):
    """Appends every ATen call made under it to a :class:`Tape` (see :func:`record`)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch wraps a mode's __torch_dispatch__ in torch._dynamo.disable unless this says
        # no: that imports torch._dynamo on the first call (4-8 s on a small CPU) and adds a
        # wrapper to every recorded operation. Recording never runs under torch.compile.
        return False

    def __init__(self, tape: Tape, source: torch.Tensor | None):
        super().__init__()
        self.tape = tape
        self.producer: dict[int, Ref] = {}
        self.keep: list[torch.Tensor] = []
        self.stale: dict[int, str] = {}
        if source is not None:
            self.add_source(source)

    def add_source(self, tensor: torch.Tensor) -> None:
        self.tape.entries.append(Entry(None, (), {}, tensor, "source"))
        self.tape.source = len(self.tape.entries) - 1
        self.producer[id(tensor)] = Ref(self.tape.source)
        self.keep.append(tensor)

    def _ref(self, leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor):
            return self.producer.get(id(leaf), leaf)
        return leaf

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        functional = _functional_form(func)
        if self.stale:
            self._check_fresh(func, (args, kwargs))
        if functional is not None and args and isinstance(args[0], torch.Tensor):
            for alias in self._aliases(args[0]):
                self._snapshot(alias)
                self.stale[id(alias)] = f"{func} writes in place into a view of another tensor"
            self._snapshot(args[0])
        out = func(*args, **kwargs)
        rec_args, rec_kwargs = _map(self._ref, (args, kwargs))
        node = len(self.tape.entries)
        recorded = functional or func
        if func in _CANONICAL:
            recorded, count = _CANONICAL[func]
            rec_args = rec_args[:count]
        entry = Entry(recorded, rec_args, rec_kwargs, out, _name(recorded), torch.is_grad_enabled())
        self.tape.entries.append(entry)
        if isinstance(out, torch.Tensor):
            self.producer[id(out)] = Ref(node)
            self.keep.append(out)
        elif isinstance(out, (tuple, list)):
            for i, item in enumerate(out):
                if isinstance(item, torch.Tensor):
                    self.producer[id(item)] = Ref(node, i)
                    self.keep.append(item)
        return out

    def _aliases(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Recorded tensors other than ``tensor`` that share its memory (its base, other views):
        an in-place write into ``tensor`` changes them too."""
        if not tensor._is_view() and tensor.untyped_storage().nbytes() == 0:
            return []
        pointer = tensor.untyped_storage().data_ptr()
        return [
            kept
            for kept in self.keep
            if kept is not tensor
            and kept.device == tensor.device
            and kept.untyped_storage().data_ptr() == pointer
        ]

    def _check_fresh(self, func, arguments) -> None:
        """A tensor changed in place through one of its aliases no longer holds what the tape
        says its producer made: reading it afterwards cannot be followed."""
        for leaf in _leaves(arguments):
            stale = isinstance(leaf, torch.Tensor) and id(leaf) in self.stale
            if stale and not self.tape.unsupported:
                self.tape.unsupported = self.stale[id(leaf)]

    def _snapshot(self, tensor: torch.Tensor) -> None:
        """Before an in-place op overwrites a recorded tensor, keep its old value on the tape
        (rules read the values an operation saw, not what later became of them)."""
        ref = self.producer.get(id(tensor))
        if ref is None:
            return
        entry = self.tape.entries[ref.node]
        copy = tensor.detach().clone()
        if ref.index is None:
            entry.value = copy
        else:
            entry.value = tuple(copy if i == ref.index else v for i, v in enumerate(entry.value))

    def output_ref(self, output: Any) -> Ref | None:
        if not isinstance(output, torch.Tensor):
            return None
        self._check_fresh(None, output)
        return self.producer.get(id(output))


@functools.cache
def _name(func: Any) -> str:
    return str(func)


@functools.cache
def _functional_form(func: Any) -> Any:
    """``aten.relu_.default`` → ``aten.relu.default`` (None for ops that are not in-place)."""
    name = func.overloadpacket.__name__
    if not name.endswith("_") or name.startswith("_"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    return getattr(packet, func._overloadname, None) if packet is not None else None


def record(
    model: nn.Module,
    image: torch.Tensor,
    layer: nn.Module | None = None,
    track_graph: bool = False,
) -> Tape:
    """Run ``model(image[None])`` once under the recorder.

    With ``layer``, the source is that module's output (replaced by an identical tensor the
    recorder knows as the source); otherwise the source is the input batch. The model must be
    in the mode wanted (eval) and parameters should not require grad. ``track_graph``: the
    input requires grad, so that ``tape.result`` carries autograd's own graph (to find
    custom ``autograd.Function`` nodes, whose backward the tape cannot see).
    """
    tape = Tape()
    batch = image[None].clone()
    if track_graph:
        batch.requires_grad_(True)
    handle = None
    recorder = Recorder(tape, None if layer is not None else batch)
    if layer is not None:

        def substitute(module, inputs, output):
            replacement = output.detach().clone().requires_grad_(track_graph)
            recorder.add_source(replacement)
            return replacement

        handle = layer.register_forward_hook(substitute)
    try:
        # gradients enabled (nothing requires grad, so no graph is built) so that the parts of
        # the model that run under their own torch.no_grad() are recognised
        with torch.enable_grad(), recorder:
            output = model(batch)
    finally:
        if handle is not None:
            handle.remove()
    tape.output = recorder.output_ref(output)
    tape.result = output
    return tape


def custom_functions(output: object) -> list[str]:
    """Names of the custom ``autograd.Function`` nodes in the graph that produced ``output``."""
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return []
    names, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            name = type(node).__name__.removesuffix("Backward")
            if name not in names:
                names.append(name)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names
