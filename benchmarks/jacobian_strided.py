"""Per-row cost of strided against contiguous Jacobian rows, before and after compact tiles.

``--pixel-stride S`` asks for every S-th pixel in each direction. The rows are computed in
batches of consecutive requested pixels (as ``jacobian()`` and ``vessel-lens jacobian`` do),
and the ``linear`` strategy carries every row of a batch over the batch's union window, so a
batch of strided pixels, spread over S times more image rows and columns, used to cost more
per row than a contiguous one. The engine now splits such batches into compact tiles when
its cost model predicts a gain (``interpret/_tiles.py``).

For each stride this times, in one process, the same batches computed two ways:

- ``one batch``: the whole batch in one windowed backward pass (the engine before tiles);
- ``engine``: ``JacobianEngine.rows`` (tiles when predicted cheaper).

Strides and ways take turns within each repeat, so that all see the same machine load. It
prints milliseconds per row (median of ``--repeats``), each stride's cost relative to stride 1
for both ways, the engine's speed-up, and the largest difference between the two ways relative
to max |J|.

    python benchmarks/jacobian_strided.py --size 64 --threads 1
    python benchmarks/jacobian_strided.py --size 256 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from vessel_lens.data.synthetic import synthesize
from vessel_lens.interpret import JacobianEngine
from vessel_lens.interpret.jacobian._linear.strategy import backward, seed_window
from vessel_lens.interpret.pixels import output_seeds
from vessel_lens.models import load_model


def one_batch(engine: JacobianEngine, flat: torch.Tensor) -> torch.Tensor:
    """The batch's rows in a single windowed backward pass (no tiles)."""
    prepared = engine.strategy_impl.prepared
    seeds = output_seeds(engine.logits, flat, engine.target_class, engine.output)
    output = prepared.tape.value(prepared.tape.output)
    rows, cols = flat // engine.width, flat % engine.width
    return backward(prepared, seed_window(output, rows, cols, seeds.to(prepared.dtype)))


def batches(size: int, stride: int, chunk: int, count: int) -> list[torch.Tensor]:
    """``count`` batches of ``chunk`` consecutive pixels of the strided grid, spread evenly
    over the image (the first, the last and ones between)."""
    grid = torch.arange(0, size, stride)
    flat = (grid[:, None] * size + grid[None, :]).reshape(-1)
    starts = range(0, len(flat), chunk)
    chosen = [starts[round(i * (len(starts) - 1) / max(count - 1, 1))] for i in range(count)]
    return [flat[s : s + chunk] for s in dict.fromkeys(chosen)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--size", type=int, default=64, help="side of the square image")
    parser.add_argument("--strides", default="1,2,4,8")
    parser.add_argument("--chunk", type=int, default=0, help="rows per batch (0: the default)")
    parser.add_argument("--batches", type=int, default=4, help="batches timed per stride")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    image = torch.from_numpy(synthesize(args.size, seed=123).image)[None]
    engine = JacobianEngine(model, image, strategy="linear")
    chunk = args.chunk or engine.default_chunk()
    print(
        f"torch {torch.__version__} on {platform.machine()}, {args.threads} threads, "
        f"{args.checkpoint}, {args.size}x{args.size}, {chunk} rows per batch, "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    engine.rows(torch.arange(min(chunk, 16)))  # first calls of every kernel, and the profile
    strides = [int(s) for s in args.strides.split(",")]
    parts = {stride: batches(args.size, stride, chunk, args.batches) for stride in strides}
    ways = {"one batch": one_batch, "engine": JacobianEngine.rows}
    times = {(stride, name): [] for stride in strides for name in ways}
    difference = dict.fromkeys(strides, 0.0)
    for _ in range(args.repeats):  # every stride and way in turn, so all see the same load
        for stride in strides:
            rows = sum(len(p) for p in parts[stride])
            outputs = {}
            for name, function in ways.items():
                started = time.perf_counter()
                outputs[name] = [function(engine, part) for part in parts[stride]]
                times[stride, name].append((time.perf_counter() - started) / rows)
            for got, want in zip(outputs["engine"], outputs["one batch"], strict=True):
                scale = float(want.abs().max()) or 1.0
                gap = float((got - want).abs().max()) / scale
                difference[stride] = max(difference[stride], gap)
    results = {
        stride: (
            statistics.median(times[stride, "one batch"]),
            statistics.median(times[stride, "engine"]),
            difference[stride],
            sum(len(p) for p in parts[stride]),
        )
        for stride in strides
    }
    base_old, base_new = results[min(results)][:2]
    print("stride  rows  one batch ms/row  engine ms/row  vs stride 1 (one batch, engine)"
          "  speed-up  max |diff| / max |J|")  # fmt: skip
    for stride, (old, new, difference, rows) in results.items():
        print(
            f"{stride:>6}  {rows:>4}  {old * 1e3:>16.2f}  {new * 1e3:>13.2f}  "
            f"{old / base_old:>14.2f}x {new / base_new:>14.2f}x  {old / new:>8.2f}x  "
            f"{difference:.1e}"
        )
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
