"""Structural receptive fields: for every output pixel at once, the rectangle of each recorded
tensor that its gradient can reach, propagated backwards through the tape.

A box is a row (top, bottom, left, right), half-open over a tensor's two spatial dimensions;
an empty box has top >= bottom. Which dimensions are spatial is followed forward through the
tape (:func:`layouts`): the input's last two, moved by permutes and kept by reshapes that leave
them alone, so a LayerNorm over channels written as permute → layer_norm → permute keeps its
pixel-wise rule.

Every rule is *sound*: gradients outside the box are exactly zero for any weights and any
input. A rule is *exact* when the box is also attained (no weights and input make it smaller
in general); operations that mix positions (normalisation with the input's own statistics,
reductions and softmax over space, global pooling) have exact whole-map rules. An operation
without a rule, or one that runs without gradient tracking (a custom ``autograd.Function``, a
``torch.no_grad`` block), widens the box to the whole map and makes the field non-tight; the
reasons are collected for the caller to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vessel_lens.errors import ConfigError
from vessel_lens.interpret._graph import ops
from vessel_lens.interpret._graph.axes import (
    EMPTY,
    AxisMap,
    NotSeparable,
    affine_map,
    routing_maps,
    separable_maps,
    shrink_map,
)
from vessel_lens.interpret._graph.tape import Entry, Ref, Tape, needed_entries, refs_in

__all__ = ["EMPTY", "StructuralBoxes", "layouts", "structural_boxes"]

Layout = tuple[int, int] | None
"""The dimensions holding height and width of a tensor, or None when they are lost."""

STRUCTURAL_ELEMENTWISE = frozenset(
    {
        ops.aten._to_copy.default,
        ops.aten.maximum.default,
        ops.aten.minimum.default,
        ops.aten.exp.default,
        ops.aten.log.default,
        ops.aten.sqrt.default,
        ops.aten.rsqrt.default,
        ops.aten.abs.default,
        ops.aten.reciprocal.default,
        ops.aten.pow.Tensor_Scalar,
        ops.aten.masked_fill.Scalar,
        ops.aten.where.self,
    }
)
"""Element-wise operations known to the structural field only (``linear`` has no rule)."""

ELEMENTWISE = ops.ACTIVATIONS | ops.BINARY | ops.SCALAR | ops.IDENTITY | STRUCTURAL_ELEMENTWISE
SAME_LAYOUT = (
    ELEMENTWISE
    | set(ops.BATCH_NORM_TRAINING_FLAG)
    | ops.SOFTMAX
    | {ops.GROUP_NORM, ops.LAYER_NORM, ops.SLICE, ops.CAT}
)
NCHW_ONLY = (
    {ops.CONVOLUTION, ops.MAX_POOL, ops.AVG_POOL, ops.ADAPTIVE_MAX_POOL}
    | ops.RESAMPLING
    | ops.INDEX_PADS
    | ops.SHUFFLES
)
NO_GRADIENT = "runs without gradient tracking (torch.no_grad or a custom autograd.Function)"


@dataclass
class StructuralBoxes:
    """Per output pixel (row-major), the half-open input box; ``tight``: every rule on the way
    was exact; ``reasons``: what forced whole-map bounds otherwise."""

    boxes: torch.Tensor
    tight: bool
    reasons: list[str] = field(default_factory=list)


def _value(entry: Entry) -> torch.Tensor:
    return entry.value[0] if isinstance(entry.value, (tuple, list)) else entry.value


def _dims(value: object) -> int:
    return value.dim() if isinstance(value, torch.Tensor) else 0


def _last_two(value: torch.Tensor) -> Layout:
    return (value.dim() - 2, value.dim() - 1) if value.dim() >= 2 else None


def _reshaped(source: torch.Tensor, layout: Layout, out: torch.Tensor) -> Layout:
    """A reshape keeps each element's (h, w) when the sizes from the height dimension on are
    unchanged (row-major order)."""
    if layout is None:
        return None
    suffix = tuple(source.shape[layout[0] :])
    if len(suffix) > out.dim() or tuple(out.shape[out.dim() - len(suffix) :]) != suffix:
        return None
    shift = out.dim() - source.dim()
    return layout[0] + shift, layout[1] + shift


def _output_layout(tape: Tape, entry: Entry, known: dict[Ref, Layout]) -> Layout:
    out = _value(entry)
    if not isinstance(out, torch.Tensor):
        return None
    func = entry.func
    first = entry.args[0] if entry.args else None
    source = tape.value(first) if isinstance(first, Ref) else None
    layout = known.get(first) if isinstance(first, Ref) else None
    if func in NCHW_ONLY:
        return (2, 3) if layout == (2, 3) and out.dim() == 4 else None
    if func is ops.CONSTANT_PAD:
        return layout if layout is not None and layout == _last_two(source) else None
    if func is ops.aten.permute.default:
        if layout is None:
            return None
        dims = [int(d) % source.dim() for d in entry.args[1]]
        return dims.index(layout[0]), dims.index(layout[1])
    if func is ops.aten.transpose.int:
        if layout is None:
            return None
        a, b = (int(d) % source.dim() for d in entry.args[1:3])
        swap = {a: b, b: a}
        return swap.get(layout[0], layout[0]), swap.get(layout[1], layout[1])
    if func in ops.VIEWS:
        return _reshaped(source, layout, out)
    if func in ops.REDUCTIONS:
        return _reduced_layout(entry, source, layout)
    if func is ops.CAT:
        parts = [known[r] for r in entry.args[0] if isinstance(r, Ref) and r in known]
        return parts[0] if parts and all(p == parts[0] for p in parts) else None
    if func in SAME_LAYOUT:
        candidates = set()
        for ref in entry.args[:3] if func in ELEMENTWISE else entry.args[:1]:
            if isinstance(ref, Ref) and known.get(ref) is not None:
                value = tape.value(ref)
                shift = out.dim() - value.dim()
                candidates.add((known[ref][0] + shift, known[ref][1] + shift))
        return candidates.pop() if len(candidates) == 1 else None
    return None


def _reduced_dims(entry: Entry, source: torch.Tensor) -> set[int]:
    dims = ops.arg_of(entry, 1, "dim", None)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return set(range(source.dim()))
    dims = [dims] if isinstance(dims, int) else dims
    return {int(d) % source.dim() for d in dims}


def _reduced_layout(entry: Entry, source: torch.Tensor, layout: Layout) -> Layout:
    if layout is None:
        return None
    dims = _reduced_dims(entry, source)
    if bool(ops.arg_of(entry, 2, "keepdim", False)):
        return layout
    if layout[0] in dims or layout[1] in dims:
        return None
    return tuple(d - sum(1 for r in dims if r < d) for d in layout)


def layouts(tape: Tape, needed: list[bool]) -> dict[Ref, Layout]:
    """The spatial dimensions of every needed tensor (first output of tuple-valued calls)."""
    known: dict[Ref, Layout] = {}
    source = tape.entries[tape.source]
    known[Ref(tape.source)] = _last_two(source.value) if _dims(source.value) >= 2 else None
    for i, entry in enumerate(tape.entries):
        if i == tape.source or not needed[i]:
            continue
        key = Ref(i, 0) if isinstance(entry.value, (tuple, list)) else Ref(i)
        known[key] = _output_layout(tape, entry, known)
    return known


def _spatial(value: torch.Tensor, layout: Layout) -> tuple[int, int]:
    if layout is None:
        return 1, 1
    return int(value.shape[layout[0]]), int(value.shape[layout[1]])


def _clip(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    box = box.clone()
    box[:, 0::2] = box[:, 0::2].clamp(min=0)
    box[:, 1] = box[:, 1].clamp(max=size[0])
    box[:, 3] = box[:, 3].clamp(max=size[1])
    empty = (box[:, 0] >= box[:, 1]) | (box[:, 2] >= box[:, 3])
    box[empty] = torch.tensor([EMPTY, -EMPTY, EMPTY, -EMPTY])
    return box


def _nonempty(box: torch.Tensor) -> torch.Tensor:
    return (box[:, 0] < box[:, 1]) & (box[:, 2] < box[:, 3])


def _whole(box: torch.Tensor, size: tuple[int, int], axes=(0, 1)) -> torch.Tensor:
    """``box`` widened to the whole of ``size`` along ``axes`` (empty boxes stay empty)."""
    out = box.clone()
    live = _nonempty(box)
    for axis in axes:
        out[:, 2 * axis] = torch.where(live, 0, EMPTY)
        out[:, 2 * axis + 1] = torch.where(live, size[axis], -EMPTY)
    return out


def _pair(value, default):
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    if isinstance(value, int):
        return value, value
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def window_geometry(entry: Entry):
    """(kernel, stride, padding, dilation, transposed) of a convolution or pooling call."""
    func = entry.func
    if func is ops.CONVOLUTION:
        weight = entry.args[1]
        kernel = tuple(int(k) for k in weight.shape[-2:])
        stride, padding = _pair(entry.args[3], 1), _pair(entry.args[4], 0)
        return kernel, stride, padding, _pair(entry.args[5], 1), bool(entry.args[6])
    args = list(entry.args) + [None] * 6
    kernel = _pair(args[1], 1)
    stride = _pair(args[2], kernel)
    padding = _pair(args[3], 0)
    dilation = _pair(args[4], 1) if func is ops.MAX_POOL else (1, 1)
    return kernel, stride, padding, dilation, False


def window_maps(entry: Entry, in_size, out_size) -> list[AxisMap]:
    """Per axis, exactly which input positions each output position of a convolution or
    pooling reads (dilated taps leave gaps, and at the borders only the taps inside the input
    count), as :class:`~.axes.AxisMap` s."""
    kernel, stride, padding, dilation, transposed = window_geometry(entry)
    maps = []
    for axis in (0, 1):
        s, p, d, k = stride[axis], padding[axis], dilation[axis], kernel[axis]
        o = torch.arange(out_size[axis])[:, None]
        taps = torch.arange(k)[None, :]
        if transposed:  # input i writes outputs i*s - p + j*d
            numerator = o + p - taps * d
            reads = torch.div(numerator, s, rounding_mode="floor")
            valid = (numerator % s == 0) & (reads >= 0) & (reads < in_size[axis])
        else:
            reads = o * s - p + taps * d
            valid = (reads >= 0) & (reads < in_size[axis])
        first = torch.where(valid, reads, EMPTY).amin(1)
        last = torch.where(valid, reads, -EMPTY).amax(1)
        maps.append(AxisMap(first, last, in_size[axis]))
    return maps


def _contiguous_reader(entry: Entry) -> bool:
    """A convolution or pooling that reads every input position between its first and last
    (dilation 1, stride at most the kernel): the set it reads from a box is the whole box."""
    if entry.func not in (ops.CONVOLUTION, ops.MAX_POOL, ops.AVG_POOL):
        return False
    kernel, stride, _, dilation, transposed = window_geometry(entry)
    return not transposed and all(dilation[a] == 1 and stride[a] <= kernel[a] for a in (0, 1))


def _straddles_reflection(entry: Entry, box: torch.Tensor, in_size) -> bool:
    """Whether some box crosses a reflection point of a reflection pad (where the map from
    output to input positions turns back)."""
    pad = list(ops.arg_of(entry, 1, "padding"))
    for axis, (before, after) in enumerate(((pad[2], pad[3]), (pad[0], pad[1]))):
        lo, hi = box[:, 2 * axis], box[:, 2 * axis + 1] - 1
        for point, width in ((before, before), (before + in_size[axis] - 1, after)):
            if width > 0 and bool(((lo < point) & (hi > point)).any()):
                return True
    return False


def _through_maps(box: torch.Tensor, maps) -> torch.Tensor:
    out = box.clone()
    for axis, axis_map in enumerate(maps):
        out[:, 2 * axis], out[:, 2 * axis + 1] = axis_map.read(
            box[:, 2 * axis], box[:, 2 * axis + 1]
        )
    return out


class _Propagator:
    """Backward propagation of boxes over one tape."""

    def __init__(self, tape: Tape):
        self.tape = tape
        self.needed = needed_entries(tape)
        self.layout = layouts(tape, self.needed)
        self.users = tape.users()
        self.tight = True
        self.reasons: list[str] = []
        self._maps: dict[int, object] = {}

    def _inexact(self, reason: str) -> None:
        self.tight = False
        if reason not in self.reasons:
            self.reasons.append(reason)

    def inputs(self, i: int, entry: Entry, box: torch.Tensor) -> list[tuple[Ref, torch.Tensor]]:
        """Boxes on each needed recorded input of entry ``i`` (output box ``box``)."""
        parts = []
        out_key = Ref(i, 0) if isinstance(entry.value, (tuple, list)) else Ref(i)
        out_layout = self.layout.get(out_key)
        out_value = _value(entry)
        out_size = _spatial(out_value, out_layout)
        for position, ref in _positional_refs(entry):
            if not self.needed[ref.node]:
                continue
            value = self.tape.value(ref)
            in_layout = self.layout.get(ref)
            in_size = _spatial(value, in_layout)
            new, reason = self._rule(entry, i, position, ref, value, in_layout, in_size, box,
                                     out_value, out_layout, out_size)  # fmt: skip
            if reason is not None and bool(_nonempty(box).any()):
                self._inexact(reason)
            parts.append((ref, _clip(new, in_size)))
        return parts

    def _rule(self, entry, i, position, ref, value, in_layout, in_size, box, out_value,
              out_layout, out_size):  # fmt: skip
        """(box on the input, None if exact or the reason the rule is not)."""
        func = entry.func
        fallback = _whole(box, in_size), str(func)
        if not entry.grad_enabled:
            return _whole(box, in_size), NO_GRADIENT
        if func is ops.aten.detach.default:
            return box, "detach (the gradient through it is zero)"
        if func is ops.GROUP_NORM and position == 0:
            return _whole(box, in_size), None
        if func in ops.REDUCTIONS or func in (ops.aten.mean.default, ops.aten.sum.default):
            return self._reduction(entry, value, in_layout, in_size, box, out_layout)
        if in_layout is None or out_layout is None:
            return fallback
        if func in ops.BATCH_NORM_TRAINING_FLAG:
            if position != 0:
                return fallback
            if ops.batch_norm_uses_input_statistics(entry):
                return _whole(box, in_size), None
            return self._same(box, in_size, out_size, fallback)
        if func is ops.LAYER_NORM:
            if position != 0:
                return fallback
            count = len(entry.args[1])
            normalised = set(range(value.dim() - count, value.dim()))
            axes = [a for a in (0, 1) if in_layout[a] in normalised]
            return _whole(box, in_size, axes), None
        if func in ops.SOFTMAX:
            dim = int(entry.args[1]) % value.dim()
            axes = [a for a in (0, 1) if in_layout[a] == dim]
            return _whole(box, in_size, axes), None
        if func in ELEMENTWISE or func in ops.VIEWS:
            if func is ops.aten.where.self and position == 0:
                return _empty_like(box), None  # the condition carries no gradient
            return self._same(box, in_size, out_size, fallback)
        if func is ops.CONVOLUTION or func in (ops.MAX_POOL, ops.AVG_POOL):
            if position != 0 or (isinstance(entry.args[1], Ref) and func is ops.CONVOLUTION):
                return fallback
            if i not in self._maps:
                self._maps[i] = window_maps(entry, in_size, out_size)
            return _through_maps(box, self._maps[i]), None
        if func is ops.CONSTANT_PAD:
            pad = list(entry.args[1]) + [0] * 4
            return box - torch.tensor([pad[2], pad[2], pad[0], pad[0]]), None
        if func is ops.SLICE:
            return self._slice(entry, value, in_layout, in_size, box, out_size, fallback)
        if func is ops.CAT:
            return self._cat(entry, ref, value, in_layout, in_size, box, out_size, fallback)
        if func in ops.RESAMPLING or func in ops.INDEX_PADS:
            maps = self._axis_maps(i, entry, in_size, out_size)
            if isinstance(maps, str):
                return fallback[0], f"{func} ({maps})"
            reason = None
            reflection = func is ops.aten.reflection_pad2d.default
            if reflection and _straddles_reflection(entry, box, in_size):
                readers = [self.tape.entries[u] for u in self.users[i] if self.needed[u]]
                if len(readers) != 1 or not _contiguous_reader(readers[0]):
                    reason = "reflection padding read with gaps (dilation or stride)"
            return _through_maps(box, maps), reason
        if func is ops.ADAPTIVE_MAX_POOL:
            return _through_maps(box, routing_maps(entry, in_size, out_size)), None
        if func in ops.SHUFFLES:
            factor = int(entry.args[1])
            if func is ops.aten.pixel_shuffle.default:
                maps = [shrink_map(out_size[a], in_size[a], factor) for a in (0, 1)]
            else:
                maps = [affine_map(out_size[a], in_size[a], factor, 0, factor) for a in (0, 1)]
            return _through_maps(box, maps), None
        return fallback

    def _same(self, box, in_size, out_size, fallback):
        new = box.clone()
        for axis in (0, 1):
            if in_size[axis] == out_size[axis]:
                continue
            if in_size[axis] != 1:
                return fallback
            nonempty = box[:, 2 * axis] < box[:, 2 * axis + 1]  # broadcast from one position
            new[:, 2 * axis] = torch.where(nonempty, 0, EMPTY)
            new[:, 2 * axis + 1] = torch.where(nonempty, 1, -EMPTY)
        return new, None

    def _reduction(self, entry, value, in_layout, in_size, box, out_layout):
        if in_layout is None:
            return _whole(box, in_size), str(entry.func)
        dims = (
            _reduced_dims(entry, value) if entry.func in ops.REDUCTIONS else set(range(value.dim()))
        )
        axes = [a for a in (0, 1) if in_layout[a] in dims]
        if out_layout is None:
            kept = [a for a in (0, 1) if a not in axes]
            if kept:  # one spatial axis was dropped: the other's position is lost
                return _whole(_live(box), in_size), f"{entry.func} over one spatial axis"
            return _whole(_live(box), in_size), None
        return _whole(box, in_size, axes), None

    def _slice(self, entry, value, in_layout, in_size, box, out_size, fallback):
        dim = int(ops.arg_of(entry, 1, "dim", 0)) % value.dim()
        step = int(ops.arg_of(entry, 4, "step", 1))
        if dim not in in_layout:
            return self._same(box, in_size, out_size, fallback)
        axis = in_layout.index(dim)
        start = ops.arg_of(entry, 2, "start", 0)
        start = 0 if start is None else int(start)
        length = in_size[axis]
        start = max(0, start + length) if start < 0 else min(start, length)
        axis_map = affine_map(out_size[axis], length, step, start, 1)
        new = box.clone()
        new[:, 2 * axis], new[:, 2 * axis + 1] = axis_map.read(
            box[:, 2 * axis], box[:, 2 * axis + 1]
        )
        return new, None

    def _cat(self, entry, ref, value, in_layout, in_size, box, out_size, fallback):
        dim = int(ops.arg_of(entry, 1, "dim", 0)) % value.dim()
        if dim not in in_layout:
            return self._same(box, in_size, out_size, fallback)
        axis = in_layout.index(dim)
        offset = 0
        for part in entry.args[0]:
            if part is ref:
                break
            offset += int((self.tape.value(part) if isinstance(part, Ref) else part).shape[dim])
        shift = torch.zeros(4, dtype=torch.long)
        shift[2 * axis : 2 * axis + 2] = offset
        return box - shift, None

    def _axis_maps(self, i, entry, in_size, out_size):
        if i not in self._maps:
            try:
                self._maps[i] = separable_maps(entry, in_size, out_size)
            except NotSeparable as exc:
                self._maps[i] = str(exc)
        return self._maps[i]


def _empty_like(box: torch.Tensor) -> torch.Tensor:
    return torch.tensor([EMPTY, -EMPTY, EMPTY, -EMPTY]).expand_as(box).clone()


def _live(box: torch.Tensor) -> torch.Tensor:
    """A 1x1 box for every pixel whose box is non-empty (what reaches a tensor that lost its
    spatial dimensions)."""
    nonempty = _nonempty(box)
    out = _empty_like(box)
    out[nonempty] = torch.tensor([0, 1, 0, 1])
    return out


def _positional_refs(entry: Entry) -> list[tuple[int, Ref]]:
    """(argument position, recorded tensor) for every recorded tensor an entry read; the
    tensors of a list argument (``cat``'s) share that argument's position, keyword arguments
    have position -1."""
    pairs = []
    for position, arg in enumerate(entry.args):
        items = arg if isinstance(arg, (list, tuple)) else (arg,)
        pairs.extend((position, item) for item in items if isinstance(item, Ref))
    pairs.extend((-1, ref) for ref in refs_in(Entry(None, (), entry.kwargs, None)))
    return pairs


def structural_boxes(tape: Tape) -> StructuralBoxes:
    """Per output pixel (row-major), the half-open input box (top, bottom, left, right)."""
    output = tape.value(tape.output)
    height, width = (int(s) for s in output.shape[-2:])
    source = tape.entries[tape.source].value
    source_size = tuple(int(s) for s in source.shape[-2:])
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    pixel_boxes = torch.stack([rows, rows + 1, cols, cols + 1], 1)
    if tape.unsupported:
        whole = _whole(pixel_boxes, source_size)
        return StructuralBoxes(whole, False, [tape.unsupported])
    walk = _Propagator(tape)
    boxes = {tape.output: pixel_boxes}
    result = None
    for i in range(len(tape.entries) - 1, -1, -1):
        if not walk.needed[i]:
            continue
        entry = tape.entries[i]
        key = Ref(i, 0) if isinstance(entry.value, (tuple, list)) else Ref(i)
        box = boxes.pop(key, None)
        if box is None:
            continue
        if i == tape.source:
            result = box
            continue
        for ref, part in walk.inputs(i, entry, box):
            boxes[ref] = _union(boxes.get(ref), part)
    if result is None:
        raise ConfigError("the model output does not depend on its input")
    return StructuralBoxes(result, walk.tight, walk.reasons)


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
