"""Linear-strategy rules for resampling, pooling and pads that keep windows small.

Separable operations (interpolation, adaptive and plain average pooling, reflection and
replication pads) push a window back with two small matrix products ``A_hᵀ · g · A_w`` over the
rows and columns it reads (:mod:`._axes`). Max pooling scatters each window entry to the input
position its recorded index names, so only the input rectangle those indices span is touched.
"""

from __future__ import annotations

import torch

from vessel_lens.interpret._graph.tape import Entry
from vessel_lens.interpret.jacobian._linear.prepare import Prepared, spatial
from vessel_lens.interpret.jacobian._linear.window import Window, zeros


def separable_rule(prep: Prepared, i: int, entry: Entry, grad: Window):
    source = entry.args[0]
    maps = prep.consts[i]
    top, rows = maps[0].submatrix(grad.top, grad.height)
    left, cols = maps[1].submatrix(grad.left, grad.width)
    if rows.shape[1] == 0 or cols.shape[1] == 0:
        return [(source, None)]
    dtype, device = grad.data.dtype, grad.data.device
    rows, cols = rows.to(device, dtype), cols.to(device, dtype)
    data = rows.T @ (grad.data @ cols)
    return [(source, Window(data.contiguous(memory_format=torch.channels_last), top, left, True))]


def max_pool_rule(prep: Prepared, i: int, entry: Entry, grad: Window):
    """Max pooling (also adaptive): each cotangent entry goes to its recorded argmax."""
    source = entry.args[0]
    width = spatial(prep.value(source))[1]
    indices = entry.value[1]
    picked = grad.crop(indices)
    rows, cols = picked // width, picked % width
    top, bottom = int(rows.min()), int(rows.max()) + 1
    left, right = int(cols.min()), int(cols.max()) + 1
    local = ((rows - top) * (right - left) + cols - left).flatten(2)
    n, c = grad.data.shape[:2]
    result = grad.data.new_zeros((n, c, (bottom - top) * (right - left)))
    result.scatter_add_(2, local.expand(n, c, -1), grad.data.reshape(n, c, -1))
    data = result.reshape(n, c, bottom - top, right - left)
    return [(source, Window(data.contiguous(memory_format=torch.channels_last), top, left, True))]


def strided_slice(grad: Window, dim: int, start: int, step: int) -> Window:
    """The cotangent of ``x[..., start::step]`` along spatial ``dim`` (2 or 3)."""
    n, c, h, w = grad.data.shape
    if dim == 2:
        data = zeros(grad.data, (n, c, (h - 1) * step + 1, w))
        data[:, :, ::step] = grad.data
        return Window(data, start + grad.top * step, grad.left, True)
    data = zeros(grad.data, (n, c, h, (w - 1) * step + 1))
    data[..., ::step] = grad.data
    return Window(data, grad.top, start + grad.left * step, True)
