"""Jacobian rows for subsets of pixels: the original per-pixel loop against vessel-lens.

Users rarely ask for every row: ``--pixel-stride``, ``--pixels``, the app's hovered pixel, an
``erf`` over a pixel set, the report's chosen pixels. For each subset size N this times, in one
process and taking turns (the order alternates every repeat, so that both see the same machine
load), the cost of getting N rows of one image:

- original: one forward pass with a graph, then one ``autograd.grad`` per pixel;
- cold: ``JacobianEngine`` (its recorded forward pass and preparation) plus ``rows`` for the N
  pixels (random pixels, or a strided grid with ``--layout strided``);
- prepared: ``rows`` of an engine built beforehand for the same model and image (untimed), as
  the app keeps the engine of the view it shows.

Each repeat draws other pixels. Prints medians of wall seconds, the ratios original / cold and
original / prepared, the same ratio in CPU time (steadier than the wall clock on a shared
machine; use ``--threads 1``), and the agreement with the original (max |diff| / max |J|).

Then the app's hovered pixel: one random pixel of a ``--hover-size`` view, the same three ways.
With ``--first-call``, each way's first call in a new process (imports and model building not
timed), where one-time costs of the process show.

    python benchmarks/jacobian_subsets.py --threads 1 --counts 1,16,256,1024 --repeats 5
    python benchmarks/jacobian_subsets.py --threads 1 --layout strided
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
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


def cold(model, image, pixels) -> torch.Tensor:
    engine = JacobianEngine(model, image)
    return torch.cat([rows for _, rows in engine.chunks(torch.as_tensor(pixels))])


def prepared(engine: JacobianEngine, pixels) -> torch.Tensor:
    return torch.cat([rows for _, rows in engine.chunks(torch.as_tensor(pixels))])


def pick(count: int, size: int, layout: str, seed: int) -> list[int]:
    if layout == "strided":
        stride = max(1, round((size * size / count) ** 0.5))
        grid = torch.arange(0, size, stride)
        return (grid[:, None] * size + grid[None, :]).reshape(-1)[:count].tolist()
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size * size, generator=generator)[:count].sort().values.tolist()


def _timed(function, *arguments):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*arguments)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def compare(model, image, counts, layout: str, repeats: int) -> list[dict]:
    """Per subset size: medians of the three ways and the agreement with the original."""
    engine = JacobianEngine(model, image)
    size = int(image.shape[-1])
    results = []
    for count in counts:
        times = {way: {"wall": [], "cpu": []} for way in ("original", "cold", "prepared")}
        agreement = 0.0
        for repeat in range(repeats):
            pixels = pick(count, size, layout, repeat)
            ways = [
                ("original", original, (model, image, pixels)),
                ("cold", cold, (model, image, pixels)),
                ("prepared", prepared, (engine, pixels)),
            ]
            got = {}
            for name, function, arguments in ways if repeat % 2 == 0 else ways[::-1]:
                wall, cpu, got[name] = _timed(function, *arguments)
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
            scale = float(got["original"].abs().max()) or 1.0
            for name in ("cold", "prepared"):
                difference = float((got[name] - got["original"]).abs().max())
                agreement = max(agreement, difference / scale)
        medians = {
            way: {clock: statistics.median(values) for clock, values in clocks.items()}
            for way, clocks in times.items()
        }
        results.append({"count": count, "agreement": agreement, **medians})
    return results


def _child(args) -> None:
    """One first call in this fresh process: prints its wall seconds as JSON."""
    torch.set_num_threads(args.threads)
    model = reference_model(args.width, args.size)
    image = torch.from_numpy(synthesize(args.size, seed=123).image)[None]
    pixels = pick(args.first_call, args.size, "random", 0)
    function = original if args.child == "original" else cold
    wall, _, _ = _timed(function, model, image, pixels)
    print(json.dumps({"seconds": wall}))


def first_calls(args) -> dict[str, float]:
    seconds: dict[str, list[float]] = {"original": [], "cold": []}
    for repeat in range(args.repeats):
        for way in ("original", "cold") if repeat % 2 == 0 else ("cold", "original"):
            command = [sys.executable, __file__, "--child", way, "--first-call",
                       str(args.first_call), "--width", str(args.width), "--size",
                       str(args.size), "--threads", str(args.threads)]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            seconds[way].append(json.loads(output.strip().splitlines()[-1])["seconds"])
    return {way: statistics.median(values) for way, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--counts", default="1,16,256,1024")
    parser.add_argument("--layout", choices=("random", "strided"), default="random")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hover-size", type=int, default=256, help="0: skip")
    parser.add_argument("--first-call", type=int, default=0, help="pixels; 0: skip")
    parser.add_argument("--child", choices=("original", "cold"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    torch.set_num_threads(args.threads)
    model = reference_model(args.width, args.size)
    image = torch.from_numpy(synthesize(args.size, seed=123).image)[None]
    print(
        f"torch {torch.__version__} on {platform.machine()} ({platform.processor() or '?'}), "
        f"{args.threads} threads, width {args.width}, {args.size}x{args.size}, {args.layout} "
        f"pixels, median of {args.repeats}, load average before {os.getloadavg()[0]:.2f}"
    )
    cold(model, image, [0])  # first calls of every kernel, for both
    original(model, image, [0])
    print("pixels  original s  cold s  ratio  CPU ratio  prepared s  ratio  agreement")
    counts = [int(c) for c in args.counts.split(",")]
    for row in compare(model, image, counts, args.layout, args.repeats):
        slow = row["original"]
        print(
            f"{row['count']:>6}  {slow['wall']:>10.3f}  {row['cold']['wall']:>6.3f}  "
            f"{slow['wall'] / row['cold']['wall']:>5.2f}  "
            f"{slow['cpu'] / row['cold']['cpu']:>9.2f}  {row['prepared']['wall']:>10.3f}  "
            f"{slow['wall'] / row['prepared']['wall']:>5.2f}  {row['agreement']:.1e}",
            flush=True,
        )
    if args.hover_size:
        view = torch.from_numpy(synthesize(args.hover_size, seed=7).image)[None]
        cold(model, view, [0])
        (row,) = compare(model, view, [1], "random", args.repeats)
        slow = row["original"]["wall"]
        print(
            f"hovered pixel of a {args.hover_size}x{args.hover_size} view: original "
            f"{slow * 1e3:.0f} ms, engine built for it {row['cold']['wall'] * 1e3:.0f} ms "
            f"({slow / row['cold']['wall']:.2f}x), engine already prepared "
            f"{row['prepared']['wall'] * 1e3:.0f} ms ({slow / row['prepared']['wall']:.2f}x); "
            f"agreement {row['agreement']:.1e}"
        )
    if args.first_call:
        seconds = first_calls(args)
        print(
            f"first call in a new process, {args.first_call} pixels: original "
            f"{seconds['original']:.3f} s, vessel-lens {seconds['cold']:.3f} s "
            f"({seconds['original'] / seconds['cold']:.2f}x)"
        )
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
