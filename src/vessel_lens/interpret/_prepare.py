"""Preparing a recorded tape for the ``linear`` strategy: which entries carry cotangents, what
each needs (ReLU masks, BatchNorm scales folded into convolution weights, derivatives of
element-wise activations), and which convolutions share a backward call.

Operations without a rule raise :class:`Unsupported` here, before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vessel_lens.interpret._tape import Entry, Ref, Tape, needed_entries, refs_in

aten = torch.ops.aten


class Unsupported(Exception):
    """The tape holds an operation the linear strategy has no rule for."""


@dataclass
class Prepared:
    """A tape made ready for repeated backward passes in ``dtype``."""

    tape: Tape
    dtype: torch.dtype
    needed: list[bool]
    consts: dict[object, object] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    leader: dict[int, int] = field(default_factory=dict)
    members: dict[int, list[int]] = field(default_factory=dict)

    def is_active(self, ref: object) -> bool:
        return isinstance(ref, Ref) and self.needed[ref.node]


IDENTITY = {aten.alias.default, aten.detach.default, aten.clone.default, aten.contiguous.default}
BATCH_NORM = {
    aten.native_batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.cudnn_batch_norm.default,  # what eval-mode BatchNorm dispatches to on CUDA
    aten.miopen_batch_norm.default,
}
TRAINING_FLAG = {
    aten.native_batch_norm.default: 5,
    aten.cudnn_batch_norm.default: 5,
    aten.miopen_batch_norm.default: 5,
}
"""BatchNorm variants that share native_batch_norm's argument layout (input, weight, bias,
running mean, running variance, ...); the position of their ``training`` flag if they have one."""
POINTWISE = {
    aten.relu.default,
    aten.leaky_relu.default,
    aten.hardtanh.default,
    aten.elu.default,
    aten.gelu.default,
    aten.silu.default,
    aten.sigmoid.default,
    aten.tanh.default,
    aten.clamp.default,
    aten.clamp_min.default,
    aten.hardswish.default,
    aten.hardsigmoid.default,
    aten.softplus.default,
    aten.mish.default,
}
SCALAR = {aten.mul.Scalar, aten.div.Scalar, aten.neg.default, aten.add.Scalar, aten.sub.Scalar}
LINEAR_PER_SAMPLE = {
    aten.avg_pool2d.default,
    aten.upsample_nearest2d.default,
    aten.upsample_nearest2d.vec,
    aten.upsample_bilinear2d.default,
    aten.upsample_bilinear2d.vec,
    aten._adaptive_avg_pool2d.default,
    aten.pixel_shuffle.default,
    aten.pixel_unshuffle.default,
}


def arg_of(entry: Entry, index: int, name: str, default: object = None) -> object:
    if len(entry.args) > index:
        return entry.args[index]
    return entry.kwargs.get(name, default)


def spatial(tensor: torch.Tensor) -> tuple[int, int]:
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def _is_4d(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[0] == 1


def prepare(tape: Tape, dtype: torch.dtype) -> Prepared:
    """Check every operation between source and output has a rule; precompute coefficients."""
    if tape.output is None or tape.source < 0:
        raise Unsupported("the output is not computed from the input by recorded operations")
    if tape.unsupported:
        raise Unsupported(tape.unsupported)
    needed = needed_entries(tape)
    prepared = Prepared(tape, dtype, needed)
    users = tape.users()
    for i, entry in enumerate(tape.entries):
        if needed[i] and i != tape.source:
            _prepare_entry(prepared, i, entry, users)
    _group_siblings(prepared)
    return prepared


def _group_siblings(prep: Prepared) -> None:
    """Convolutions reading the same tensor with the same geometry (a residual block's first
    convolution and its projection shortcut) share one backward call: their cotangents are
    stacked along channels and pushed through the stacked weights, a larger and more efficient
    ``conv_transpose2d`` that also saves adding the two results."""
    groups: dict[tuple, list[int]] = {}
    for i, entry in enumerate(prep.tape.entries):
        if not prep.needed[i] or entry.func is not aten.convolution.default or entry.args[6]:
            continue
        if int(entry.args[8]) != 1:
            continue
        weight = prep.consts[i]
        key = (
            entry.args[0],
            tuple(entry.args[3]),
            tuple(entry.args[4]),
            tuple(entry.args[5]),
            tuple(weight.shape[1:]),
        )
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) > 1:
            leader = members[0]
            prep.members[leader] = members
            for member in members:
                prep.leader[member] = leader
            prep.consts[("stacked", leader)] = torch.cat([prep.consts[m] for m in members])


def _prepare_entry(prep: Prepared, i: int, entry: Entry, users: list[list[int]]) -> None:
    func, dtype = entry.func, prep.dtype
    if not entry.grad_enabled:
        raise Unsupported(f"{entry.name} runs under torch.no_grad() inside the model")
    if func is aten.detach.default:
        raise Unsupported("the model detaches a tensor on the path to its output")
    value = entry.value[0] if isinstance(entry.value, (tuple, list)) else entry.value
    if not _is_4d(value) and func not in IDENTITY:
        raise Unsupported(f"{entry.name} produces a {tuple(value.shape)} tensor (not 1xCxHxW)")
    for ref in refs_in(entry):
        if prep.needed[ref.node] and not _is_4d(prep.tape.value(ref)):
            raise Unsupported(f"{entry.name} reads a tensor that is not 1xCxHxW")
    if func is aten.convolution.default:
        weight = entry.args[1]
        if prep.is_active(weight) or len(entry.args[3]) != 2:
            raise Unsupported("only 2-D convolutions with constant weights are supported")
        prep.consts[i] = weight.detach().to(dtype)
    elif func in BATCH_NORM:
        training = func in TRAINING_FLAG and bool(entry.args[TRAINING_FLAG[func]])
        if training or any(prep.is_active(a) for a in entry.args[1:5]):
            raise Unsupported("BatchNorm in training mode")
        _prepare_batch_norm(prep, i, entry, users)
    elif func is aten.relu.default:
        prep.consts[i] = _channels_last((entry.value > 0).to(dtype))
    elif func in POINTWISE:
        prep.consts[i] = _channels_last(_pointwise_derivative(prep.tape, entry).to(dtype))
    elif func in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor):
        _prepare_binary(prep, i, entry)
    elif func in SCALAR:
        pass
    elif func is aten.constant_pad_nd.default:
        if len(entry.args[1]) > 4:
            raise Unsupported("padding of dimensions other than height and width")
    elif func is aten.slice.Tensor:
        dim = int(arg_of(entry, 1, "dim", 0)) % 4
        step = int(arg_of(entry, 4, "step", 1))
        if dim == 0 or step != 1:
            raise Unsupported("slicing the batch dimension or with a step")
    elif func is aten.cat.default:
        if int(arg_of(entry, 1, "dim", 0)) % 4 != 1:
            raise Unsupported("concatenation along a dimension other than channels")
    elif func is aten.max_pool2d_with_indices.default or func in LINEAR_PER_SAMPLE:
        pass
    elif func in IDENTITY:
        source = entry.args[0]
        if not isinstance(source, Ref) or prep.tape.value(source).shape != value.shape:
            raise Unsupported(f"{entry.name} changes the shape")
    else:
        raise Unsupported(f"no linearised rule for {entry.name}")


def _prepare_batch_norm(prep: Prepared, i: int, entry: Entry, users: list[list[int]]) -> None:
    weight, var = entry.args[1], entry.args[4]
    eps = float(entry.args[-1])
    scale = torch.rsqrt(var.double() + eps)
    if weight is not None:
        scale = scale * weight.double()
    source = entry.args[0]
    producer = prep.tape.entries[source.node]
    foldable = (
        producer.func is aten.convolution.default
        and len(users[source.node]) == 1
        and source.node in prep.consts
        and (not producer.args[6] or int(producer.args[8]) == 1)
    )
    if foldable:
        base = producer.args[1].detach().double()
        shape = (1, -1, 1, 1) if producer.args[6] else (-1, 1, 1, 1)
        prep.consts[source.node] = (base * scale.reshape(shape)).to(prep.dtype)
        prep.skip.add(i)
    else:
        prep.consts[i] = scale.reshape(1, -1, 1, 1).to(prep.dtype)


def _prepare_binary(prep: Prepared, i: int, entry: Entry) -> None:
    a, b = entry.args[0], entry.args[1]
    out_shape = entry.value.shape
    for ref in (a, b):
        if prep.is_active(ref) and prep.tape.value(ref).shape != out_shape:
            raise Unsupported(f"{entry.name} broadcasts an input-dependent tensor")
    if entry.func is aten.div.Tensor and prep.is_active(b):
        raise Unsupported("division by an input-dependent tensor")
    factors = []
    for ref in (b, a) if entry.func is aten.mul.Tensor else (b,):
        value = prep.tape.value(ref) if isinstance(ref, Ref) else ref
        if isinstance(value, torch.Tensor):
            if value.dim() < 4 and value.numel() > 1:  # (H, W), (C, 1, 1), ...: as 4-D
                value = value.reshape((1,) * (4 - value.dim()) + tuple(value.shape))
            if value.dim() != 4 and value.numel() > 1:
                raise Unsupported(f"{entry.name} with a factor of {value.dim()} dimensions")
            if value.dim() == 4 and spatial(value) not in ((1, 1), spatial(entry.value)):
                raise Unsupported(f"{entry.name} with an unusual broadcast")
            value = value.detach().to(prep.dtype)
        factors.append(value)
    prep.consts[i] = factors


def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def _pointwise_derivative(tape: Tape, entry: Entry) -> torch.Tensor:
    """Diagonal of an element-wise op's Jacobian: its VJP with a cotangent of ones."""
    x = tape.value(entry.args[0])
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        y = entry.func(leaf, *entry.args[1:], **entry.kwargs)
        (derivative,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
    return derivative
