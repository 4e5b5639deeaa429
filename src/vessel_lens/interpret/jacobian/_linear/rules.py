"""Windowed vector-Jacobian products of single ATen operations, for a batch of cotangents.

Each rule takes the cotangent of an operation's output (a :class:`~._window.Window`) and
returns the cotangents of its recorded inputs. Rules return windows they own (fresh memory)
where they can, so that accumulation and masking work in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vessel_lens.interpret._graph import ops
from vessel_lens.interpret._graph.tape import Entry, Ref
from vessel_lens.interpret.jacobian._linear.constants import derived
from vessel_lens.interpret.jacobian._linear.prepare import (
    BATCH_NORM,
    IDENTITY,
    LINEAR_PER_SAMPLE,
    POINTWISE,
    Prepared,
    arg_of,
    spatial,
)
from vessel_lens.interpret.jacobian._linear.rules_norm import (
    broadcast_sum,
    layer_norm_rule,
    reduction_rule,
    softmax_rule,
    statistics_rule,
)
from vessel_lens.interpret.jacobian._linear.rules_resample import (
    max_pool_rule,
    separable_rule,
    strided_slice,
)
from vessel_lens.interpret.jacobian._linear.window import (
    FEW_CHANNELS,
    SMALL_MAP,
    Window,
    conv_input_grad,
    conv_transpose_input_grad,
    shift,
    tap_matrix,
    zeros,
)

aten = torch.ops.aten
CHANNELS_LAST = torch.channels_last


Rule = Callable[[Prepared, int, Entry, Window], list[tuple[Ref, Window | None]]]


def rule_key(prep: Prepared, i: int, entry: Entry) -> object:
    func = entry.func
    if func in POINTWISE and func is not aten.relu.default:
        return "pointwise"
    if func in LINEAR_PER_SAMPLE:
        return "linear_per_sample"
    if func in IDENTITY or func in ops.VIEWS:
        return "identity"
    if func in BATCH_NORM:
        return "statistics" if ops.batch_norm_uses_input_statistics(entry) else "batch_norm"
    if func is ops.AVG_POOL or func in ops.RESAMPLING or func in ops.INDEX_PADS:
        return "separable" if i in prep.consts else "linear_per_sample"
    if func in ops.SOFTMAX:
        return "softmax"
    if func in ops.REDUCTIONS:
        return "reduction"
    return func


def _box(window: Window) -> tuple[int, int, int, int]:
    return window.top, window.left, window.height, window.width


def _convolution(prep: Prepared, i: int, entry: Entry, grad: Window, stacked: bool = False):
    source = entry.args[0]
    in_size = spatial(prep.tape.value(source))
    stride, padding, dilation = entry.args[3], entry.args[4], entry.args[5]
    transposed, groups = bool(entry.args[6]), int(entry.args[8])
    key = ("stacked", i) if stacked else i
    weight = prep.consts[key]
    if transposed:
        part = conv_transpose_input_grad(
            grad, weight, in_size, stride, padding, dilation, groups, prep.dry
        )
        return [(source, part)]
    matrix = None
    if groups == 1 and (grad.height * grad.width <= SMALL_MAP or weight.shape[1] <= FEW_CHANNELS):
        if ("taps", key) not in prep.consts:
            prep.consts[("taps", key)] = derived("taps", (weight,), lambda: tap_matrix(weight))
        matrix = prep.consts[("taps", key)]
    part = conv_input_grad(
        grad, weight, in_size, stride, padding, dilation, groups, matrix, prep.dry
    )
    return [(source, part)]


def _scale(prep: Prepared, i: int, entry: Entry, grad: Window):
    if i in prep.skip:
        return [(entry.args[0], grad)]
    return [(entry.args[0], grad.scaled(prep.consts[i]))]


def _masked(prep: Prepared, i: int, entry: Entry, grad: Window):
    return [(entry.args[0], grad.scaled(grad.crop(prep.consts[i])))]


def _factor(value: object, grad: Window) -> object:
    if isinstance(value, torch.Tensor) and value.dim() == 4 and spatial(value) != (1, 1):
        return grad.crop(value)
    return value


def _binary(prep: Prepared, i: int, entry: Entry, grad: Window):
    a, b = entry.args[0], entry.args[1]
    alpha = entry.kwargs.get("alpha", 1)
    factors = prep.consts[i]
    func, data = entry.func, grad.data
    broadcast = prep.consts.get(("broadcast", i), {})
    if func is aten.mul.Tensor:
        parts = [(a, data * _factor(factors[0], grad)), (b, data * _factor(factors[1], grad))]
    elif func is aten.div.Tensor:
        parts = [(a, data / _factor(factors[0], grad))]
    else:
        sign = -1 if func is aten.sub.Tensor else 1
        active = [ref for ref in (a, b) if prep.is_active(ref)]
        if len(active) == 1 and (active[0] is a or sign * alpha == 1) and not broadcast:
            return [(active[0], grad)]
        parts = [(a, data), (b, data if sign * alpha == 1 else data * (sign * alpha))]
        if not broadcast:
            return [
                (ref, Window(d, grad.top, grad.left)) for ref, d in parts if prep.is_active(ref)
            ]
    result = []
    for position, (ref, d) in enumerate(parts):
        if not prep.is_active(ref):
            continue
        if position in broadcast:
            result.append((ref, broadcast_sum(d, broadcast[position], grad)))
        else:
            result.append((ref, Window(d, grad.top, grad.left, True)))
    return result


def _scalar(prep: Prepared, i: int, entry: Entry, grad: Window):
    if entry.func is aten.neg.default:
        data = -grad.data
    elif entry.func is aten.mul.Scalar:
        data = grad.data * entry.args[1]
    elif entry.func is aten.div.Scalar:
        data = grad.data / entry.args[1]
    else:
        return [(entry.args[0], grad)]
    return [(entry.args[0], Window(data, grad.top, grad.left, True))]


def _identity(prep: Prepared, i: int, entry: Entry, grad: Window):
    return [(entry.args[0], grad)]


def _pad(prep: Prepared, i: int, entry: Entry, grad: Window):
    pad = list(entry.args[1]) + [0] * (4 - len(entry.args[1]))
    height, width = spatial(prep.tape.value(entry.args[0]))
    return [(entry.args[0], shift(grad, -pad[2], -pad[0], height, width))]


def _slice(prep: Prepared, i: int, entry: Entry, grad: Window):
    source = entry.args[0]
    shape = prep.tape.value(source).shape
    dim = int(arg_of(entry, 1, "dim", 0)) % 4
    step = int(arg_of(entry, 4, "step", 1))
    start = arg_of(entry, 2, "start", 0) or 0
    start = max(0, start + shape[dim]) if start < 0 else min(start, shape[dim])
    if dim in (2, 3) and step != 1:
        return [(source, strided_slice(grad, dim, start, step))]
    if dim == 2:
        return [(source, shift(grad, start, 0, shape[2], shape[3]))]
    if dim == 3:
        return [(source, shift(grad, 0, start, shape[2], shape[3]))]
    full = zeros(grad.data, (grad.data.shape[0], shape[1], grad.height, grad.width))
    count = grad.data.shape[1]
    full[:, start : start + (count - 1) * step + 1 : step] = grad.data
    return [(source, Window(full, grad.top, grad.left, True))]


def _cat(prep: Prepared, i: int, entry: Entry, grad: Window):
    dim = int(arg_of(entry, 1, "dim", 0)) % 4
    parts, offset = [], 0
    for ref in entry.args[0]:
        value = prep.tape.value(ref) if isinstance(ref, Ref) else ref
        length = int(value.shape[dim])
        if isinstance(ref, Ref):
            if dim == 1:
                part = Window(grad.data[:, offset : offset + length], grad.top, grad.left)
            elif dim == 2:
                part = shift(grad, -offset, 0, length, int(value.shape[3]))
            else:
                part = shift(grad, 0, -offset, int(value.shape[2]), length)
            parts.append((ref, part))
        offset += length
    return parts


def _linear_per_sample(prep: Prepared, i: int, entry: Entry, grad: Window):
    source = entry.args[0]
    x = prep.tape.value(source)
    out = entry.value
    n = grad.data.shape[0]
    with torch.enable_grad():
        leaf = grad.data.new_zeros((n, *x.shape[1:])).requires_grad_(True)
        y = entry.func(leaf, *entry.args[1:], **entry.kwargs)
        (result,) = torch.autograd.grad(y, leaf, grad.dense(*spatial(out)))
    return [(source, Window(result, 0, 0, True))]


def _pointwise(prep: Prepared, i: int, entry: Entry, grad: Window):
    return _masked(prep, i, entry, grad)


RULES: dict[object, Rule] = {
    aten.convolution.default: _convolution,
    "batch_norm": _scale,
    aten.relu.default: _masked,
    "pointwise": _pointwise,
    aten.add.Tensor: _binary,
    aten.sub.Tensor: _binary,
    aten.mul.Tensor: _binary,
    aten.div.Tensor: _binary,
    aten.mul.Scalar: _scalar,
    aten.div.Scalar: _scalar,
    aten.neg.default: _scalar,
    aten.add.Scalar: _scalar,
    aten.sub.Scalar: _scalar,
    "identity": _identity,
    aten.constant_pad_nd.default: _pad,
    aten.slice.Tensor: _slice,
    aten.cat.default: _cat,
    aten.max_pool2d_with_indices.default: max_pool_rule,
    ops.ADAPTIVE_MAX_POOL: max_pool_rule,
    "linear_per_sample": _linear_per_sample,
    "separable": separable_rule,
    "statistics": statistics_rule,
    ops.GROUP_NORM: statistics_rule,
    ops.LAYER_NORM: layer_norm_rule,
    "softmax": softmax_rule,
    "reduction": reduction_rule,
}


def siblings(prep: Prepared, leader: int, grads: dict[int, Window]):
    members = prep.members[leader]
    entry = prep.tape.entries[leader]
    if len(grads) < len(members):
        parts = []
        for member, grad in sorted(grads.items()):
            parts += _convolution(prep, member, prep.tape.entries[member], grad)
        return parts
    windows = [grads[m] for m in members]
    top, left = min(w.top for w in windows), min(w.left for w in windows)
    bottom = max(w.top + w.height for w in windows)
    right = max(w.left + w.width for w in windows)
    first = windows[0].data
    channels = sum(int(w.data.shape[1]) for w in windows)
    shape = (int(first.shape[0]), channels, bottom - top, right - left)
    covered = all(_box(w) == (top, left, bottom - top, right - left) for w in windows)
    # one buffer for the stacked cotangent: each window is copied once, straight into place
    data = (
        torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=CHANNELS_LAST)
        if covered
        else zeros(first, shape)
    )
    offset = 0
    for w in windows:
        count = int(w.data.shape[1])
        r, c = w.top - top, w.left - left
        data[:, offset : offset + count, r : r + w.height, c : c + w.width].copy_(w.data)
        offset += count
    stacked = Window(data, top, left, True)
    return _convolution(prep, leader, entry, stacked, stacked=True)
