"""Linear-strategy rules for operations that mix positions or channels: normalisation with the
input's own statistics (BatchNorm without running statistics, InstanceNorm, GroupNorm),
LayerNorm, softmax and mean/sum reductions.

With a cotangent ĝ = g · weight, the input gradient of a normalisation over a set S of
dimensions is ``rstd · (ĝ - mean_S(ĝ) - x̂ · mean_S(ĝ · x̂))`` (x̂ the normalised input, means
over S, biased variance). When S contains a spatial dimension every position of the result is
non-zero, so the window becomes the whole map; a LayerNorm over channels alone keeps it.
"""

from __future__ import annotations

import torch

from vessel_lens.interpret._graph.tape import Entry
from vessel_lens.interpret.jacobian._linear.prepare import Prepared, spatial
from vessel_lens.interpret.jacobian._linear.window import Window

aten = torch.ops.aten


def _normalise_backward(g, normalised, rstd, weight, dims):
    g = g * weight
    mean_g = g.mean(dims, keepdim=True)
    mean_gx = (g * normalised).mean(dims, keepdim=True)
    return rstd * (g - mean_g - normalised * mean_gx)


def statistics_rule(prep: Prepared, i: int, entry: Entry, grad: Window):
    """BatchNorm without running statistics, InstanceNorm and GroupNorm (dense result).

    Per group, 1/σ is one number, so the two means only need sums over the window, and the
    dense part of the result is ``-(r·mean(ĝ)) - (r·mean(ĝ·x̂))·x̂``: one pass over the map,
    plus ``r·ĝ`` added inside the window. The affine weight is per channel, so it scales the
    sums instead of the cotangent (the result is memory-bound: each full-size pass counts)."""
    consts = prep.consts[i]
    source = entry.args[0]
    normalised, rstd, weight = consts["normalised"], consts["rstd"], consts["weight"]
    groups, count = consts["groups"], consts["count"]
    data = grad.data
    n, channels = data.shape[:2]
    inside = grad.crop(normalised)
    sums = torch.stack([data.sum((2, 3)), (data * inside).sum((2, 3))])  # (2, N, C)
    sums = sums * weight.reshape(1, 1, channels)
    sums = sums.reshape(2, n, groups, -1).sum(3, keepdim=True) / count
    sums = sums.expand(2, n, groups, channels // groups).reshape(2, n, channels, 1, 1)
    scale = rstd.reshape(1, channels, 1, 1)
    height, width = normalised.shape[-2:]
    result = torch.empty(
        (n, channels, height, width),
        dtype=data.dtype,
        device=data.device,
        memory_format=torch.channels_last,
    )
    torch.addcmul(-(scale * sums[0]), normalised, -(scale * sums[1]), out=result)
    grad.crop(result).addcmul_(data, (weight * scale).to(data.dtype))
    return [(source, Window(result, 0, 0, True))]


def layer_norm_rule(prep: Prepared, i: int, entry: Entry, grad: Window):
    consts = prep.consts[i]
    source = entry.args[0]
    dims = consts["dims"]
    normalised, rstd, weight = consts["normalised"], consts["rstd"], consts["weight"]
    if 2 not in dims and 3 not in dims:  # over channels: pixel by pixel, windowed
        w = grad.crop(weight) if spatial(weight) != (1, 1) else weight
        data = _normalise_backward(grad.data, grad.crop(normalised), grad.crop(rstd), w, dims)
        return [(source, Window(data, grad.top, grad.left, True))]
    height, width = spatial(normalised)
    result = _normalise_backward(grad.dense(height, width), normalised, rstd, weight, dims)
    return [(source, Window(result, 0, 0, True))]


def softmax_rule(prep: Prepared, i: int, entry: Entry, grad: Window):
    consts = prep.consts[i]
    dim, p = consts["dim"], consts["p"]
    source = entry.args[0]
    if dim == 1:
        probabilities, g, top, left = grad.crop(p), grad.data, grad.top, grad.left
    else:
        probabilities, g, top, left = p, grad.dense(*spatial(p)), 0, 0
    if entry.func is aten._softmax.default:
        data = probabilities * (g - (g * probabilities).sum(dim, keepdim=True))
    else:
        data = g - probabilities * g.sum(dim, keepdim=True)
    return [(source, Window(data, top, left, True))]


def reduction_rule(prep: Prepared, i: int, entry: Entry, grad: Window):
    """mean/sum/amax/amin with keepdim: the cotangent spread over the reduced dimensions
    (evenly, or to the extreme values)."""
    consts = prep.consts[i]
    source = entry.args[0]
    shape = prep.value(source).shape
    dims, scale = consts["dims"], consts["scale"]
    data = grad.data
    top, left = grad.top, grad.left
    target = list(data.shape)
    for d in dims:
        target[d] = int(shape[d])
        if d == 2:
            top = 0
        if d == 3:
            left = 0
    data = data.expand(target)
    if isinstance(scale, torch.Tensor):  # amax/amin: the share of each input in the extreme
        data = data * Window(data, top, left).crop(scale)
    else:
        data = data * scale
    return [(source, Window(data.contiguous(memory_format=torch.channels_last), top, left, True))]


def broadcast_sum(data: torch.Tensor, dims: tuple[int, ...], grad: Window) -> Window:
    """The cotangent of an input broadcast along ``dims``: summed over them (a spatial
    dimension of size 1 then holds the window's total at position 0)."""
    summed = data.sum(dims, keepdim=True)
    top = 0 if 2 in dims else grad.top
    left = 0 if 3 in dims else grad.left
    return Window(summed, top, left, True)
