"""Receptive-field maps of chosen pixels of a large image, on crops (no whole-image pass).

A synthetic vessel image of --side x --side pixels (default 3000) and --pixels random output
pixels (default 100): their receptive-field maps with ``crops="always"`` (each cell of pixels
on a crop holding their fields, checked against a crop one period larger), reporting seconds,
crops, and the peak resident memory of the process. For comparison it measures what one
recorded forward pass (what the whole-image engine needs first) takes on a 512x512 crop and
scales it to the whole image.

    python benchmarks/large_erf.py --side 3000 --pixels 100
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch

from vessel_lens.data.synthetic import synthesize
from vessel_lens.interpret import receptive_field_maps
from vessel_lens.interpret._graph.tape import record
from vessel_lens.models import load_model


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def large_image(side: int, seed: int = 0) -> torch.Tensor:
    """Synthetic 256x256 vessel tiles laid side by side up to ``side`` (a vessel-like image)."""
    tiles = -(-side // 256)
    rows = []
    for r in range(tiles):
        rows.append(np.concatenate([synthesize(256, seed=seed + r * tiles + c).image
                                    for c in range(tiles)], 1))  # fmt: skip
    return torch.from_numpy(np.concatenate(rows, 0)[:side, :side].copy())[None]


def tape_bytes(model, side: int) -> int:
    tape = record(model, torch.zeros(1, side, side))
    seen, total = set(), 0
    for entry in tape.entries:
        values = entry.value if isinstance(entry.value, (tuple, list)) else (entry.value,)
        for value in values:
            if isinstance(value, torch.Tensor) and id(value) not in seen:
                seen.add(id(value))
                total += value.numel() * value.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--pixels", type=int, default=100)
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    image = large_image(args.side)
    print(f"image {args.side}x{args.side}, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    probe = tape_bytes(model, 512)
    whole = probe * (args.side / 512) ** 2
    print(f"one recorded forward pass: {probe / 2**30:.2f} GiB at 512x512, so about "
          f"{whole / 2**30:.1f} GiB for the whole image")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, args.side * args.side, (args.pixels,), generator=generator)
    before = _peak_gb()
    started = time.perf_counter()
    maps = receptive_field_maps(model, image, (0.01, 0.1), "pixel", pixels=pixels, crops="always")
    seconds = time.perf_counter() - started
    plan = maps.metadata["crop_plan"]
    counts = maps.count[0][maps.computed]
    print(f"{args.pixels} pixels on {maps.metadata['crops']} crops (cell {plan['cell']}, margin "
          f"{plan['margin']}, period {plan['period']}): {seconds:.1f} s, strategy "
          f"{maps.metadata['strategy']}; peak RSS {_peak_gb():.2f} GB (before: {before:.2f} GB); "
          f"count > 1 % of own peak: median {float(counts.float().median()):.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
