"""Cotangents that are zero outside a rectangle, and the index arithmetic of windowed convolutions.

A batch of one-hot cotangents stays spatially small through the first layers of a backward
pass (the decoder, at full and half resolution). :class:`Window` stores only the rectangle
that can be non-zero; everything outside it is exactly zero by construction, so computing a
layer's backward on the rectangle alone gives the same numbers as computing it on the whole
map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def zeros(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros in channels-last layout: oneDNN's transposed convolutions on CPU run 2-3x faster
    on it than on NCHW for the few-channel, full-resolution maps near the input."""
    empty = torch.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last
    )
    return empty.zero_()


@dataclass
class Window:
    """``data`` (N, C, h, w) placed at (``top``, ``left``) of a (N, C, H, W) map; zero elsewhere.

    ``owned``: no other window shares ``data``'s memory, so it may be updated in place.
    """

    data: torch.Tensor
    top: int
    left: int
    owned: bool = False

    @property
    def height(self) -> int:
        return int(self.data.shape[-2])

    @property
    def width(self) -> int:
        return int(self.data.shape[-1])

    def crop(self, value: torch.Tensor) -> torch.Tensor:
        """The part of a full-size (..., H, W) tensor under this window."""
        return value[..., self.top : self.top + self.height, self.left : self.left + self.width]

    def dense(self, height: int, width: int) -> torch.Tensor:
        if self.top == 0 and self.left == 0 and (self.height, self.width) == (height, width):
            return self.data
        full = zeros(self.data, (*self.data.shape[:-2], height, width))
        self.crop(full).copy_(self.data)
        return full

    def within(self, other: Window) -> bool:
        return (
            other.top <= self.top
            and other.left <= self.left
            and self.top + self.height <= other.top + other.height
            and self.left + self.width <= other.left + other.width
        )

    def scaled(self, factor: torch.Tensor | float) -> Window:
        """``data * factor`` (in place when owned)."""
        if self.owned:
            self.data.mul_(factor)
            return self
        return Window(self.data * factor, self.top, self.left, True)


def accumulate(old: Window | None, new: Window) -> Window:
    """Sum of two windowed cotangents, written into an owned one's memory when possible."""
    if old is None:
        return new
    for big, small in ((old, new), (new, old)):
        if small.within(big):
            if not big.owned:
                big = Window(
                    big.data.clone(memory_format=torch.channels_last), big.top, big.left, True
                )
            region = big.data[
                ...,
                small.top - big.top : small.top - big.top + small.height,
                small.left - big.left : small.left - big.left + small.width,
            ]
            region.add_(small.data)
            return big
    return union([old, new], add=True)


def union(windows: list[Window], add: bool) -> Window:
    """One window covering all: their sum (``add``), or (for one window) it zero-extended."""
    top = min(w.top for w in windows)
    left = min(w.left for w in windows)
    bottom = max(w.top + w.height for w in windows)
    right = max(w.left + w.width for w in windows)
    total = zeros(windows[0].data, (*windows[0].data.shape[:-2], bottom - top, right - left))
    for part in windows:
        r, c = part.top - top, part.left - left
        region = total[..., r : r + part.height, c : c + part.width]
        if add:
            region.add_(part.data)
        else:
            region.copy_(part.data)
    return Window(total, top, left, True)


def shift(window: Window, rows: int, cols: int, height: int, width: int) -> Window | None:
    """Move by (``rows``, ``cols``) into a (height, width) map, dropping what falls outside."""
    top, left = window.top + rows, window.left + cols
    r0, c0 = max(0, -top), max(0, -left)
    r1 = min(window.height, height - top)
    c1 = min(window.width, width - left)
    if r1 <= r0 or c1 <= c0:
        return None
    return Window(window.data[..., r0:r1, c0:c1], top + r0, left + c0, window.owned)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


SMALL_MAP = 16
"""Windows of at most this many positions use :func:`_scatter_taps`: on the deepest, widest
layers (4x4 maps, 1024+ channels) one GEMM plus nine shifted additions runs about 1.5x faster
than oneDNN's transposed convolution."""


def tap_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A ``conv2d`` weight (C_out, C_in, kh, kw) as the (C_out, kh*kw*C_in) GEMM operand."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _scatter_taps(
    data: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv_transpose2d`` without padding, as a GEMM and one shifted add per kernel tap."""
    n, c_out, h, w = data.shape
    c_in, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    (sh, sw), (dh, dw) = stride, dilation
    rows = data.permute(0, 2, 3, 1).reshape(-1, c_out)
    matrix = tap_matrix(weight) if matrix is None else matrix
    taps = (rows @ matrix).reshape(n, h, w, kh, kw, c_in)
    height, width = (h - 1) * sh + dh * (kh - 1) + 1, (w - 1) * sw + dw * (kw - 1) + 1
    full = data.new_zeros((n, height, width, c_in))
    for i in range(kh):
        for j in range(kw):
            full[
                :, i * dh : i * dh + (h - 1) * sh + 1 : sh, j * dw : j * dw + (w - 1) * sw + 1 : sw
            ] += taps[:, :, :, i, j]
    return full.permute(0, 3, 1, 2)


FEW_CHANNELS = 1
"""Convolutions from this many channels or fewer (a grayscale model's first layer) get their
input gradient from :func:`_plane_taps`: oneDNN's transposed convolution to one channel runs
at less than half the speed (for two or three channels the planes lose)."""


def _plane_taps(
    data: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv_transpose2d`` without padding into one channel: one GEMM gives a plane per
    kernel tap, and each plane is added at its shift."""
    n, c_out, h, w = data.shape
    c_in, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    (sh, sw), (dh, dw) = stride, dilation
    matrix = tap_matrix(weight) if matrix is None else matrix
    taps = data.permute(0, 2, 3, 1).reshape(-1, c_out) @ matrix
    planes = taps.reshape(n, h, w, kh * kw, c_in).permute(0, 3, 4, 1, 2).contiguous()
    height, width = (h - 1) * sh + dh * (kh - 1) + 1, (w - 1) * sw + dw * (kw - 1) + 1
    full = zeros(data, (n, c_in, height, width))
    for i in range(kh):
        for j in range(kw):
            full[
                :,
                :,
                i * dh : i * dh + (h - 1) * sh + 1 : sh,
                j * dw : j * dw + (w - 1) * sw + 1 : sw,
            ] += planes[:, i * kw + j]
    return full


def conv_input_grad(
    window: Window,
    weight: torch.Tensor,
    in_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    matrix: torch.Tensor | None = None,
    dry: bool = False,
) -> Window | None:
    """Input gradient of ``conv2d`` restricted to the inputs the window's outputs read.

    Output o reads inputs o*s - p + k*d (k < K). The full transposed convolution of the window
    covers inputs from ``top*s - p``; ``padding``/``output_padding`` of ``conv_transpose2d``
    crop it to the valid range where they can, otherwise the result is sliced. ``dry``: only
    the window's place and size matter (zeros instead of the gradient).
    """
    kernel = weight.shape[-2:]
    starts, sizes, pads, out_pads, slices = [], [], [], [], []
    for axis, origin in enumerate((window.top, window.left)):
        s, p, d, k = stride[axis], padding[axis], dilation[axis], int(kernel[axis])
        length = int(window.data.shape[-2 + axis])
        start = origin * s - p
        full = (length - 1) * s + d * (k - 1) + 1
        lo, hi = max(0, start), min(in_size[axis], start + full)
        if hi <= lo:
            return None
        cut_lo, cut_hi, n = lo - start, start + full - hi, hi - lo
        if cut_lo == cut_hi:
            plan = (cut_lo, 0, None)
        elif cut_hi < cut_lo < cut_hi + max(s, d):
            plan = (cut_lo, cut_lo - cut_hi, None)
        elif cut_lo < cut_hi:
            plan = (cut_lo, 0, (0, n))
        else:
            plan = (0, 0, (cut_lo, cut_lo + n))
        starts.append(lo)
        sizes.append(n)
        pads.append(plan[0])
        out_pads.append(plan[1])
        slices.append(plan[2])
    if dry:
        shape = (int(window.data.shape[0]), int(weight.shape[1]) * groups, *sizes)
        return Window(zeros(window.data, shape), starts[0], starts[1], True)
    small = window.height * window.width <= SMALL_MAP
    if groups == 1 and (small or weight.shape[1] <= FEW_CHANNELS):
        taps = _scatter_taps if small else _plane_taps
        grad = taps(window.data, weight, stride, dilation, matrix)
        for axis, pad in enumerate(pads):
            slices[axis] = (
                (pad, pad + sizes[axis])
                if slices[axis] is None
                else (
                    slices[axis][0] + pad,
                    slices[axis][1] + pad,
                )
            )
    else:
        grad = F.conv_transpose2d(
            window.data, weight, None, stride, tuple(pads), tuple(out_pads), groups, dilation
        )
    if slices[0] is not None:
        grad = grad[..., slices[0][0] : slices[0][1], :]
    if slices[1] is not None:
        grad = grad[..., slices[1][0] : slices[1][1]]
    return Window(grad, starts[0], starts[1], True)


def conv_transpose_input_grad(
    window: Window,
    weight: torch.Tensor,
    in_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    dry: bool = False,
) -> Window | None:
    """Input gradient of ``conv_transpose2d``: a strided ``conv2d`` over the window.

    Input i writes outputs i*s - p + k*d, so its gradient reads them; only inputs whose
    outputs meet the window are computed (``dry``: zeros of that size).
    """
    kernel = weight.shape[-2:]
    data = window.data
    starts, sizes, befores, afters, symmetric = [], [], [], [], True
    for axis, origin in enumerate((window.top, window.left)):
        s, p, d, k = stride[axis], padding[axis], dilation[axis], int(kernel[axis])
        length = int(data.shape[-2 + axis])
        lo = max(0, _ceil_div(origin + p - d * (k - 1), s))
        hi = min(in_size[axis], (origin + length - 1 + p) // s + 1)
        if hi <= lo:
            return None
        n = hi - lo
        read_start = lo * s - p
        read_end = read_start + (n - 1) * s + d * (k - 1) + 1
        before = origin - read_start
        if before < 0:
            data = data.narrow(2 + axis, -before, length + before)
            length += before
            before = 0
        after = read_end - (read_start + before + length)
        symmetric = symmetric and (length + 2 * before - d * (k - 1) - 1) // s + 1 >= n
        starts.append(lo)
        sizes.append(n)
        befores.append(before)
        afters.append(after)
    if dry:
        shape = (int(data.shape[0]), int(weight.shape[0]), *sizes)
        return Window(zeros(data, shape), starts[0], starts[1], True)
    if symmetric:
        grad = F.conv2d(data, weight, None, stride, tuple(befores), dilation, groups)
    else:
        padded = F.pad(data, (befores[1], afters[1], befores[0], afters[0]))
        grad = F.conv2d(padded, weight, None, stride, 0, dilation, groups)
    return Window(grad[..., : sizes[0], : sizes[1]], starts[0], starts[1], True)
