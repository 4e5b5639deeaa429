"""The ``linear`` strategy: a hand-written, batched, windowed backward pass over a recorded tape.

The forward pass is recorded once (:mod:`._tape`). Its vector-Jacobian product is linear in
the cotangent, with coefficients read from the recorded values (ReLU masks, BatchNorm scales,
max-pool choices). A chunk of N one-hot cotangents is pushed back through the tape with plain
``conv_transpose2d``/``conv2d`` calls on batch N and element-wise products, with no autograd
graph, and each cotangent only over the rectangle where it can be non-zero (:mod:`._window`).
Eval-mode BatchNorm directly after a convolution is folded into that convolution's backward
weights. Operations without a rule make :func:`prepare` raise :class:`Unsupported`, and the
caller falls back to the generic ``vmap`` strategy.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vessel_lens.interpret._graph.tape import Ref, Tape
from vessel_lens.interpret.jacobian._linear.allocator import MMAP_BYTES
from vessel_lens.interpret.jacobian._linear.prepare import Prepared, Unsupported, prepare, spatial
from vessel_lens.interpret.jacobian._linear.rules import RULES, rule_key, siblings
from vessel_lens.interpret.jacobian._linear.tiles import (
    MIN_ROWS,
    Profile,
    bounded_batches,
    build_profile,
    compact_groups,
    work_per_value,
)
from vessel_lens.interpret.jacobian._linear.window import Window, accumulate, zeros

__all__ = ["LinearStrategy", "Unsupported", "backward", "seed_window"]

BUFFER_BYTES = MMAP_BYTES * 3 // 4
"""On the CPU a batch is split so that no cotangent of its pass is larger than this: larger
buffers are mapped afresh (and page-faulted) on every pass."""


def backward(prep: Prepared, seed: Window, trace: list | None = None) -> torch.Tensor:
    """Push a batch of output cotangents (on the output map) back to the source: (N, C, H, W).

    ``trace``, when given, receives ``(entry index, tensor, cotangent window)`` for every step."""
    tape = prep.tape
    cotangents: dict[Ref, Window] = {tape.output: seed}
    waiting: dict[int, dict[int, Window]] = {}
    result: Window | None = None
    for i in range(len(tape.entries) - 1, -1, -1):
        if not prep.needed[i]:
            continue
        entry = tape.entries[i]
        key = Ref(i, 0) if isinstance(entry.value, (tuple, list)) else Ref(i)
        grad = cotangents.pop(key, None)
        if trace is not None and grad is not None:
            trace.append((i, key, grad))
        if i in prep.leader:
            leader = prep.leader[i]
            if grad is not None:
                waiting.setdefault(leader, {})[i] = grad
            if i != leader or leader not in waiting:
                continue
            parts = siblings(prep, leader, waiting.pop(leader))
        elif grad is None:
            continue
        elif i == tape.source:
            result = grad
            continue
        else:
            parts = RULES[rule_key(prep, i, entry)](prep, i, entry, grad)
        for ref, part in parts:
            if part is not None and prep.needed[ref.node]:
                cotangents[ref] = accumulate(cotangents.get(ref), part)
    source = tape.entries[tape.source].value
    if result is None:
        return zeros(seed.data, (seed.data.shape[0], *source.shape[1:]))
    return result.dense(*spatial(source))


def seed_window(
    output: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, seeds: torch.Tensor
) -> Window:
    """One-hot cotangents on the (1, K, H, W) output: row n is ``seeds[n]`` at (rows[n], cols[n]).

    The window's sides are rounded up to a few sizes per octave (within the map): the windows
    of every later step follow from it, and oneDNN builds its convolution kernels for each new
    shape (1-3 ms per convolution on the CPU), so a few shapes serve every pixel set."""
    map_h, map_w = (int(s) for s in output.shape[-2:])
    top, height = _rounded(int(rows.min()), int(rows.max()), map_h)
    left, width = _rounded(int(cols.min()), int(cols.max()), map_w)
    n, classes = seeds.shape
    data = zeros(seeds, (n, classes, height, width))
    data[torch.arange(n), :, rows - top, cols - left] = seeds
    return Window(data, top, left)


def _rounded(low: int, high: int, length: int) -> tuple[int, int]:
    """(start, size) of the span ``low..high`` grown inside ``0..length`` to a size with at
    most three significant bits (8, 10, 12, 14, 16, 20, ...: at most 25 % more)."""
    size = high - low + 1
    step = 1 << max(0, size.bit_length() - 3)
    size = min(length, -(-size // step) * step)
    return min(low, length - size), size


def combined_gradients(engine, groups, flat, owner, seeds) -> torch.Tensor:
    """The ``linear`` strategy's combined gradients, in passes small enough that no buffer
    passes the allocator's mmap threshold on the CPU (:meth:`LinearStrategy.largest_batch`); used by colouring
    (:mod:`vessel_lens.interpret.fields._colour`)."""
    impl = engine.strategy_impl
    prepared = impl.prepared
    seeds = seeds.to(engine.device, prepared.dtype)
    rows, cols = flat // engine.width, flat % engine.width
    classes = int(engine.logits.shape[1])
    step = len(groups)
    if engine.device.type == "cpu":
        span = int(rows.max() - rows.min()), int(cols.max() - cols.min())
        step = impl.largest_batch(*span)
    parts = []
    for start in range(0, len(groups), step):
        chosen = (owner >= start) & (owner < start + step)
        r, c, o = rows[chosen], cols[chosen], owner[chosen] - start
        top, left = int(r.min()), int(c.min())
        height, width = int(r.max()) - top + 1, int(c.max()) - left + 1
        data = zeros(seeds, (min(step, len(groups) - start), classes, height, width))
        data[o, :, r - top, c - left] = seeds[chosen.to(seeds.device)]
        parts.append(backward(prepared, Window(data, top, left)).to(engine.dtype))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class LinearStrategy:
    """Batched windowed backward passes over one recorded forward pass.

    On the CPU a batch whose pixels spread out is computed as several spatially compact
    batches when that is predicted to cost less (:mod:`._tiles`)."""

    name = "linear"

    def __init__(self, tape: Tape, dtype: torch.dtype):
        self.prepared = prepare(tape, dtype)
        output = tape.value(tape.output)
        self.height, self.width = (int(s) for s in output.shape[-2:])
        self._profile: Profile | None = None

    def rows(self, flat: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        rows, cols = flat // self.width, flat % self.width
        seeds = seeds.to(self.prepared.dtype)
        output = self.prepared.tape.value(self.prepared.tape.output)
        groups = None
        if flat.device.type == "cpu" and len(flat) >= MIN_ROWS:
            profile = self.profile()
            groups = compact_groups(rows, cols, profile, self.height, self.width)
            limit = BUFFER_BYTES * 8 // torch.finfo(self.prepared.dtype).bits
            groups = bounded_batches(
                groups or [torch.arange(len(flat))], rows, cols, profile, limit
            )
            if len(groups) == 1:
                groups = None
        if groups is None:
            return backward(self.prepared, seed_window(output, rows, cols, seeds))
        result = None
        for group in groups:
            part = backward(
                self.prepared, seed_window(output, rows[group], cols[group], seeds[group])
            )
            if result is None:  # every row is written below: no need to clear it
                result = torch.empty(
                    (len(flat), *part.shape[1:]),
                    dtype=part.dtype,
                    device=part.device,
                    memory_format=torch.channels_last,
                )
            result.index_copy_(0, group, part)
        return result

    def combined(self, engine, groups, flat, owner, seeds) -> torch.Tensor:
        """Gradient of the sum of each group's outputs (see :func:`combined_gradients`)."""
        return combined_gradients(engine, groups, flat, owner, seeds)

    def largest_batch(self, span_h: int, span_w: int) -> int:
        """Most rows one pass over pixels spanning (span_h, span_w) output pixels may hold
        before one of its cotangents passes :data:`BUFFER_BYTES` (on the CPU)."""
        values = float(self.profile().largest(torch.tensor([span_h]), torch.tensor([span_w]))[0])
        limit = BUFFER_BYTES * 8 // torch.finfo(self.prepared.dtype).bits
        return max(1, int(limit // max(values, 1.0)))

    def profile(self) -> Profile:
        """The one-pixel window of every backward step (traced once, at the centre, by a dry
        pass: convolutions only size their windows)."""
        if self._profile is None:
            prep = replace(self.prepared, dry=True)
            output = prep.tape.value(prep.tape.output)
            trace: list = []
            backward(prep, self._centre_seed(output), trace)
            steps = []
            for i, ref, window in trace:
                channels = int(window.data.shape[1])
                work = work_per_value(prep, prep.tape.entries[i]) * channels
                steps.append(
                    (work, window.height, window.width, *spatial(prep.value(ref)), channels)
                )
            self._profile = build_profile(steps, self.height, self.width)
        return self._profile

    def _centre_seed(self, output: torch.Tensor) -> Window:
        prep = self.prepared
        rows = torch.tensor([self.height // 2], device=output.device)
        cols = torch.tensor([self.width // 2], device=output.device)
        ones = torch.ones((1, int(output.shape[1])), dtype=prep.dtype, device=output.device)
        return seed_window(output, rows, cols, ones)
