"""Jacobian rows for subsets of pixels: the original per-pixel loop against vessel-lens.

Users rarely ask for every row: ``--pixel-stride``, ``--pixels``, the app's hovered pixel, an
``erf`` over a pixel set, the report's chosen pixels. For each subset size N this times, in one
process and alternating so that both see the same machine load, the whole cost of getting N
rows of one image from scratch:

- the original: one forward pass with a graph, then one ``autograd.grad`` per pixel;
- vessel-lens: ``JacobianEngine`` (its recorded forward pass and preparation) plus ``rows``
  for the N pixels (random pixels, or a strided grid with ``--layout strided``).

Prints seconds for both (median of ``--repeats``), their ratio, and the agreement.

    python benchmarks/jacobian_subsets.py --width 16 --size 64 --counts 1,16,256,1024
    python benchmarks/jacobian_subsets.py --layout strided
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
from vessel_lens.models import ResNetSeg


def reference_model(width: int, size: int) -> ResNetSeg:
    torch.manual_seed(0)
    model = ResNetSeg(width=width)
    batch = torch.stack([torch.from_numpy(synthesize(size, seed=s).image)[None] for s in range(8)])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def original(model, image, pixels) -> torch.Tensor:
    x = image[None].clone().requires_grad_(True)
    probability = model(x).softmax(1)[0, 1].reshape(-1)
    rows = [torch.autograd.grad(probability[p], x, retain_graph=True)[0][0] for p in pixels]
    return torch.stack(rows)


def ours(model, image, pixels) -> torch.Tensor:
    engine = JacobianEngine(model, image)
    return torch.cat([rows for _, rows in engine.chunks(torch.as_tensor(pixels))])


def pick(count: int, size: int, layout: str, seed: int) -> list[int]:
    if layout == "strided":
        stride = max(1, round((size * size / count) ** 0.5))
        grid = torch.arange(0, size, stride)
        return (grid[:, None] * size + grid[None, :]).reshape(-1)[:count].tolist()
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size * size, generator=generator)[:count].sort().values.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--counts", default="1,16,256,1024")
    parser.add_argument("--layout", choices=("random", "strided"), default="random")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = reference_model(args.width, args.size)
    image = torch.from_numpy(synthesize(args.size, seed=123).image)[None]
    print(
        f"torch {torch.__version__} on {platform.machine()}, {args.threads} threads, width "
        f"{args.width}, {args.size}x{args.size}, {args.layout} pixels, load average before "
        f"{os.getloadavg()[0]:.2f}"
    )
    print("pixels  original s  vessel-lens s  ratio  agreement")
    ours(model, image, [0])  # first calls of every kernel, for both
    for count in (int(c) for c in args.counts.split(",")):
        times = {"original": [], "ours": []}
        agreement = 0.0
        for repeat in range(args.repeats):
            pixels = pick(count, args.size, args.layout, repeat)
            for name, function in (("original", original), ("ours", ours)):
                started = time.perf_counter()
                rows = function(model, image, pixels)
                times[name].append(time.perf_counter() - started)
                if name == "original":
                    reference = rows
            scale = float(reference.abs().max()) or 1.0
            agreement = max(agreement, float((rows - reference).abs().max()) / scale)
        slow, fast = statistics.median(times["original"]), statistics.median(times["ours"])
        print(f"{count:>6}  {slow:>10.3f}  {fast:>13.3f}  {slow / fast:>5.2f}  {agreement:.1e}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
