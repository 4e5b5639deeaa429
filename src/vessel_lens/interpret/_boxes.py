"""Structural receptive fields: for every output pixel at once, the rectangle of each recorded
tensor that its gradient can reach, propagated backwards through the tape.

A box is a row (top, bottom, left, right), half-open; an empty box has top >= bottom.
"""

from __future__ import annotations

import torch

from vessel_lens.errors import ConfigError
from vessel_lens.interpret._tape import Ref, Tape, needed_entries, refs_in

aten = torch.ops.aten
EMPTY = 1 << 40
_SAME_BOX = {
    aten.relu.default,
    aten.native_batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.cudnn_batch_norm.default,
    aten.miopen_batch_norm.default,
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.mul.Tensor,
    aten.div.Tensor,
    aten.add.Scalar,
    aten.sub.Scalar,
    aten.mul.Scalar,
    aten.div.Scalar,
    aten.neg.default,
    aten.alias.default,
    aten.detach.default,
    aten.clone.default,
    aten.contiguous.default,
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


def _axis_conv(lo, hi, s, p, d, k, transposed):
    if transposed:
        new_lo = torch.div(lo + p - d * (k - 1) + s - 1, s, rounding_mode="floor")
        new_hi = torch.div(hi - 1 + p, s, rounding_mode="floor") + 1
    else:
        new_lo, new_hi = lo * s - p, (hi - 1) * s - p + d * (k - 1) + 1
    return new_lo, new_hi


def _pair(value, default):
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    if isinstance(value, int):
        return value, value
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _window_rule(entry, box):
    """Rectangle read by a sliding-window op (convolution or pooling): (kernel, stride, ...)."""
    func = entry.func
    if func is aten.convolution.default:
        kernel = tuple(entry.args[1].shape[-2:])
        stride, padding, dilation = entry.args[3], entry.args[4], entry.args[5]
        transposed = bool(entry.args[6])
    else:
        args = list(entry.args) + [None] * 6
        kernel = _pair(args[1], 1)
        stride = _pair(args[2], kernel)
        padding = _pair(args[3], 0)
        dilation = _pair(args[4], 1) if func is aten.max_pool2d_with_indices.default else (1, 1)
        transposed = False
    out = box.clone()
    for axis in (0, 1):
        lo, hi = box[:, 2 * axis], box[:, 2 * axis + 1]
        new = _axis_conv(
            lo,
            hi,
            stride[axis],
            padding[axis],
            dilation[axis],
            kernel[axis],
            transposed,
        )
        out[:, 2 * axis], out[:, 2 * axis + 1] = new
    return out


def _resize_rule(box, in_size, out_size, margin):
    out = box.clone()
    for axis in (0, 1):
        ratio_num, ratio_den = in_size[axis], out_size[axis]
        lo, hi = box[:, 2 * axis], box[:, 2 * axis + 1]
        out[:, 2 * axis] = torch.div(lo * ratio_num, ratio_den, rounding_mode="floor") - margin
        out[:, 2 * axis + 1] = (
            -torch.div(-hi * ratio_num, ratio_den, rounding_mode="floor") + margin
        )
    return out


def _clip(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    box = box.clone()
    box[:, 0::2] = box[:, 0::2].clamp(min=0)
    box[:, 1] = box[:, 1].clamp(max=size[0])
    box[:, 3] = box[:, 3].clamp(max=size[1])
    empty = (box[:, 0] >= box[:, 1]) | (box[:, 2] >= box[:, 3])
    box[empty] = torch.tensor([EMPTY, -EMPTY, EMPTY, -EMPTY])
    return box


def _input_boxes(
    tape: Tape, entry, box: torch.Tensor
) -> tuple[list[tuple[Ref, torch.Tensor]], bool]:
    """Boxes on each recorded tensor input; ``False`` when the rule was a whole-map fallback."""
    out_value = entry.value[0] if isinstance(entry.value, (tuple, list)) else entry.value
    out_size = tuple(out_value.shape[-2:])
    func, parts, tight = entry.func, [], True
    inputs = [r for r in refs_in(entry)]
    for ref in inputs:
        value = tape.value(ref)
        in_size = tuple(value.shape[-2:])
        if value.dim() != 4 or out_value.dim() != 4:
            new, tight = None, False
        elif (func is aten.convolution.default and ref is entry.args[0]) or func in (
            aten.max_pool2d_with_indices.default,
            aten.avg_pool2d.default,
        ):
            new = _window_rule(entry, box)
        elif func is aten.constant_pad_nd.default:
            pad = list(entry.args[1]) + [0] * 4
            new = box - torch.tensor([pad[2], pad[2], pad[0], pad[0]])
        elif (
            func is aten.slice.Tensor
            and int(entry.args[1]) % 4 in (2, 3)
            and (len(entry.args) < 5 or int(entry.args[4]) == 1)
        ):
            dim = int(entry.args[1]) % 4
            start = entry.args[2] if len(entry.args) > 2 and entry.args[2] is not None else 0
            start = start + value.shape[dim] if start < 0 else start
            shift = torch.tensor([start, start, 0, 0] if dim == 2 else [0, 0, start, start])
            new = box + shift
        elif func is aten._adaptive_avg_pool2d.default:
            new = _resize_rule(box, in_size, out_size, 0)
        elif func in (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default):
            new, tight = _resize_rule(box, in_size, out_size, 1), False
        elif func in (aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default):
            new, tight = _resize_rule(box, in_size, out_size, 2), False
        elif (
            func in _SAME_BOX or func in (aten.slice.Tensor, aten.cat.default)
        ) and in_size == out_size:
            new = box
        else:
            new, tight = None, False
        if new is None:
            new = torch.tensor([[0, in_size[0], 0, in_size[1]]]).expand_as(box)
        parts.append((ref, _clip(new, in_size)))
    return parts, tight


def _union(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    if old is None:
        return new
    return torch.stack(
        [
            torch.minimum(old[:, 0], new[:, 0]),
            torch.maximum(old[:, 1], new[:, 1]),
            torch.minimum(old[:, 2], new[:, 2]),
            torch.maximum(old[:, 3], new[:, 3]),
        ],
        1,
    )


def structural_boxes(tape: Tape) -> tuple[torch.Tensor, bool]:
    """Per output pixel (row-major), the half-open input box (top, bottom, left, right)."""
    needed = needed_entries(tape)
    output = tape.value(tape.output)
    height, width = (int(s) for s in output.shape[-2:])
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    boxes = {tape.output: torch.stack([rows, rows + 1, cols, cols + 1], 1)}
    tight, result = True, None
    for i in range(len(tape.entries) - 1, -1, -1):
        if not needed[i]:
            continue
        entry = tape.entries[i]
        key = Ref(i, 0) if isinstance(entry.value, (tuple, list)) else Ref(i)
        box = boxes.pop(key, None)
        if box is None:
            continue
        if i == tape.source:
            result = box
            continue
        parts, exact = _input_boxes(tape, entry, box)
        tight = tight and exact
        for ref, part in parts:
            if needed[ref.node]:
                boxes[ref] = _union(boxes.get(ref), part)
    if result is None:
        raise ConfigError("the model output does not depend on its input")
    return result, tight
